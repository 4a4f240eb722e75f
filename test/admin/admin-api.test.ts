/**
 * The admin API over real HTTP: a real app with its admin listener, mimic providers whose
 * backends are real servers, the in-memory store. Answers are checked against the same zod
 * schemas the OpenAPI document is generated from.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { auditPageSchema, instanceListSchema, resourceListSchema, resourceViewSchema } from '../../src/admin/schemas.ts';
import { adminOpenApi } from '../../src/admin/openapi.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { DEV, OPS, WEB, readSse, startAdminApp, type AdminApp } from './admin-kit.ts';

describe('admin API', () => {
  let a: AdminApp;
  let mimic: MimicProvider;
  const api = (path: string, init: RequestInit = {}, who: Record<string, string> = OPS): Promise<Response> =>
    fetch(`${a.admin}${path}`, { ...init, headers: { ...who, ...(init.headers as Record<string, string> | undefined) } });

  before(async () => {
    mimic = new MimicProvider({ bootMs: 30 });
    a = await startAdminApp({
      app: { provider: 'mimic', sharing: 'shared', idleStopMs: 600_000 },
      team: { provider: 'mimic', sharing: 'groups' },
    }, { mimic });
  });
  after(async () => { await a?.close(); });

  it('listens on loopback, apart from the data plane', () => {
    assert.match(a.admin, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(a.admin, a.app.proxyUrl);
  });

  it('answers /healthz and /readyz without credentials', async () => {
    for (const path of ['/healthz', '/readyz']) {
      const res = await fetch(`${a.admin}${path}`);
      assert.equal(res.status, 200);
      const body = await res.json() as { status: string; store: { kind: string; reachable: boolean } };
      assert.equal(body.status, 'ok');
      assert.deepEqual(body.store, { kind: 'memory', reachable: true, error: null });
    }
  });

  it('refuses callers without an admin identity: 401 with a challenge, 403 for a non-admin; both audited', async () => {
    const anon = await fetch(`${a.admin}/api/v1/resources`);
    assert.equal(anon.status, 401);
    assert.equal(anon.headers.get('content-type'), 'application/problem+json');
    // One challenge per line, Basic first (browsers answer the first of a line only).
    assert.match(anon.headers.get('www-authenticate') ?? '', /^Basic realm="smart-proxy", charset="UTF-8", Bearer realm="smart-proxy"$/);
    assert.equal((await anon.json() as { code: string }).code, 'SP_ACCESS_UNAUTHENTICATED');
    const dev = await api('/api/v1/resources', {}, DEV);
    assert.equal(dev.status, 403);
    assert.equal((await dev.json() as { code: string }).code, 'SP_ACCESS_DENIED');
    const bad = await api('/api/v1/resources', {}, { authorization: 'Bearer nope' });
    assert.equal(bad.status, 401);
    await bad.body?.cancel();
    await a.app.state.flush();
    const page = auditPageSchema.parse(await (await api('/api/v1/audit?type=admin-denied')).json());
    assert.ok(page.items.some((e) => e.actor === 'dev' && e.reason?.startsWith('not in an admin group')), JSON.stringify(page.items));
    assert.ok(page.items.some((e) => e.actor === null && e.reason?.startsWith('no credentials')));
  });

  it('lists resources and instances in the documented shape', async () => {
    const res = await api('/api/v1/resources');
    assert.equal(res.status, 200);
    const list = resourceListSchema.parse(await res.json());
    assert.deepEqual(list.items.map((r) => r.id).sort(), ['app', 'team']);
    const app = list.items.find((r) => r.id === 'app');
    assert.equal(app?.provider, 'mimic');
    assert.deepEqual(app?.capabilities, { suspend: false, logs: false });
    const one = resourceViewSchema.parse(await (await api('/api/v1/resources/app')).json());
    assert.equal(one.id, 'app');
    const missing = await api('/api/v1/resources/nope');
    assert.equal(missing.status, 404);
    assert.equal((await missing.json() as { code: string }).code, 'SP_ROUTE_NOT_FOUND');
  });

  it('starts an instance, streams its progress to ready, shows who started it, its boot and idle deadline; stops it', async () => {
    const started = await api('/api/v1/resources/app/start', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    assert.equal(started.status, 202);
    const body = await started.json() as { accepted: boolean; instance: { instanceKey: string; state: string; startedBy: string } };
    assert.equal(body.instance.instanceKey, '*');
    assert.equal(body.instance.state, 'starting');
    assert.equal(body.instance.startedBy, 'admin:ops');
    const events = await readSse(await api('/api/v1/resources/app/instances/%2A/events'), (e) => e === 'ready' || e === 'failed');
    assert.equal(events.at(-1)?.event, 'ready');
    const view = resourceViewSchema.parse(await (await api('/api/v1/resources/app')).json());
    const inst = view.instances[0];
    assert.equal(inst?.state, 'ready');
    assert.equal(inst?.startedBy, 'admin:ops');
    assert.ok(inst?.endpoint?.startsWith('http://127.0.0.1:'));
    assert.ok(inst?.idleDeadline !== null && Date.parse(inst?.idleDeadline ?? '') > Date.now() + 500_000, 'idle deadline ~10 min ahead');
    assert.equal(view.boot.history.length, 1);
    assert.equal(view.boot.estimate?.samples, 1);
    assert.equal(view.counts.ready, 1);

    const stop = await api('/api/v1/resources/app/instances/*/stop', { method: 'POST' });
    assert.equal(stop.status, 202);
    await stop.body?.cancel();
    await new Promise<void>((resolve) => {
      const off = a.app.manager.onEvent((e) => { if (e.instance.status === 'stopped') { off(); resolve(); } });
      if ([...a.app.manager.instancesOf('app')].every((i) => i.status === 'stopped')) { off(); resolve(); }
    });
    await a.app.state.flush();
    // The operator is named on what their actions caused, not only on the admin-* entries:
    // the start itself, and the stop's moves to stopping and stopped.
    const audit = auditPageSchema.parse(await (await api('/api/v1/audit?resource=app&actor=admin:ops')).json());
    assert.deepEqual(audit.items.map((e) => `${e.type}${e.status === null ? '' : `:${e.status}`}`).sort(),
      ['admin-start:starting', 'admin-stop:ready', 'instance-changed:stopped', 'instance-changed:stopping', 'start']);
    const stopped = auditPageSchema.parse(await (await api('/api/v1/audit?resource=app&type=instance-changed')).json());
    assert.equal(stopped.items[0]?.status, 'stopped');
    assert.match(stopped.items[0]?.reason ?? '', /stopped by admin:ops/);
    assert.equal(stopped.items.find((e) => e.status === 'ready')?.actor, null, 'becoming ready is the proxy\'s own');
    const system = auditPageSchema.parse(await (await api('/api/v1/audit?resource=app&actor=system')).json());
    assert.deepEqual(system.items, [], 'nothing of the operator\'s start is the system\'s');
  });

  it('records data-plane starts with the verified user, and denials, in the store', async () => {
    const res = await fetch(`${a.app.proxyUrl}/smart_proxy/team/g1/x`, { headers: DEV });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    const denied = await fetch(`${a.app.proxyUrl}/smart_proxy/team/g2/x`, { headers: DEV });
    assert.equal(denied.status, 403);
    await denied.body?.cancel();
    await a.app.state.flush();
    const starts = auditPageSchema.parse(await (await api('/api/v1/audit?resource=team&type=start')).json());
    assert.equal(starts.items[0]?.actor, 'dev');
    assert.equal(starts.items[0]?.instanceKey, 'g1');
    const denials = auditPageSchema.parse(await (await api('/api/v1/audit?resource=team&type=denied')).json());
    assert.equal(denials.items[0]?.actor, 'dev');
    assert.equal(denials.items[0]?.status, 'SP_ACCESS_DENIED');
    const list = instanceListSchema.parse(await (await api('/api/v1/instances?resource=team&state=ready')).json());
    assert.equal(list.total, 1);
    assert.equal(list.items[0]?.startedBy, 'dev');
  });

  it('pages the audit log by cursor and filters by time', async () => {
    await a.app.state.flush();
    const all = auditPageSchema.parse(await (await api('/api/v1/audit?limit=1000')).json());
    assert.ok(all.items.length >= 8, `${all.items.length} events`);
    const seen: number[] = [];
    let before: number | null = null;
    do {
      const page = auditPageSchema.parse(await (await api(`/api/v1/audit?limit=3${before === null ? '' : `&before=${before}`}`)).json());
      seen.push(...page.items.map((e) => e.id));
      before = page.nextBefore;
    } while (before !== null);
    assert.deepEqual(seen, all.items.map((e) => e.id));
    const newest = all.items[0];
    const since = await (await api(`/api/v1/audit?since=${encodeURIComponent(newest?.at ?? '')}`)).json() as { items: Array<{ at: string }> };
    assert.ok(since.items.length >= 1 && since.items.every((e) => e.at >= (newest?.at ?? '')));
  });

  it('answers malformed requests with problem+json 400, unknown routes 404, wrong methods 405', async () => {
    const cases: Array<[string, RequestInit, number, string]> = [
      ['/api/v1/audit?limit=abc', {}, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/audit?limit=1&limit=2', {}, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/audit?since=yesterday', {}, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/instances?state=sleeping', {}, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/resources/app/start', { method: 'POST', body: '{not json' }, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/resources/app/start', { method: 'POST', body: '{"instanceKey":"g1"}' }, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/resources/app/start', { method: 'POST', body: JSON.stringify({ pad: 'x'.repeat(70_000) }) }, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/resources/%E0%A4%A/start', { method: 'POST' }, 400, 'SP_ADMIN_BAD_REQUEST'],
      ['/api/v1/nope', {}, 404, 'SP_ROUTE_NOT_FOUND'],
      ['/api/v1/resources/app/instances/nope/stop', { method: 'POST' }, 404, 'SP_ROUTE_NOT_FOUND'],
      ['/api/v1/resources', { method: 'DELETE' }, 405, 'SP_ROUTE_METHOD_NOT_ALLOWED'],
      ['/api/v1/resources/team/instances/g1/suspend', { method: 'POST' }, 501, 'SP_ADMIN_UNSUPPORTED'],
      ['/api/v1/resources/team/instances/g1/logs', {}, 501, 'SP_ADMIN_UNSUPPORTED'],
      ['/api/v1/reload', { method: 'POST' }, 501, 'SP_ADMIN_UNSUPPORTED'],
    ];
    for (const [path, init, status, code] of cases) {
      const res = await api(path, init);
      assert.equal(res.status, status, `${init.method ?? 'GET'} ${path}`);
      assert.equal(res.headers.get('content-type'), 'application/problem+json', path);
      assert.equal((await res.json() as { code: string }).code, code, path);
    }
    const del = await api('/api/v1/resources', { method: 'DELETE' });
    assert.equal(del.headers.get('allow'), 'GET, HEAD');
    await del.body?.cancel();
    // Metrics are on by default: the admin listener serves them in Prometheus' text format.
    const metrics = await api('/metrics');
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^# HELP /m);
  });

  it('shows the effective configuration with secrets redacted', async () => {
    const text = await (await api('/api/v1/config')).text();
    const cfg = JSON.parse(text) as { identities: Array<{ tokens?: Array<{ user: string; hash: string }> }>; admin: { groups: string[] } };
    assert.equal(cfg.identities[0]?.tokens?.[0]?.user, 'ops');
    assert.equal(cfg.identities[0]?.tokens?.[0]?.hash, '[redacted]');
    assert.deepEqual(cfg.admin.groups, ['ops']);
    assert.doesNotMatch(text, /sha256:|\$scrypt\$/);
  });

  it('serves the OpenAPI document it is generated from', async () => {
    const res = await api('/api/v1/openapi.json');
    assert.equal(res.status, 200);
    const doc = await res.json() as { openapi: string; paths: Record<string, unknown> };
    assert.equal(doc.openapi, '3.1.0');
    assert.deepEqual(doc, JSON.parse(JSON.stringify(adminOpenApi())));
    assert.ok('/api/v1/audit' in doc.paths);
  });

  it('guards browser actions against CSRF: token header + SameSite cookie, same origin', async () => {
    const page = await api('/', {}, WEB);
    assert.equal(page.status, 200);
    const cookie = page.headers.get('set-cookie') ?? '';
    assert.match(cookie, /^sp_admin_csrf=[\w-]{32}; Path=\/; HttpOnly; SameSite=Strict/);
    const token = cookie.slice('sp_admin_csrf='.length, cookie.indexOf(';'));
    const html = await page.text();
    assert.ok(html.includes(`content="${token}"`), 'the page carries the token');
    assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    const start = (headers: Record<string, string>) => api('/api/v1/resources/app/start', { method: 'POST', headers }, WEB);
    const noToken = await start({ cookie: `sp_admin_csrf=${token}` });
    assert.equal(noToken.status, 403);
    assert.equal((await noToken.json() as { code: string }).code, 'SP_ADMIN_CSRF');
    const wrongToken = await start({ cookie: `sp_admin_csrf=${token}`, 'x-csrf-token': 'x'.repeat(32) });
    assert.equal(wrongToken.status, 403);
    await wrongToken.body?.cancel();
    const crossSite = await start({ cookie: `sp_admin_csrf=${token}`, 'x-csrf-token': token, origin: 'http://evil.example' });
    assert.equal(crossSite.status, 403);
    await crossSite.body?.cancel();
    const fetchMeta = await start({ cookie: `sp_admin_csrf=${token}`, 'x-csrf-token': token, 'sec-fetch-site': 'cross-site' });
    assert.equal(fetchMeta.status, 403);
    await fetchMeta.body?.cancel();
    const ok = await start({ cookie: `sp_admin_csrf=${token}`, 'x-csrf-token': token, origin: a.admin });
    assert.equal(ok.status, 202);
    await ok.body?.cancel();
    await readSse(await api('/api/v1/resources/app/instances/*/events'), (e) => e === 'ready' || e === 'failed');
    // A bearer token is not ambient: CLI and scripts need no CSRF token.
    const bearer = await api('/api/v1/resources/app/instances/*/stop', { method: 'POST' }, OPS);
    assert.equal(bearer.status, 202);
    await bearer.body?.cancel();
  });
});

describe('admin readiness', () => {
  it('is false while draining and while the store is unreachable', async () => {
    const mimic = new MimicProvider({ bootMs: 10 });
    const a = await startAdminApp({ app: { provider: 'mimic', sharing: 'shared' } }, { mimic });
    try {
      assert.equal((await fetch(`${a.admin}/readyz`)).status, 200);
      // The store goes away (closed under the app): readiness says so, liveness does not.
      await a.app.state.close();
      const down = await fetch(`${a.admin}/readyz`);
      assert.equal(down.status, 503);
      const body = await down.json() as { store: { reachable: boolean; error: string } };
      assert.equal(body.store.reachable, false);
      assert.match(body.store.error, /closed/);
      assert.equal((await fetch(`${a.admin}/healthz`)).status, 200);
    } finally {
      await a.close();
    }
  });

  it('goes unready at the start of shutdown while the admin listener still answers', async () => {
    const mimic = new MimicProvider({ manual: true });
    const a = await startAdminApp({ app: { provider: 'mimic', sharing: 'shared' } }, { mimic }, { shutdown: { drainTimeoutMs: 10_000 } });
    try {
      // A held request keeps the drain going until the instance boots.
      const held = fetch(`${a.app.proxyUrl}/smart_proxy/app/g1/`, { headers: OPS });
      await new Promise<void>((resolve) => {
        const off = a.app.manager.onEvent((e) => { if (e.type === 'start-requested') { off(); resolve(); } });
      });
      const closing = a.app.close();
      const res = await fetch(`${a.admin}/readyz`);
      assert.equal(res.status, 503);
      assert.equal((await res.json() as { draining: boolean }).draining, true);
      assert.equal((await fetch(`${a.admin}/healthz`)).status, 200);
      await mimic.release('*');
      assert.equal((await held).status, 200);
      await closing;
    } finally {
      await a.close();
    }
  });
});
