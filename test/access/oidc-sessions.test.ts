/**
 * OIDC sessions over time and across replicas: a wrong nonce, idle and absolute lifetimes
 * and refresh on an injected clock, expired bearer tokens, an issuer that is down, key
 * rotation, sessions too big for a cookie, and two replicas sharing sessions.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { Sealer } from '../../src/access/oidc/sealer.ts';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { MemoryKeyValueStore } from '../../src/state/key-value-stores.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { BROWSER, CookieJar, freePort, go, KEY_A, KEY_B, signIn, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/page?q=1';
const API = { accept: 'application/json' };
const MIN = 60_000;

/** Real timers, a `now()` the test moves forward (sessions and tokens see the future). */
class OffsetClock implements Clock {
  offsetMs = 0;
  now(): number {
    return Date.now() + this.offsetMs;
  }
  setTimeout(fn: () => void, ms: number): ReturnType<Clock['setTimeout']> {
    return systemClock.setTimeout(fn, ms);
  }
}

describe('oidc sessions on an injected clock', () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  const clock = new OffsetClock();
  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port, { accessTokenTtlS: 600, idTokenTtlS: 3600 });
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, clock, sessions: { idleTimeoutMs: 30 * MIN, absoluteTimeoutMs: 120 * MIN, refreshBeforeMs: MIN, touchIntervalMs: MIN } });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });
  beforeEach(() => {
    clock.offsetMs = 0;
  });

  it('refuses an ID token that does not carry this sign-in\'s nonce', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    // Rewrite the transaction as if this browser had asked with another nonce.
    const sealer = new Sealer([KEY_A]);
    const tx = await sealer.open('sign-in', trip.txCookie[1]);
    assert.ok(tx !== undefined);
    const { p: _p, ...rest } = tx;
    trip.jar.set(proxy.url, trip.txCookie[0], await sealer.seal('sign-in', { ...rest, nonce: 'not-the-nonce-the-provider-saw' }));
    const res = await go(trip.jar, trip.callbackUrl, { headers: API });
    assert.equal(res.status, 400);
    const body = await res.json() as { code: string; detail: string };
    assert.equal(body.code, 'SP_ACCESS_SIGN_IN_FAILED');
    assert.match(body.detail, /nonce/);
    assert.equal(trip.jar.get(proxy.url, 'smart_proxy_session'), undefined);
  });

  /** Boots the resource at the real time: a jump of the clock during a boot would time it out. */
  const ready = async (jar: CookieJar, target = TARGET): Promise<void> => {
    const r = await go(jar, `${proxy.url}${target}`, { headers: API });
    assert.equal(r.status, 200);
    await r.text();
  };

  it('ends a session left idle, renews one in use', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    await ready(jar);
    const first = jar.get(proxy.url, 'smart_proxy_session');
    clock.offsetMs = 20 * MIN;
    const used = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
    assert.equal(used.status, 200);
    await used.text();
    assert.notEqual(jar.get(proxy.url, 'smart_proxy_session'), first, 'a used session gets a renewed cookie');
    clock.offsetMs = 45 * MIN; // 25 min after the last use: still within 30
    const again = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
    assert.equal(again.status, 200);
    await again.text();
    clock.offsetMs = 80 * MIN; // 35 min idle
    const idle = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
    assert.equal(idle.status, 401);
    assert.match((await idle.json() as { detail: string }).detail, /idle/);
  });

  it('ends a session at its absolute lifetime however busy', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    await ready(jar);
    for (let m = 25; m < 120; m += 25) {
      clock.offsetMs = m * MIN;
      const r = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
      assert.equal(r.status, 200, `at ${m} min`);
      await r.text();
    }
    clock.offsetMs = 121 * MIN;
    const r = await go(jar, `${proxy.url}${TARGET}`, { headers: BROWSER });
    assert.equal(r.status, 302, 'a browser is sent to sign in again');
    await r.text();
  });

  it('refreshes the access token with the refresh token before it expires', async () => {
    const { jar } = await signIn(proxy.url, '/smart_proxy/tok/-/', 'alice', 'alice-pw');
    const before = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
    const tokenBefore = (await before.json() as Echo).headers['x-forwarded-access-token'];
    const refreshes = issuer.refreshes;
    clock.offsetMs = 5 * MIN; // far from expiry: no refresh
    const mid = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
    await mid.text();
    assert.equal(issuer.refreshes, refreshes);
    clock.offsetMs = 9.5 * MIN; // 30 s before the 10 min token expires
    const [a, b] = await Promise.all([
      go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API }),
      go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API }),
    ]);
    const tokenA = (await a.json() as Echo).headers['x-forwarded-access-token'];
    const tokenB = (await b.json() as Echo).headers['x-forwarded-access-token'];
    assert.equal(issuer.refreshes, refreshes + 1, 'two requests at once: one refresh');
    assert.notEqual(tokenA, tokenBefore);
    assert.equal(tokenA, tokenB);
    assert.ok(a.headers.getSetCookie().some((c) => c.startsWith('smart_proxy_session=')), 'the refreshed session goes back in the cookie');
    clock.offsetMs = 10 * MIN;
    const later = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
    await later.text();
    assert.equal(issuer.refreshes, refreshes + 1, 'the new token is not refreshed again');
  });

  it('refuses an expired bearer JWT', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const s = await new Sealer([KEY_A]).open('session', jar.get(proxy.url, 'smart_proxy_session') as string);
    const idToken = s?.idt as string;
    await ready(jar);
    const ok = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, authorization: `Bearer ${idToken}` } });
    assert.equal(ok.status, 200);
    await ok.text();
    clock.offsetMs = 62 * MIN; // the 60 min ID token, past the 30 s tolerance
    const res = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, authorization: `Bearer ${idToken}` } });
    assert.equal(res.status, 401);
    assert.match(res.headers.get('www-authenticate') ?? '', /error="invalid_token", error_description="token expired"/);
    await res.text();
  });

  // Last in this block: it stops the issuer.
  it('keeps a session going when the refresh finds the provider down, and backs off', async () => {
    const { jar } = await signIn(proxy.url, '/smart_proxy/tok/-/', 'alice', 'alice-pw');
    await ready(jar, '/smart_proxy/tok/-/');
    await issuer.close();
    clock.offsetMs = 9.5 * MIN;
    for (let i = 0; i < 3; i++) {
      const res = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
      assert.equal(res.status, 200);
      await res.text();
    }
    const tries = proxy.logs.filter((l) => l.msg?.includes('refresh failed (provider unreachable)')).length;
    assert.equal(tries, 1, 'one attempt, then a back-off');
  });
});

describe('oidc with the issuer down', () => {
  it('answers a clear 503 page at sign-in, and 503 to API clients, without crashing', async () => {
    const port = await freePort();
    const deadPort = await freePort();
    const proxy = await startOidcApp({ port, issuerUrl: `http://127.0.0.1:${deadPort}` });
    try {
      const jar = new CookieJar();
      const first = await go(jar, `${proxy.url}${TARGET}`, { headers: BROWSER });
      assert.equal(first.status, 302);
      await first.text();
      const page = await go(jar, first.headers.get('location') as string, { headers: BROWSER });
      assert.equal(page.status, 503);
      assert.match(page.headers.get('content-type') ?? '', /text\/html/);
      assert.ok(page.headers.get('retry-after'));
      assert.match(await page.text(), /sign-in provider .* cannot be reached right now/);
      const api = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=%2F`, { headers: API });
      assert.equal(api.status, 503);
      assert.equal((await api.json() as { code: string }).code, 'SP_ACCESS_UNAVAILABLE');
      // A bearer JWT naming this issuer cannot be checked: 503, not 401.
      const header = Buffer.from(JSON.stringify({ alg: 'RS256', kid: 'k' })).toString('base64url');
      const payload = Buffer.from(JSON.stringify({ iss: `http://127.0.0.1:${deadPort}`, sub: 'x', aud: 'smart-proxy', exp: 9e9 })).toString('base64url');
      const bearer = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, authorization: `Bearer ${header}.${payload}.c2ln` } });
      assert.equal(bearer.status, 503);
      await bearer.text();
    } finally {
      await proxy.close();
    }
  });

  it('answers 503 at the callback when the issuer went away during sign-in', async () => {
    const port = await freePort();
    const issuer = await startIssuer(port);
    const proxy = await startOidcApp({ port, issuerUrl: issuer.url });
    try {
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      await issuer.close();
      const res = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
      assert.equal(res.status, 503);
      assert.match(await res.text(), /cannot be reached/);
      // Still serving.
      const again = await fetch(`${proxy.url}${TARGET}`, { headers: API });
      assert.equal(again.status, 401);
      await again.text();
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});

describe('oidc across replicas and keys', () => {
  let issuer: EmbeddedIssuer;
  let a: OidcApp;
  let b: OidcApp;
  let rotated: OidcApp;
  let retired: OidcApp;
  const shared = new MemoryKeyValueStore(systemClock);
  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    a = await startOidcApp({ port, issuerUrl: issuer.url, keyValues: shared });
    b = await startOidcApp({ port: await freePort(), issuerUrl: issuer.url, keyValues: shared });
    rotated = await startOidcApp({ port: await freePort(), issuerUrl: issuer.url, keys: [KEY_B, KEY_A] });
    retired = await startOidcApp({ port: await freePort(), issuerUrl: issuer.url, keys: [KEY_B] });
  });
  after(async () => {
    for (const p of [a, b, rotated, retired]) await p?.close();
    await issuer?.close();
    await shared.close();
  });

  const withSession = async (app: OidcApp, jar: CookieJar, from: OidcApp): Promise<Response> => {
    const j = new CookieJar();
    j.set(app.url, 'smart_proxy_session', jar.get(from.url, 'smart_proxy_session') as string);
    return go(j, `${app.url}${TARGET}`, { headers: API });
  };

  it('a session opened on one replica works on another (no sticky sessions)', async () => {
    const { jar } = await signIn(a.url, TARGET, 'alice', 'alice-pw');
    const res = await withSession(b, jar, a);
    assert.equal(res.status, 200);
    assert.equal((await res.json() as Echo).headers['x-forwarded-user'], 'alice');
  });

  it('a callback used on one replica is refused on another', async () => {
    const trip = await tripToCallback(a.url, TARGET, 'alice', 'alice-pw');
    const ok = await go(trip.jar, trip.callbackUrl, { headers: API });
    assert.equal(ok.status, 303);
    const j = new CookieJar();
    j.set(b.url, trip.txCookie[0], trip.txCookie[1]);
    const replay = await go(j, trip.callbackUrl.replace(a.url, b.url), { headers: API });
    assert.equal(replay.status, 400);
    assert.match((await replay.json() as { detail: string }).detail, /already been used/);
  });

  it('rotates keys without signing anyone out; a retired key no longer opens', async () => {
    const { jar } = await signIn(a.url, TARGET, 'alice', 'alice-pw');
    const withNewFirst = await withSession(rotated, jar, a);
    assert.equal(withNewFirst.status, 200, 'the old key still opens');
    const renewed = withNewFirst.headers.getSetCookie();
    await withNewFirst.text();
    const old = await withSession(retired, jar, a);
    assert.equal(old.status, 401);
    await old.text();
    // A cookie sealed by the rotated replica opens with the new key alone.
    const fresh = await signIn(rotated.url, TARGET, 'alice', 'alice-pw').catch(() => undefined);
    if (fresh !== undefined && fresh.callback.status === 303) {
      const res = await withSession(retired, fresh.jar, rotated);
      assert.equal(res.status, 200);
      await res.text();
    }
    assert.ok(Array.isArray(renewed));
  });
});

describe('oidc with several providers and userinfo', () => {
  it('offers a choice of providers, and merges userinfo claims at sign-in', async () => {
    const port = await freePort();
    const issuer = await startIssuer(port);
    const url = `http://127.0.0.1:${port}`;
    const { configSchema } = await import('../../src/config/schema.ts');
    const { startApp } = await import('../../src/main.ts');
    const { collectingLogger } = await import('../helpers/proxy-harness.ts');
    const { MimicProvider } = await import('../helpers/mimic-provider.ts');
    const provider = new MimicProvider({ bootMs: 10 });
    const common = { issuer: issuer.url, clientId: 'smart-proxy', clientSecret: 'client-secret-for-tests', scopes: ['openid', 'profile', 'groups'] };
    const app = await startApp(configSchema.parse({
      listen: { host: '127.0.0.1', port }, shutdown: { drainTimeoutMs: 0 }, state: { kind: 'memory' },
      providers: { mimic: { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' } },
      identities: [{ kind: 'oidc', name: 'test', userinfo: true, ...common }, { kind: 'oidc', name: 'other', ...common }],
      access: { sessions: { publicUrl: url, keys: [KEY_A] } },
      resources: { r1: { provider: 'mimic', access: { anyOf: ['g1'] }, probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 } } },
    }), { logger: collectingLogger([]), providers: new Map([['mimic', provider]]) });
    try {
      const chooser = await fetch(`${url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
      assert.equal(chooser.status, 200);
      const html = await chooser.text();
      assert.match(html, /provider=test&amp;rd=%2Fsmart_proxy%2Fr1/);
      assert.match(html, /provider=other/);
      // Through the first provider (the one the issuer knows), with userinfo.
      const jar = new CookieJar();
      const start = await go(jar, `${url}/_smart_proxy/auth/sign-in?provider=test&rd=${encodeURIComponent(TARGET)}`);
      assert.equal(start.status, 303);
      let next = start.headers.get('location') as string;
      for (let i = 0; i < 10 && !next.startsWith(`${url}/_smart_proxy/auth/callback/`); i++) {
        const res = await go(jar, next, { headers: BROWSER });
        if (res.status === 200) {
          await res.text();
          const post = await go(jar, `${next}/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'login=alice&password=alice-pw' });
          next = new URL(post.headers.get('location') as string, next).href;
          continue;
        }
        await res.text();
        next = new URL(res.headers.get('location') as string, next).href;
      }
      const cb = await go(jar, next, { headers: BROWSER });
      assert.equal(cb.status, 303);
      const res = await go(jar, `${url}${TARGET}`, { headers: API });
      assert.equal(res.status, 200);
      assert.equal((await res.json() as Echo).headers['x-forwarded-groups'], 'g1,staff');
    } finally {
      await app.close();
      await provider.close();
      await issuer.close();
    }
  });
});

describe('oidc sessions too big for a cookie', () => {
  it('keeps them in the store, shared by replicas, and deletes them at sign-out', async () => {
    const shared = new MemoryKeyValueStore(systemClock);
    const port = await freePort();
    const issuer = await startIssuer(port);
    const a = await startOidcApp({ port, issuerUrl: issuer.url, keyValues: shared, sessions: { maxCookieBytes: 1000 } });
    const b = await startOidcApp({ port: await freePort(), issuerUrl: issuer.url, keyValues: shared, sessions: { maxCookieBytes: 1000 } });
    try {
      const { jar, callback } = await signIn(a.url, TARGET, 'alice', 'alice-pw');
      assert.equal(callback.status, 303);
      const cookie = jar.get(a.url, 'smart_proxy_session') as string;
      assert.ok(cookie.length < 300, `a reference, not the session (${cookie.length} chars)`);
      const j = new CookieJar();
      j.set(b.url, 'smart_proxy_session', cookie);
      const onB = await go(j, `${b.url}${TARGET}`, { headers: API });
      assert.equal(onB.status, 200);
      await onB.text();
      const out = await go(jar, `${a.url}/_smart_proxy/auth/sign-out`, { method: 'POST', headers: { ...BROWSER, origin: a.url } });
      assert.equal(out.status, 303);
      // The same cookie, replayed after sign-out, opens nothing.
      const j2 = new CookieJar();
      j2.set(b.url, 'smart_proxy_session', cookie);
      const replay = await go(j2, `${b.url}${TARGET}`, { headers: API });
      assert.equal(replay.status, 401);
      assert.match((await replay.json() as { detail: string }).detail, /session ended/);
    } finally {
      await a.close();
      await b.close();
      await issuer.close();
      await shared.close();
    }
  });
});
