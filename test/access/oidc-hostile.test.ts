/**
 * OIDC sign-in against what real clients and hostile input bring, over raw HTTP: a return
 * URL too long for a cookie, sign-ins piling up in one browser, a malformed callback path, a
 * stale second session cookie, a form POST without a session, the provider's error answer,
 * and group changes at the provider (when access stops, as docs/how-to/sign-in-with-oidc.md
 * says).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import type { EmbeddedIssuer, IssuerUser } from '../../src/mock-idp/embedded-issuer.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { BROWSER, CookieJar, freePort, go, signIn, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/page?q=1';
const API = { accept: 'application/json' };
const MIN = 60_000;
/** What browsers keep of one cookie (RFC 6265 §6.1 asks for at least this; Chromium and Firefox drop longer ones). */
const BROWSER_COOKIE_LIMIT = 4096;

/** The name=value part of each Set-Cookie of a response. */
const cookiePairs = (res: Response): string[] => res.headers.getSetCookie().map((c) => c.split(';')[0] as string);

describe('oidc sign-in under hostile and awkward input', () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  it('returns to a URL too long for a cookie: the transaction waits in the store, no cookie passes 4096 bytes', async () => {
    // A long query (a notebook's state, a dashboard's filters): 3,900 characters, just under
    // the longest return path the proxy keeps (4,096).
    const target = `/smart_proxy/r1/-/dash?f=${'a%2Fb'.repeat(780)}`;
    assert.ok(target.length > 3900 && target.length <= 4096, `${target.length}`);
    const jar = new CookieJar();
    const first = await go(jar, `${proxy.url}${target}`, { headers: BROWSER });
    assert.equal(first.status, 302);
    await first.text();
    const start = await go(jar, first.headers.get('location') as string, { headers: BROWSER });
    assert.equal(start.status, 303);
    await start.text();
    for (const pair of cookiePairs(start)) assert.ok(pair.length <= 1200, `a cookie of ${pair.length} bytes`);
    const { callback } = await signInWith(jar, target);
    assert.equal(callback.status, 303);
    assert.equal(callback.headers.get('location'), `${proxy.url}${target}`, 'back to the exact long URL');
    for (const pair of cookiePairs(callback)) assert.ok(pair.length <= BROWSER_COOKIE_LIMIT, `a cookie of ${pair.length} bytes`);
    await callback.text();
  });

  /** The rest of a sign-in started in `jar` (its tx cookie there): through the provider to the callback. */
  async function signInWith(jar: CookieJar, target: string): Promise<{ callback: Response }> {
    const trip = await tripToCallback(proxy.url, target, 'alice', 'alice-pw', jar);
    return { callback: await go(trip.jar, trip.callbackUrl, { headers: BROWSER }) };
  }

  it('returns to a path with characters outside ASCII (percent-encoded), never a 500', async () => {
    const rd = '/smart_proxy/r1/-/café/€?q=ü';
    const trip = await tripToCallback(proxy.url, `/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(rd)}`, 'alice', 'alice-pw');
    const callback = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
    assert.equal(callback.status, 303);
    assert.equal(callback.headers.get('location'), `${proxy.url}/smart_proxy/r1/-/caf%C3%A9/%E2%82%AC?q=%C3%BC`);
    await callback.text();
  });

  it('keeps at most four sign-ins pending in one browser, the newest, and the newest completes', async () => {
    const jar = new CookieJar();
    const txNames = (): string[] => jar.names(proxy.url).filter((n) => n.includes('_tx_'));
    for (let i = 0; i < 10; i++) {
      const res = await go(jar, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(`${TARGET}&try=${i}`)}`);
      assert.equal(res.status, 303);
      await res.text();
      assert.ok(txNames().length <= 4, `after ${i + 1} sign-ins: ${txNames().length} pending`);
      for (const c of res.headers.getSetCookie()) assert.match(c, /Path=\/_smart_proxy\/auth\//);
    }
    assert.equal(txNames().length, 4);
    // The browser completes the sign-in it started last.
    const trip = await tripToCallback(proxy.url, `${TARGET}&try=last`, 'alice', 'alice-pw', jar);
    assert.ok(txNames().length <= 4);
    const callback = await go(jar, trip.callbackUrl, { headers: BROWSER });
    assert.equal(callback.status, 303);
    assert.equal(callback.headers.get('location'), `${proxy.url}${TARGET}&try=last`);
    await callback.text();
    // Hundreds of junk ones (no sign-in of ours set them): a bounded answer, and the sign-in goes on.
    const junk = Array.from({ length: 300 }, (_, i) => `smart_proxy_session_tx_junk${i}=x`).join('; ');
    const flooded = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`, { headers: { cookie: junk }, redirect: 'manual' });
    assert.equal(flooded.status, 303);
    assert.equal(flooded.headers.getSetCookie().length, 33, '32 deletions and the new transaction');
    await flooded.text();
  });

  it('answers a malformed callback path 404, never a 500', async () => {
    const before = proxy.logs.filter((l) => l.level === 'error').length;
    for (const path of ['%', '%zz', 'test%', '%E0%A4%A']) {
      const res = await fetch(`${proxy.url}/_smart_proxy/auth/callback/${path}?state=x&code=y`, { headers: API });
      assert.equal(res.status, 404, path);
      assert.equal((await res.json() as { code: string }).code, 'SP_ROUTE_NOT_FOUND');
    }
    assert.equal(proxy.logs.filter((l) => l.level === 'error').length, before, 'nothing logged as a failure of ours');
  });

  it('uses the session cookie that opens when a stale one of the same name comes first', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const good = jar.get(proxy.url, 'smart_proxy_session') as string;
    // What a browser sends with an older cookie of this name from a parent domain: that one first.
    const res = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, cookie: `smart_proxy_session=stale-from-elsewhere; smart_proxy_session=${good}` } });
    assert.equal(res.status, 200);
    assert.equal((await res.json() as Echo).headers['x-forwarded-user'], 'alice');
    // Only stale ones: the first one's verdict.
    const bad = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, cookie: 'smart_proxy_session=a; smart_proxy_session=b' } });
    assert.equal(bad.status, 401);
    assert.match((await bad.json() as { detail: string }).detail, /session cookie not valid/);
  });

  it('answers a browser\'s form POST without a session 401, with the way to sign in back to the form', async () => {
    const starts = proxy.provider.calls.start;
    const form = `${proxy.url}/smart_proxy/r1/-/form?id=7`;
    const res = await fetch(`${proxy.url}/smart_proxy/r1/-/submit`, {
      method: 'POST', redirect: 'manual',
      headers: { accept: 'text/html,application/xhtml+xml', 'content-type': 'application/x-www-form-urlencoded', referer: form, origin: proxy.url },
      body: 'note=kept+by+the+browser',
    });
    assert.equal(res.status, 401, 'not a redirect: a 303 would turn the POST into a GET and drop its body');
    assert.equal(res.headers.get('location'), null);
    assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer realm=/);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    const html = await res.text();
    assert.match(html, /was not sent on\. Sign in, then send it again\./);
    const href = /<a href="([^"]+)">Sign in<\/a>/.exec(html)?.[1]?.replaceAll('&amp;', '&');
    assert.equal(href, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent('/smart_proxy/r1/-/form?id=7')}`);
    // A Referer from elsewhere is not a way back.
    const foreign = await fetch(`${proxy.url}/smart_proxy/r1/-/submit`, { method: 'POST', headers: { accept: 'text/html', referer: 'https://evil.example/smart_proxy/r1/-/x' }, body: 'x' });
    assert.equal(foreign.status, 401);
    assert.match(await foreign.text(), /<a href="http:\/\/127\.0\.0\.1:\d+\/_smart_proxy\/auth\/sign-in">Sign in<\/a>/);
    // An API client's POST: the problem document and the challenge, no page.
    const api = await fetch(`${proxy.url}/smart_proxy/r1/-/submit`, { method: 'POST', headers: API, body: '{}' });
    assert.equal(api.status, 401);
    assert.match(api.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.match(api.headers.get('www-authenticate') ?? '', /^Bearer realm=/);
    assert.equal((await api.json() as { signInUrl?: string }).signInUrl, undefined);
    assert.equal(proxy.provider.calls.start, starts, 'nothing started');
  });

  it('answers the provider\'s error= (access_denied: 403), escaped, with a fresh sign-in back to the page', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    const state = new URL(trip.callbackUrl).searchParams.get('state') as string;
    const refused = new URL(`${proxy.url}/_smart_proxy/auth/callback/test`);
    refused.search = new URLSearchParams({ error: 'access_denied', error_description: '<script>alert(1)</script>', state }).toString();
    const res = await go(trip.jar, refused.href, { headers: BROWSER });
    assert.equal(res.status, 403);
    const html = await res.text();
    assert.match(html, /refused the sign-in \(access_denied: &lt;script&gt;alert\(1\)&lt;\/script&gt;\)/);
    assert.doesNotMatch(html, /<script>/);
    const href = /<a href="([^"]+)">Sign in<\/a>/.exec(html)?.[1];
    assert.equal(href, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
    assert.equal(trip.jar.get(proxy.url, 'smart_proxy_session'), undefined);
    // The same for an API client, as a member of the problem document; a forged state names no page.
    const forged = new URL(refused);
    forged.searchParams.set('state', 'forged');
    const api = await go(new CookieJar(), forged.href, { headers: API });
    assert.equal(api.status, 400);
    const body = await api.json() as { detail: string; signInUrl: string };
    assert.match(body.detail, /not started in this browser/);
    assert.equal(body.signInUrl, `${proxy.url}/_smart_proxy/auth/sign-in`);
  });
});

/** Real timers, a `now()` the test moves forward. */
class OffsetClock implements Clock {
  offsetMs = 0;
  now(): number {
    return Date.now() + this.offsetMs;
  }
  setTimeout(fn: () => void, ms: number): ReturnType<Clock['setTimeout']> {
    return systemClock.setTimeout(fn, ms);
  }
}

for (const variant of [{ name: 'groups in the ID token', userinfo: false }, { name: 'groups at userinfo only', userinfo: true }]) {
  describe(`oidc: a group removed at the provider (${variant.name})`, () => {
    let issuer: EmbeddedIssuer;
    let proxy: OidcApp;
    const clock = new OffsetClock();
    const carol: IssuerUser & { groups: string[] } = { login: 'carol', password: 'carol-pw', groups: ['g1', 'staff'] };
    before(async () => {
      const port = await freePort();
      issuer = await startIssuer(port, { users: [carol], accessTokenTtlS: 600, claimsAtUserinfoOnly: variant.userinfo });
      proxy = await startOidcApp({
        port, issuerUrl: issuer.url, clock,
        identity: variant.userinfo ? { userinfo: true, userClaim: 'preferred_username' } : {},
        sessions: { idleTimeoutMs: 60 * MIN, absoluteTimeoutMs: 120 * MIN, refreshBeforeMs: MIN },
      });
    });
    after(async () => {
      await proxy?.close();
      await issuer?.close();
    });

    it('keeps working until the access token is refreshed, then stops (and the groups it still holds stay)', async () => {
      const { jar } = await signIn(proxy.url, TARGET, 'carol', 'carol-pw');
      const first = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
      assert.equal(first.status, 200);
      assert.equal((await first.json() as Echo).headers['x-forwarded-groups'], 'g1,staff');
      // A refresh with nothing changed keeps every group (userinfo-only groups included).
      clock.offsetMs = 9.5 * MIN;
      const refreshes = issuer.refreshes;
      const same = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
      assert.equal(issuer.refreshes, refreshes + 1);
      assert.equal(same.status, 200);
      assert.equal((await same.json() as Echo).headers['x-forwarded-groups'], 'g1,staff');
      carol.groups = ['staff'];
      // Until the next refresh the session still holds g1.
      clock.offsetMs = 12 * MIN;
      const still = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
      assert.equal(still.status, 200);
      await still.text();
      // Within refreshBeforeMs of the new token's expiry: refreshed, and g1 is gone.
      clock.offsetMs = 19.5 * MIN;
      const gone = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
      assert.equal(issuer.refreshes, refreshes + 2);
      assert.equal(gone.status, 404, 'the resource is hidden from who no longer holds its group');
      await gone.text();
    });
  });
}

describe('oidc sign-in: the callback', () => {
  it('answers HEAD with 405 without spending the sign-in: the GET that follows completes it', async () => {
    const port = await freePort();
    const issuer = await startIssuer(port);
    const proxy = await startOidcApp({ port, issuerUrl: issuer.url });
    try {
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      const head = await go(trip.jar, trip.callbackUrl, { method: 'HEAD', headers: BROWSER });
      await head.text();
      assert.equal(head.status, 405);
      assert.equal(head.headers.get('allow'), 'GET');
      const callback = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
      await callback.text();
      assert.equal(callback.status, 303);
      assert.equal(callback.headers.get('location'), `${proxy.url}${TARGET}`);
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});

describe('oidc sign-in: the ID token\'s signature', () => {
  it('is checked against the provider\'s keys: a token they do not verify signs no one in, and says why', async () => {
    const port = await freePort();
    const issuer = await startIssuer(port, { servesForeignKeys: true });
    const proxy = await startOidcApp({ port, issuerUrl: issuer.url });
    try {
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      const callback = await go(trip.jar, trip.callbackUrl, { headers: API });
      // Read whatever came, so that a failing assertion leaves no connection open.
      const body = await callback.text();
      assert.equal(callback.status, 400, body);
      const problem = JSON.parse(body) as { code: string; detail: string };
      assert.equal(problem.code, 'SP_ACCESS_SIGN_IN_FAILED');
      assert.match(problem.detail, /signature/);
      assert.ok(!trip.jar.names(proxy.url).some((n) => !n.includes('_tx_')), 'no session cookie was set');
      assert.equal(proxy.provider.calls.start, 0, 'nothing was woken');
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});
