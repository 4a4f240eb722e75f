import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createStaticProvider } from '../../src/providers/static/static-provider.ts';
import { startEchoServer, type EchoServer } from '../helpers/echo-server.ts';
import { startHarness } from '../helpers/proxy-harness.ts';
import { providerContract } from './contract.ts';

providerContract('static', async () => {
  const echo: EchoServer = await startEchoServer();
  const provider = createStaticProvider({ endpoint: echo.url });
  const started = new Set<string>();
  return {
    provider: {
      ...provider,
      start: async (ref, signal) => {
        const r = await provider.start(ref, signal);
        started.add(ref.resourceId + ref.instanceKey);
        return r;
      },
      stop: async (ref, signal) => {
        await provider.stop(ref, signal);
        started.delete(ref.resourceId + ref.instanceKey);
      },
    },
    makeRef: (i) => ({ resourceId: `r${i}`, instanceKey: '*', groups: [] }),
    countInstances: async () => started.size,
    oneBackendForAll: 'static fronts one always-on backend for every caller (docs/providers/static.md)',
    teardown: () => echo.close(),
  };
});

it('a static backend is proxied once its probe passes, with no start of anything', async () => {
  const echo = await startEchoServer({ name: 'always-on' });
  const h = await startHarness({ resources: [{ id: 'svc', provider: createStaticProvider({ endpoint: `${echo.url}/base` }) }] });
  try {
    const res = await fetch(`${h.url}/smart_proxy/svc/-/x?y=1`);
    assert.equal(res.status, 200);
    const body = await res.json() as { url: string };
    assert.equal(body.url, '/base/x?y=1');
  } finally {
    await h.close();
    await echo.close();
  }
});
