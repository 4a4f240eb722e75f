/**
 * CORS for resources with a `cors` policy, through the real composition (config → startApp →
 * ProxyServer) with real token identities: preflights answered before any access step and
 * without waking anything, every answer (the proxy's own included) labelled, the backend's
 * CORS fields replaced by the policy's. A browser's view of the same is in
 * test/browser/cors.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { configSchema } from '../../src/config/schema.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { ALICE, startAccessApp, type AccessApp } from '../access/helpers.ts';

const PAGE = 'https://app.example.com';

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

async function call(url: string, method: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  const res = await request(url, { method, headers, body });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

function preflight(url: string, origin: string, extra: Record<string, string> = {}): Promise<Answer> {
  return call(url, 'OPTIONS', { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type', ...extra });
}

describe('CORS policy of a resource', () => {
  let mimic: MimicProvider;
  let a: AccessApp;
  before(async () => {
    // The backend sets its own (permissive) CORS fields and a Vary of its own.
    mimic = new MimicProvider({
      bootMs: 0,
      handler: (req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain', 'access-control-allow-origin': '*', 'access-control-allow-methods': 'GET', vary: 'Accept-Encoding', 'x-total': '3' });
        res.end(`backend saw ${req.method ?? '?'} from ${req.headers['x-forwarded-user'] as string | undefined ?? 'nobody'}`);
      },
    });
    a = await startAccessApp({
      resources: {
        api: { provider: 'mimic', cors: { allowedOrigins: [`${PAGE}/`], exposedHeaders: ['x-total'], maxAgeS: 120 } },
        anyone: { provider: 'mimic', cors: { allowedOrigins: ['*'], allowedHeaders: ['authorization'] } },
        plain: { provider: 'mimic' },
      },
    }, { mimic });
  });
  after(async () => { await a.close(); });

  const p = (path: string): string => `${a.url}/smart_proxy/${path}`;

  it('answers a preflight itself, before any access step: no provider call, nothing woken', async () => {
    const r = await preflight(p('api/-/items'), PAGE);
    assert.equal(r.status, 204);
    assert.equal(r.headers['access-control-allow-origin'], PAGE);
    assert.equal(r.headers['access-control-allow-methods'], 'GET, HEAD, POST, PUT, PATCH, DELETE');
    assert.equal(r.headers['access-control-allow-headers'], 'authorization, content-type');
    assert.equal(r.headers['access-control-max-age'], '120');
    assert.equal(r.headers['access-control-allow-credentials'], undefined);
    assert.match(String(r.headers.vary), /^Origin\b/);
    assert.equal(mimic.calls.start + mimic.calls.inspect, 0);
  });

  it('refuses a preflight from another origin with 403, also without waking anything', async () => {
    const r = await preflight(p('api/-/items'), 'https://evil.example');
    assert.equal(r.status, 403);
    assert.equal(JSON.parse(r.body).code, 'SP_CORS_ORIGIN_DENIED');
    assert.equal(r.headers['access-control-allow-origin'], undefined);
    assert.equal(mimic.calls.start + mimic.calls.inspect, 0);
  });

  it('without a policy a preflight goes through the access steps as before (401)', async () => {
    const r = await preflight(p('plain/-/items'), PAGE);
    assert.equal(r.status, 401);
    assert.equal(r.headers['access-control-allow-origin'], undefined);
  });

  it('labels the proxy\'s own refusals, so the page can read the 401 and its challenge', async () => {
    const r = await call(p('api/-/items'), 'GET', { origin: PAGE });
    assert.equal(r.status, 401);
    assert.equal(r.headers['access-control-allow-origin'], PAGE);
    assert.equal(r.headers['access-control-expose-headers'], 'x-total');
    assert.ok(r.headers['www-authenticate'] !== undefined);
    assert.equal(mimic.calls.start, 0);
  });

  it('a held request (cold start) and a warm one carry the policy\'s fields, not the backend\'s', async () => {
    for (const round of ['cold', 'warm']) {
      const r = await call(p('api/-/items'), 'GET', { origin: PAGE, ...ALICE });
      assert.equal(r.status, 200, round);
      assert.equal(r.body, 'backend saw GET from alice');
      assert.equal(r.headers['access-control-allow-origin'], PAGE, `${round}: one ACAO, the policy's`);
      assert.equal(r.headers['access-control-allow-methods'], undefined, `${round}: the backend's other CORS fields are dropped`);
      assert.equal(r.headers['access-control-expose-headers'], 'x-total');
      assert.equal(r.headers['x-total'], '3');
      assert.deepEqual([r.headers.vary].flat().join(', ').split(/,\s*/).sort(), ['Accept-Encoding', 'Origin'], `${round}: both Vary values`);
    }
    assert.equal(mimic.calls.start, 1);
  });

  it('a request from an origin not allowed is served, without CORS fields (the browser keeps it from the page)', async () => {
    const r = await call(p('api/-/items'), 'GET', { origin: 'https://evil.example', ...ALICE });
    assert.equal(r.status, 200);
    assert.equal(r.headers['access-control-allow-origin'], undefined);
    assert.equal(r.headers['access-control-allow-methods'], undefined);
  });

  it('the 202 of Prefer: respond-async keeps Origin in Vary beside Prefer', async () => {
    for (const inst of a.app.manager.instancesOf('api')) await a.app.manager.stop(inst, 'test: cold again');
    const r = await call(p('api/-/items'), 'GET', { origin: PAGE, prefer: 'respond-async', ...ALICE });
    assert.equal(r.status, 202);
    assert.equal(r.headers['access-control-allow-origin'], PAGE);
    assert.equal(r.headers.vary, 'Origin, Prefer');
  });

  it('"*": the same answer for every origin (no Vary), and a fixed list of request fields', async () => {
    const r = await preflight(p('anyone/-/x'), 'https://whoever.example', { 'access-control-request-headers': 'authorization, x-other' });
    assert.equal(r.status, 204);
    assert.equal(r.headers['access-control-allow-origin'], '*');
    assert.equal(r.headers['access-control-allow-headers'], 'authorization');
    assert.equal(r.headers.vary, undefined);
  });

  it('reflects only well-formed field names from a hostile preflight, at most 64', async () => {
    const many = Array.from({ length: 100 }, (_, i) => `x-h${i}`).join(',');
    const r = await preflight(p('api/-/x'), PAGE, { 'access-control-request-headers': `ok-one, bad header, "quoted", ${many}` });
    assert.equal(r.status, 204);
    const names = String(r.headers['access-control-allow-headers']).split(', ');
    assert.equal(names[0], 'ok-one');
    assert.ok(!names.includes('bad header') && !names.includes('"quoted"'));
    assert.equal(names.length, 64);
  });

  it('a preflight with a body (no browser sends one) is answered, its body drained, then the connection closed', async () => {
    const body = 'x'.repeat(256 * 1024);
    const starts = mimic.calls.start;
    const r = await call(p('api/-/x'), 'OPTIONS', { origin: PAGE, 'access-control-request-method': 'PUT', 'content-length': String(body.length) }, body);
    assert.equal(r.status, 204);
    assert.equal(r.headers.connection, 'close');
    assert.equal(mimic.calls.start, starts, 'nothing was woken');
  });

  it('the config refuses credentials with "*" and a malformed origin', () => {
    const base = { providers: { m: { kind: 'static', endpoint: 'http://127.0.0.1:1' } } };
    const wild = configSchema.safeParse({ ...base, resources: { r: { provider: 'm', cors: { allowedOrigins: ['*'], allowCredentials: true } } } });
    assert.equal(wild.success, false);
    assert.match(JSON.stringify(wild.error?.issues), /allowCredentials/);
    const bad = configSchema.safeParse({ ...base, resources: { r: { provider: 'm', cors: { allowedOrigins: ['app.example.com'] } } } });
    assert.equal(bad.success, false);
  });
});
