import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfigFile } from '../../src/config/load.ts';
import type { ManagerEvent } from '../../src/core/resource-manager.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startTestApp, until } from '../metrics/metrics-app.ts';

const DEFAULTS = {
  bootTimeoutMs: 20_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, failureCooldownMs: 0,
  probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 },
  access: { public: true },
};

function rawConfig(resources: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    shutdown: { drainTimeoutMs: 10_000 },
    state: { kind: 'memory' },
    providers: Object.fromEntries(['pa', 'pslow', 'pgone', 'pnew'].map((n) => [n, { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' }])),
    resourceDefaults: DEFAULTS,
    resources,
    ...extra,
  };
}

test('a reload under load adds, changes and removes resources with zero failed requests', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sp-reload-'));
  const file = join(dir, 'config.yaml');
  // JSON is YAML: the file goes through the same loader as `smart-proxy start`.
  const write = (cfg: Record<string, unknown>): Promise<void> => writeFile(file, JSON.stringify(cfg, null, 2));
  await write(rawConfig({ app: { provider: 'pa' }, slow: { provider: 'pslow' }, gone: { provider: 'pgone' } }));
  let releaseGone: (() => void) | undefined;
  const goneAnswered = new Promise<void>((resolve) => { releaseGone = resolve; });
  const pa = new MimicProvider();
  const pslow = new MimicProvider({ manual: true });
  const pgone = new MimicProvider({
    handler: (req, res) => {
      // The first request stays in flight until the test lets it answer.
      if (req.url === '/long') void goneAnswered.then(() => res.end('late answer'));
      else res.end('ok');
    },
  });
  const pnew = new MimicProvider();
  const t = await startTestApp(await loadConfigFile(file), { pa, pslow, pgone, pnew }, () => loadConfigFile(file));
  const { app } = t;
  const url = (res: string, path = '/x'): string => `${app.proxyUrl}/smart_proxy/${res}/-${path}`;
  try {
    // Warm both resources that will be touched.
    assert.equal((await fetch(url('app'))).status, 200);
    assert.equal((await fetch(url('gone'))).status, 200);
    // One request in flight on the resource to be removed, one held on a booting resource.
    const inFlight = fetch(url('gone', '/long'));
    await until('the long request reaches the backend', () => [...app.manager.instancesOf('gone')].some((i) => i.activeConnections > 0));
    const held = fetch(url('slow'));
    await until('a held request', () => app.manager.heldTotal === 1);

    // Load: 4 clients looping on the warm resource through every reload.
    let stop = false;
    const results = { ok: 0, failed: [] as string[] };
    const client = async (): Promise<void> => {
      while (!stop) {
        try {
          const r = await fetch(url('app', '/load'));
          const body = await r.text();
          if (r.status === 200) results.ok++;
          else results.failed.push(`${r.status} ${body}`);
        } catch (err) {
          results.failed.push(String(err));
        }
      }
    };
    const clients = Array.from({ length: 4 }, client);
    await until('some load', () => results.ok >= 20);

    const stopped: ManagerEvent[] = [];
    app.manager.onEvent((e) => { if (e.type === 'instance-changed' && e.instance.resource.id === 'gone' && e.instance.status === 'stopped') stopped.push(e); });
    // Added: fresh; changed: app's hold timeout; removed: gone.
    await write(rawConfig({ app: { provider: 'pa', holdTimeoutMs: 45_000 }, slow: { provider: 'pslow' }, fresh: { provider: 'pnew' } }));
    const result = await app.reload();
    assert.ok(result.ok, JSON.stringify(result));
    assert.deepEqual(result.summary, { ...result.summary, added: ['fresh'], changed: ['app'], removed: ['gone'] });
    assert.equal(app.config.resources.fresh?.provider, 'pnew');

    // More reloads while the load goes on (the same file: nothing changes).
    for (let i = 0; i < 5; i++) assert.ok((await app.reload()).ok);
    const before = results.ok;
    await until('load after the reloads', () => results.ok >= before + 20);

    assert.equal((await fetch(url('fresh'))).status, 200, 'an added resource takes effect');
    const removed = await fetch(url('gone'));
    assert.equal(removed.status, 404, 'a removed resource is gone for new requests');
    await removed.text();
    // The held request and the in-flight one both finish.
    await pslow.release('*');
    const heldRes = await held;
    assert.equal(heldRes.status, 200);
    await heldRes.text();
    assert.equal(stopped.length, 0, 'the removed resource is not stopped while a request is in flight');
    releaseGone?.();
    const inFlightRes = await inFlight;
    assert.equal(inFlightRes.status, 200);
    assert.equal(await inFlightRes.text(), 'late answer');
    // Drained: now it is stopped.
    await until('the removed resource stopped', () => stopped.length === 1);
    assert.equal(pgone.calls.stop, 1);
    // The changed resource's running instance was kept (no second start).
    assert.equal(pa.calls.start, 1);

    stop = true;
    await Promise.all(clients);
    assert.deepEqual(results.failed, [], 'no request failed during the reloads');
    assert.ok(results.ok > 40);
    if (app.metrics !== undefined) {
      assert.match((await app.metrics.render()).body, /smart_proxy_config_reloads_total\{outcome="applied"\} 6/);
    }
  } finally {
    releaseGone?.();
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a bad configuration is refused with the check-config errors and the old one is kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sp-reload-'));
  const file = join(dir, 'config.yaml');
  await writeFile(file, JSON.stringify(rawConfig({ app: { provider: 'pa' } })));
  const pa = new MimicProvider();
  const t = await startTestApp(await loadConfigFile(file), { pa }, () => loadConfigFile(file));
  const { app } = t;
  try {
    const before = app.config;
    // Invalid: a wrong type.
    await writeFile(file, JSON.stringify(rawConfig({ app: { provider: 'pa', bootTimeoutMs: 'soon' } })));
    const expected = await loadConfigFile(file).then(() => assert.fail('should not load'), (err: unknown) => err);
    assert.ok(expected instanceof ConfigError);
    const refused = await app.reload();
    assert.equal(refused.ok, false);
    assert.ok(!refused.ok);
    assert.equal(refused.errors, expected.message, 'the same message as check-config');
    assert.match(refused.errors, /resources\.app\.bootTimeoutMs/);
    // A cross-field problem (an unknown provider).
    await writeFile(file, JSON.stringify(rawConfig({ app: { provider: 'pa' }, other: { provider: 'nope' } })));
    const unknown = await app.reload();
    assert.ok(!unknown.ok);
    assert.match(unknown.errors, /resources\.other\.provider/);
    assert.equal(app.config, before);
    // Syntax errors too.
    await writeFile(file, 'resources: [unclosed');
    const syntax = await app.reload();
    assert.ok(!syntax.ok);
    assert.match(syntax.errors, /line 1/);
    // A change that needs a restart is refused as a whole, naming the section.
    await writeFile(file, JSON.stringify(rawConfig({ app: { provider: 'pa' }, more: { provider: 'pa' } }, { listen: { host: '127.0.0.1', port: 1 } })));
    const restart = await app.reload();
    assert.ok(!restart.ok);
    assert.match(restart.errors, /need a restart: listen/);
    assert.equal(app.config.resources.more, undefined);
    // A missing file.
    await rm(file);
    const missing = await app.reload();
    assert.ok(!missing.ok);
    assert.match(missing.errors, /cannot read the file/);
    // The old configuration still serves.
    const r = await fetch(`${app.proxyUrl}/smart_proxy/app/-/x`);
    assert.equal(r.status, 200);
    await r.text();
    assert.equal((await fetch(`${app.proxyUrl}/smart_proxy/more/-/x`)).status, 404);
  } finally {
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('identities and access are replaced by a reload', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sp-reload-'));
  const file = join(dir, 'config.yaml');
  const { hashToken } = await import('../../src/access/passwords.ts');
  const withToken = (token: string): Record<string, unknown> => rawConfig(
    { app: { provider: 'pa', access: { anyOf: ['staff'] } } },
    { identities: [{ kind: 'token', tokens: [{ user: 'ann', groups: ['staff'], hash: hashToken(token) }] }] },
  );
  await writeFile(file, JSON.stringify(withToken('old-token')));
  const pa = new MimicProvider();
  const t = await startTestApp(await loadConfigFile(file), { pa }, () => loadConfigFile(file));
  const { app } = t;
  const call = async (token: string): Promise<number> => {
    const r = await fetch(`${app.proxyUrl}/smart_proxy/app/staff/x`, { headers: { authorization: `Bearer ${token}` } });
    await r.text();
    return r.status;
  };
  try {
    assert.equal(await call('old-token'), 200);
    await writeFile(file, JSON.stringify(withToken('new-token')));
    const result = await app.reload();
    assert.ok(result.ok);
    assert.equal(await call('new-token'), 200);
    assert.equal(await call('old-token'), 401);
  } finally {
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});
