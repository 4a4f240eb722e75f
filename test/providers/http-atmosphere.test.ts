import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProviderError } from '../../src/core/errors.ts';
import { AtmosphereStandin } from '../fixtures/atmosphere-v1-standin.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
import { providerContract } from './contract.ts';
import { appFromExample, exampleConfig, providerFromExample } from './http-examples.ts';

const TOKEN = 'atmo-secret-token-1234';
process.env.ATMOSPHERE_TOKEN = TOKEN;
const cfg = await exampleConfig('atmosphere-v1.yaml');

providerContract('http (examples/atmosphere-v1.yaml on the Atmosphere stand-in)', async () => {
  const cloud = await new AtmosphereStandin({ token: TOKEN, applianceIds: [1, 2] }).start();
  const provider = providerFromExample(cfg, 'atmosphere', cloud.url);
  return {
    provider,
    makeRef: (i) => ({ resourceId: String(i), instanceKey: '*', groups: [] }),
    countInstances: () => Promise.resolve(cloud.liveVms),
    holdBoots: () => cloud.gate.hold(),
    teardown: async () => {
      await provider.close();
      await cloud.close();
    },
  };
});

void describe('Atmosphere v1 example', () => {
  void it('a cold request through the proxy starts the appliance, waits for monitoring ok, and reaches its VM', async () => {
    const cloud = await new AtmosphereStandin({ token: TOKEN, applianceIds: [1, 2] }).start();
    const logs: Harness['logs'] = [];
    const app = await appFromExample(cfg, 'atmosphere', cloud.url, collectingLogger(logs));
    try {
      const res = await fetch(`${app.proxyUrl}/smart_proxy/notebook/-/hello?x=1`);
      assert.equal(res.status, 200);
      const echo = await res.json() as Echo;
      assert.equal(echo.server, 'appliance-1', 'serviceId 1 of resource notebook');
      assert.equal(echo.url, '/hello?x=1');
      assert.deepEqual(cloud.requests.filter((r) => r.method === 'POST').map((r) => r.path), ['/api/v1/appliances/1/action']);
      assert.equal(cloud.appliances.get(2)?.vmState, 'shutoff', 'the other appliance was left alone');
      assert.ok(!JSON.stringify(logs).includes(TOKEN), 'the token never reaches the logs');
    } finally {
      await app.close();
      await cloud.close();
    }
  });

  void it('a wrong token is a non-retryable error that names the cause but not the secret', async () => {
    const cloud = await new AtmosphereStandin({ token: 'the-real-one', applianceIds: [1] }).start();
    const provider = providerFromExample(cfg, 'atmosphere', cloud.url);
    try {
      await assert.rejects(provider.start({ resourceId: '1', instanceKey: '*', groups: [] }, AbortSignal.timeout(5000)), (err: unknown) => {
        assert.ok(err instanceof ProviderError);
        assert.equal(err.retryable, false);
        assert.match(err.message, /start: POST http:\/\/127\.0\.0\.1:\d+\/api\/v1\/appliances\/1\/action: answered 401 \(check the credentials\)/);
        assert.ok(!err.message.includes(TOKEN));
        return true;
      });
    } finally {
      await provider.close();
      await cloud.close();
    }
  });

  void it('a 503 from the cloud is retryable; the core retries and the request still succeeds', async () => {
    const cloud = await new AtmosphereStandin({ token: TOKEN, applianceIds: [1] }).start();
    const provider = providerFromExample(cfg, 'atmosphere', cloud.url);
    try {
      cloud.failNext = 1;
      await assert.rejects(provider.inspect({ resourceId: '1', instanceKey: '*', groups: [] }, AbortSignal.timeout(5000)),
        (err: unknown) => err instanceof ProviderError && err.retryable && /answered 503/.test(err.message));
    } finally {
      await provider.close();
      await cloud.close();
    }
    const cloud2 = await new AtmosphereStandin({ token: TOKEN, applianceIds: [1] }).start();
    const app = await appFromExample(cfg, 'atmosphere', cloud2.url, collectingLogger([]));
    try {
      cloud2.failNext = 2;
      const res = await fetch(`${app.proxyUrl}/smart_proxy/notebook/-/`);
      assert.equal(res.status, 200);
      await res.text();
    } finally {
      await app.close();
      await cloud2.close();
    }
  });
});
