/**
 * OIDC sign-in over raw HTTP against a real OpenID provider (oidc-provider): the redirect of
 * a browser and the 401 of an API client, the whole flow back to the exact URL, the backend's
 * view, tampered cookies, replayed state, a wrong nonce, expired sessions and tokens on an
 * injected clock, refresh, an issuer that is down, open redirects, sign-out, key rotation,
 * and two replicas sharing sessions.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Echo } from '../helpers/echo-server.ts';
import { BROWSER, CookieJar, freePort, go, KEY_A, signIn, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';

const TARGET = '/smart_proxy/r1/-/some/page?x=1&y=%2Fz';

describe('oidc sign-in (raw HTTP)', () => {
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

  it('sends a browser navigation to sign in, and an API client a 401 with a challenge', async () => {
    const browser = await fetch(`${proxy.url}${TARGET}`, { headers: BROWSER, redirect: 'manual' });
    assert.equal(browser.status, 302);
    const loc = new URL(browser.headers.get('location') as string);
    assert.equal(loc.origin, proxy.url);
    assert.equal(loc.pathname, '/_smart_proxy/auth/sign-in');
    assert.equal(loc.searchParams.get('rd'), TARGET);
    await browser.text();
    const api = await fetch(`${proxy.url}${TARGET}`, { headers: { accept: 'application/json' }, redirect: 'manual' });
    assert.equal(api.status, 401);
    assert.equal(api.headers.get('location'), null);
    assert.match(api.headers.get('www-authenticate') ?? '', /^Bearer realm=/);
    await api.text();
    assert.equal(proxy.provider.calls.start, 0, 'nothing started for an unauthenticated request');
  });

  it('signs in, starts the resource at the callback, and returns to the exact URL', async () => {
    const { jar, callback } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    assert.equal(callback.status, 303);
    assert.equal(callback.headers.get('location'), `${proxy.url}${TARGET}`);
    const setCookie = callback.headers.getSetCookie().find((c) => c.startsWith('smart_proxy_session='));
    assert.ok(setCookie !== undefined);
    assert.match(setCookie, /HttpOnly/);
    assert.match(setCookie, /SameSite=Lax/);
    assert.doesNotMatch(setCookie, /Secure/, 'plain HTTP: no Secure');
    assert.ok(setCookie.length < 4096, `cookie of ${setCookie.length} bytes`);
    assert.equal(proxy.provider.calls.start, 1, 'the start began at the callback, before the browser came back');
    // The browser comes back: the waiting page (or the resource, if it is already up).
    const back = await go(jar, `${proxy.url}${TARGET}`, { headers: BROWSER });
    assert.ok(back.status === 503 || back.status === 200, `status ${back.status}`);
    await back.text();
    // An API-style request with the session cookie is held until ready and forwarded.
    const res = await go(jar, `${proxy.url}${TARGET}`, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 200);
    const echo = await res.json() as Echo;
    assert.equal(echo.url, '/some/page?x=1&y=%2Fz');
    assert.equal(echo.headers['x-forwarded-user'], 'alice');
    assert.equal(echo.headers['x-forwarded-groups'], 'g1,staff');
    assert.equal(echo.headers.cookie, undefined, 'the session cookie never reaches the backend');
    assert.equal(echo.headers['x-forwarded-access-token'], undefined, 'no access token unless the resource asks');
  });

  it('passes the access token to a resource configured for it, and keeps other cookies', async () => {
    const { jar } = await signIn(proxy.url, '/smart_proxy/tok/-/', 'alice', 'alice-pw');
    jar.set(proxy.url, 'app_cookie', 'kept');
    const res = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 200);
    const echo = await res.json() as Echo;
    assert.ok(typeof echo.headers['x-forwarded-access-token'] === 'string' && echo.headers['x-forwarded-access-token'].length > 10);
    assert.equal(echo.headers.cookie, 'app_cookie=kept');
  });

  it('refuses a replayed callback (state is single use)', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    const first = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
    assert.equal(first.status, 303);
    // The attacker replays the same answer with the same transaction cookie.
    const replayJar = new CookieJar();
    replayJar.set(proxy.url, trip.txCookie[0], trip.txCookie[1]);
    const replay = await go(replayJar, trip.callbackUrl, { headers: { accept: 'application/json' } });
    assert.equal(replay.status, 400);
    const body = await replay.json() as { code: string; detail: string };
    assert.equal(body.code, 'SP_ACCESS_SIGN_IN_FAILED');
    assert.match(body.detail, /already been used/);
    assert.equal(replayJar.get(proxy.url, 'smart_proxy_session'), undefined);
  });

  it('refuses a callback without the browser\'s transaction cookie (login CSRF)', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    const res = await go(new CookieJar(), trip.callbackUrl, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 400);
    assert.equal((await res.json() as { code: string }).code, 'SP_ACCESS_SIGN_IN_FAILED');
  });

  it('refuses a tampered session cookie: browser back to sign-in, API 401', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const value = jar.get(proxy.url, 'smart_proxy_session') as string;
    const i = Math.floor(value.length / 2);
    const tampered = value.slice(0, i) + (value[i] === 'A' ? 'B' : 'A') + value.slice(i + 1);
    jar.set(proxy.url, 'smart_proxy_session', tampered);
    const browser = await go(jar, `${proxy.url}${TARGET}`, { headers: BROWSER });
    assert.equal(browser.status, 302);
    assert.match(browser.headers.get('location') ?? '', /\/_smart_proxy\/auth\/sign-in\?rd=/);
    await browser.text();
    const api = await go(jar, `${proxy.url}${TARGET}`, { headers: { accept: 'application/json' } });
    assert.equal(api.status, 401);
    assert.match((await api.json() as { detail: string }).detail, /session cookie not valid/);
  });

  it('accepts only same-origin return paths (no open redirect)', async () => {
    for (const rd of ['//evil.example/x', 'https://evil.example/', '/\\evil.example', '/\tevil', 'javascript:alert(1)', '']) {
      const res = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(rd)}`, { headers: { accept: 'application/json' }, redirect: 'manual' });
      assert.equal(res.status, 400, `rd=${JSON.stringify(rd)}`);
      assert.equal(res.headers.get('location'), null);
      await res.text();
    }
    // A same-origin path goes to the provider.
    const ok = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent('/smart_proxy/r1/-/a?b=c')}`, { redirect: 'manual' });
    assert.equal(ok.status, 303);
    assert.ok((ok.headers.get('location') ?? '').startsWith(`${issuer.url}/auth?`));
    await ok.text();
  });

  it('never returns to another origin, whatever the encoding of the return path', async () => {
    // Refused outright: not a path, or one a browser reads as another host.
    for (const rd of ['%2F%2Fevil.example', '\\\\evil.example', '/\\/evil.example', 'https:evil.example', 'JaVaScRiPt:alert(1)',
      'data:text/html,x', '/\u0000/evil.example', '/\r\nSet-Cookie: a=b', ' //evil.example', 'http://127.0.0.1.evil.example/']) {
      const res = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(rd)}`, { headers: { accept: 'application/json' }, redirect: 'manual' });
      assert.equal(res.status, 400, `rd=${JSON.stringify(rd)}`);
      assert.equal(res.headers.get('location'), null);
      await res.text();
    }
    // Paths that only look odd stay paths of this origin, to the end of the sign-in.
    for (const rd of ['/%2F%2Fevil.example', '/%5Cevil.example', '/..//evil.example', '/./%2e%2e//evil.example', '/@evil.example']) {
      const { callback } = await signIn(proxy.url, `/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(rd)}`, 'alice', 'alice-pw');
      assert.equal(callback.status, 303, rd);
      const back = new URL(callback.headers.get('location') as string);
      assert.equal(back.origin, proxy.url, `rd=${rd} returned to ${back.href}`);
    }
  });

  it('accepts the issuer\'s JWTs as bearer tokens from API clients', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    // The ID token stands for a JWT from this issuer with the client as audience.
    const tokenRes = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: { accept: 'application/json' } });
    await tokenRes.text();
    const idToken = await idTokenOf(proxy, jar);
    const res = await fetch(`${proxy.url}/smart_proxy/r1/-/api`, { headers: { authorization: `Bearer ${idToken}`, accept: 'application/json' } });
    assert.equal(res.status, 200);
    assert.equal((await res.json() as Echo).headers['x-forwarded-user'], 'alice');
    const forged = `${idToken.slice(0, -4)}AAAA`;
    const bad = await fetch(`${proxy.url}/smart_proxy/r1/-/api`, { headers: { authorization: `Bearer ${forged}`, accept: 'text/html' }, redirect: 'manual' });
    assert.equal(bad.status, 401, 'a refused bearer token is a 401 even from a browser');
    assert.match(bad.headers.get('www-authenticate') ?? '', /invalid_token/);
    await bad.text();
  });

  it('a user without the group is refused after signing in (404: no existence revealed)', async () => {
    const { jar, callback } = await signIn(proxy.url, TARGET, 'bob', 'bob-pw');
    assert.equal(callback.status, 303);
    const res = await go(jar, `${proxy.url}${TARGET}`, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 404, 'a resource bob may not see answers like one that does not exist');
    await res.text();
  });

  it('signs out locally and at the provider (RP-initiated)', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    // As a browser posts the sign-out page's form: Origin names this site.
    const out = await go(jar, `${proxy.url}/_smart_proxy/auth/sign-out`, { method: 'POST', headers: { ...BROWSER, origin: proxy.url } });
    assert.equal(out.status, 303);
    const loc = new URL(out.headers.get('location') as string);
    assert.equal(loc.origin, issuer.url);
    assert.ok(loc.searchParams.get('id_token_hint'));
    assert.equal(loc.searchParams.get('post_logout_redirect_uri'), `${proxy.url}/_smart_proxy/auth/signed-out`);
    assert.equal(jar.get(proxy.url, 'smart_proxy_session'), undefined, 'the cookie is deleted');
    const after = await go(jar, `${proxy.url}${TARGET}`, { headers: BROWSER });
    assert.equal(after.status, 302);
    await after.text();
  });

  it('answers unknown auth routes 404 and wrong methods 405', async () => {
    const a = await fetch(`${proxy.url}/_smart_proxy/auth/nope`, { headers: { accept: 'application/json' } });
    assert.equal(a.status, 404);
    await a.text();
    const b = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in`, { method: 'DELETE' });
    assert.equal(b.status, 405);
    assert.equal(b.headers.get('allow'), 'GET, HEAD');
    await b.text();
  });
});

/** The ID token of the jar's session, read the way a test may: by opening the cookie with the key. */
async function idTokenOf(proxy: OidcApp, jar: CookieJar): Promise<string> {
  const { Sealer } = await import('../../src/access/oidc/sealer.ts');
  const s = await new Sealer([KEY_A]).open('session', jar.get(proxy.url, 'smart_proxy_session') as string);
  return s?.idt as string;
}
