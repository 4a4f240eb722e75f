import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startApp } from '../../src/main.ts';
import { createStaticProvider } from '../../src/providers/static/static-provider.ts';
import type { InstanceRef, Logger } from '../../src/core/ports.ts';
import { startEchoServer } from '../helpers/echo-server.ts';
import { providerContract } from './contract.ts';

providerContract('static', async () => {
  const backend = await startEchoServer({ name: 'static' });
  const provider = createStaticProvider({ endpoint: backend.url });
  const makeRef = (i: number): InstanceRef => ({ resourceId: `res${i}`, instanceKey: '*', groups: [] });
  return {
    provider,
    makeRef,
    // The suite only ever uses these refs; the provider's own set is private on purpose.
    countInstances: async () => {
      let n = 0;
      for (const i of [1, 2, 900, 901, 902]) {
        if ((await provider.inspect(makeRef(i), AbortSignal.timeout(1000))).state === 'running') n++;
      }
      return n;
    },
    teardown: async () => {
      await backend.close();
    },
  };
});

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

void it('a static resource is held until its backend answers, then forwarded', async () => {
  const backend = await startEchoServer({ name: 'late' });
  const endpoint = backend.url;
  await backend.close();
  const config = parseConfig(`
listen: { port: 0 }
log: { level: silent }
resources:
  svc:
    provider: { kind: static, endpoint: "${endpoint}" }
    bootTimeoutMs: 20000
`);
  const app = await startApp(config, { logger: silent });
  let late: Awaited<ReturnType<typeof startEchoServer>> | undefined;
  try {
    const pending = fetch(`${app.proxyUrl}/smart_proxy/svc/-/hello?x=1`);
    // Wait until the request is held (the probe is being refused), then bring the backend up.
    while (app.manager.heldTotal === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    late = await startEchoServer({ name: 'late', port: Number(new URL(endpoint).port) });
    const res = await pending;
    assert.equal(res.status, 200);
    const echo = (await res.json()) as { url: string; server: string };
    assert.equal(echo.url, '/hello?x=1');
    assert.equal(echo.server, 'late');
  } finally {
    await app.close();
    await late?.close();
  }
});

void it('config: a static provider needs an http(s) endpoint', () => {
  assert.throws(() => parseConfig('resources: { a: { provider: { kind: static, endpoint: "ftp://x" } } }'), /endpoint/);
  assert.throws(() => parseConfig('resources: { a: { provider: { kind: static } } }'), /resources.a.provider/);
});
