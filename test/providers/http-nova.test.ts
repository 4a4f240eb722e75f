import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { NovaStandin } from '../fixtures/openstack-nova-standin.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
import { providerContract } from './contract.ts';
import { appFromExample, exampleConfig, httpProviderOf, providerFromExample } from './http-examples.ts';
import { createHttpProvider } from '../../src/providers/http/http-provider.ts';
import { secretReaders } from '../../src/config/secrets.ts';

const TOKEN = 'gAAAAAB-nova-token-5678';
process.env.OS_TOKEN = TOKEN;
const cfg = await exampleConfig('openstack-nova.yaml');
const ref = (id: string) => ({ resourceId: id, instanceKey: '*', groups: [] });
const fresh = (): AbortSignal => AbortSignal.timeout(10_000);

providerContract('http (examples/openstack-nova.yaml on the Nova stand-in)', async () => {
  const cloud = await new NovaStandin({ token: TOKEN, serverIds: ['srv-1', 'srv-2'] }).start();
  const provider = providerFromExample(cfg, 'nova', cloud.url);
  return {
    provider,
    makeRef: (i) => ref(`srv-${i}`),
    countInstances: () => Promise.resolve(cloud.liveServers),
    holdBoots: () => cloud.gate.hold(),
    teardown: async () => {
      await provider.close();
      await cloud.close();
    },
  };
});

void describe('OpenStack Nova example', () => {
  void it('a cold request through the proxy runs os-start and reaches the server once ACTIVE', async () => {
    const cloud = await new NovaStandin({ token: TOKEN, serverIds: ['0b8e5a2c-4b8a-4f4e-9a57-3f0c2d1e6b11'] }).start();
    const logs: Harness['logs'] = [];
    const app = await appFromExample(cfg, 'nova', cloud.url, collectingLogger(logs));
    try {
      const res = await fetch(`${app.proxyUrl}/smart_proxy/jupyter/-/lab?token=x`, { method: 'POST', body: 'cell' });
      assert.equal(res.status, 200);
      const echo = await res.json() as Echo;
      assert.equal(echo.server, 'server-0b8e5a2c-4b8a-4f4e-9a57-3f0c2d1e6b11');
      assert.equal(echo.url, '/lab?token=x');
      assert.equal(echo.body, 'cell');
      assert.ok(!JSON.stringify(logs).includes(TOKEN), 'the token never reaches the logs');
    } finally {
      await app.close();
      await cloud.close();
    }
  });

  void it('a boot that ends in ERROR is failed with the fault message as reason', async () => {
    const cloud = await new NovaStandin({ token: TOKEN, serverIds: ['s1'] }).start();
    const provider = providerFromExample(cfg, 'nova', cloud.url);
    try {
      cloud.failBoots.add('s1');
      await provider.start(ref('s1'), fresh());
      let seen = await provider.inspect(ref('s1'), fresh());
      while (seen.state === 'stopped' || seen.state === 'starting') {
        await new Promise<void>((resolve) => setImmediate(resolve));
        seen = await provider.inspect(ref('s1'), fresh());
      }
      assert.equal(seen.state, 'failed');
      assert.match(seen.reason ?? '', /No valid host was found/);
      assert.equal(seen.handle, 's1');
    } finally {
      await provider.close();
      await cloud.close();
    }
  });

  void it('start of an ACTIVE server (409) is accepted; stop while powering on waits and then stops', async () => {
    const cloud = await new NovaStandin({ token: TOKEN, serverIds: ['s1'], bootMs: 100 }).start();
    const provider = providerFromExample(cfg, 'nova', cloud.url);
    try {
      await provider.start(ref('s1'), fresh());
      await provider.start(ref('s1'), fresh()); // 409 while powering-on: accepted
      assert.equal(cloud.servers.get('s1')?.task, 'powering-on');
      await provider.stop(ref('s1'), fresh()); // 409 while powering-on: waits for ACTIVE, then os-stop
      assert.equal(cloud.servers.get('s1')?.task, 'powering-off', 'os-stop was accepted');
      await provider.stop(ref('s1'), fresh()); // 409 on SHUTOFF: already stopped
    } finally {
      await provider.close();
      await cloud.close();
    }
  });

  void it('reads the token from a file on each call (rotation without restart)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sp-nova-'));
    const cloud = await new NovaStandin({ token: 'first-token', serverIds: ['s1'] }).start();
    const p = httpProviderOf(cfg, 'nova');
    const file = join(dir, 'token');
    const provider = createHttpProvider({ ...p, baseUrl: cloud.url, secrets: secretReaders({ token: { file } }, 'test') });
    try {
      await writeFile(file, 'first-token\n');
      assert.equal((await provider.inspect(ref('s1'), fresh())).state, 'stopped');
      await writeFile(file, 'second-token\n');
      await assert.rejects(provider.inspect(ref('s1'), fresh()), /answered 401/);
    } finally {
      await provider.close();
      await cloud.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
