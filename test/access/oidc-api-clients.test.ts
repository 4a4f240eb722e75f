/**
 * OIDC as API clients and scripts see it, and the callback's edge cases, over raw HTTP: a 401
 * always carries a `WWW-Authenticate` challenge (RFC 9110 §11.6.1) and a JSON body, even when
 * the only identity is oidc and it takes no bearer tokens; a page's fetch() or XMLHttpRequest
 * gets that 401, never a redirect towards the provider (another origin, which it could not
 * follow); a person's navigation is still sent to sign in. The provider's `error=` answers,
 * and a sign-in that took too long.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { BROWSER, CookieJar, freePort, go, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/api/items?page=2';
const API = { accept: 'application/json' };
const MIN = 60_000;

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

describe('oidc alone, without bearer tokens: what API clients get', () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  const clock = new OffsetClock();
  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, clock, identity: { acceptBearer: false }, sessions: { signInTimeoutMs: 10 * MIN } });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  it('answers an API client 401 with a Bearer challenge and a JSON body, never a redirect', async () => {
    for (const headers of [API, {}, { accept: '*/*' }]) {
      const res = await fetch(`${proxy.url}${TARGET}`, { headers, redirect: 'manual' });
      assert.equal(res.status, 401, JSON.stringify(headers));
      assert.equal(res.headers.get('location'), null);
      assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="smart-proxy"', JSON.stringify(headers));
      assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
      assert.equal((await res.json() as { code: string }).code, 'SP_ACCESS_UNAUTHENTICATED');
    }
    // An unknown resource answers like a hidden one: the same 401, challenge included.
    const unknown = await fetch(`${proxy.url}/smart_proxy/nope/-/`, { headers: API });
    assert.equal(unknown.status, 401);
    assert.equal(unknown.headers.get('www-authenticate'), 'Bearer realm="smart-proxy"');
    await unknown.text();
  });

  it('tells a client whose bearer token was refused why (RFC 6750 §3.1)', async () => {
    const res = await fetch(`${proxy.url}${TARGET}`, { headers: { ...API, authorization: 'Bearer not-a-token-we-take' } });
    assert.equal(res.status, 401);
    assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer realm="smart-proxy", error="invalid_token", error_description="[^"]+"$/);
    assert.equal((await res.json() as { code: string }).code, 'SP_ACCESS_UNAUTHENTICATED');
  });

  it('answers a page\'s fetch() or XMLHttpRequest 401, even one that accepts HTML, and sends a navigation to sign in', async () => {
    // undici's request(), not fetch(): Node's fetch() sends Sec-Fetch-Mode: cors whatever it is told.
    const scripted = [
      { accept: 'text/html', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin' },
      { accept: 'text/html,*/*', 'sec-fetch-mode': 'same-origin', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin' },
      { accept: 'text/html', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'cross-site' },
      // Libraries (jQuery, htmx) mark their XMLHttpRequests; old browsers send no Sec-Fetch-*.
      { accept: 'text/html, */*; q=0.01', 'x-requested-with': 'XMLHttpRequest' },
    ];
    for (const headers of scripted) {
      const res = await request(`${proxy.url}${TARGET}`, { headers });
      assert.equal(res.statusCode, 401, JSON.stringify(headers));
      assert.equal(res.headers.location, undefined, JSON.stringify(headers));
      assert.match(String(res.headers['www-authenticate']), /^Bearer realm=/);
      await res.body.text();
    }
    const navigations = [
      { accept: 'text/html,application/xhtml+xml', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none' },
      { accept: 'text/html', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'iframe', 'sec-fetch-site': 'same-origin' },
      { accept: 'text/html', 'sec-fetch-mode': 'nested-navigate', 'sec-fetch-dest': 'iframe', 'sec-fetch-site': 'same-origin' },
      { accept: 'text/html,application/xhtml+xml' },
    ];
    for (const headers of navigations) {
      const res = await request(`${proxy.url}${TARGET}`, { headers });
      assert.equal(res.statusCode, 302, JSON.stringify(headers));
      assert.equal(res.headers.location, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
      await res.body.text();
    }
    // A page's script that accepts JSON gets the way to sign in and back to its page, to send the person there.
    const page = `${proxy.url}/smart_proxy/r1/-/app/view?id=3`;
    const spa = await request(`${proxy.url}${TARGET}`, { headers: { accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin', referer: page } });
    assert.equal(spa.statusCode, 401);
    assert.match(String(spa.headers['www-authenticate']), /^Bearer realm=/);
    const problem = await spa.body.json() as { code: string; signInUrl?: string };
    assert.equal(problem.code, 'SP_ACCESS_UNAUTHENTICATED');
    assert.equal(problem.signInUrl, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent('/smart_proxy/r1/-/app/view?id=3')}`);
    // Node's fetch() (Sec-Fetch-Mode: cors and nothing else) accepting HTML is taken for a navigation, as before.
    const nodeFetch = await fetch(`${proxy.url}${TARGET}`, { headers: BROWSER, redirect: 'manual' });
    assert.equal(nodeFetch.status, 302);
    await nodeFetch.text();
    assert.equal(proxy.provider.calls.start, 0, 'nothing started');
  });

  it('answers the provider\'s access_denied 403 with a page that links to sign in again', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    const state = new URL(trip.callbackUrl).searchParams.get('state') as string;
    const denied = new URL(`${proxy.url}/_smart_proxy/auth/callback/test`);
    denied.search = new URLSearchParams({ error: 'access_denied', error_description: 'The user is not assigned to this application', state }).toString();
    const res = await go(trip.jar, denied.href, { headers: BROWSER });
    assert.equal(res.status, 403);
    const html = await res.text();
    assert.match(html, /<h1>403 Forbidden<\/h1>/);
    assert.match(html, /The sign-in provider refused the sign-in \(access_denied: The user is not assigned to this application\)/);
    assert.equal(/<a href="([^"]+)">Sign in<\/a>/.exec(html)?.[1], `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
    assert.equal(trip.jar.get(proxy.url, 'smart_proxy_session'), undefined);
  });

  it('answers the provider\'s temporarily_unavailable and server_error 503 with Retry-After', async () => {
    for (const error of ['temporarily_unavailable', 'server_error']) {
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      const state = new URL(trip.callbackUrl).searchParams.get('state') as string;
      const res = await go(trip.jar, `${proxy.url}/_smart_proxy/auth/callback/test?error=${error}&state=${encodeURIComponent(state)}`, { headers: API });
      assert.equal(res.status, 503, error);
      assert.ok(res.headers.get('retry-after'));
      const body = await res.json() as { code: string; detail: string; signInUrl: string };
      assert.equal(body.code, 'SP_ACCESS_UNAVAILABLE');
      assert.match(body.detail, new RegExp(error));
      assert.equal(body.signInUrl, `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
    }
  });

  it('answers a callback after the sign-in expired with a page that starts it again, back to the page', async () => {
    const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
    // The transaction cookie outlives the attempt, so that a late return is recognised as
    // late (and knows the page to go back to) rather than as a stranger's.
    const txSet = (await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=%2F`, { redirect: 'manual' })).headers.getSetCookie().find((c) => c.includes('_tx_')) ?? '';
    const maxAge = Number(/Max-Age=(\d+)/.exec(txSet)?.[1]);
    assert.ok(maxAge > 10 * 60, `the transaction cookie lives ${maxAge} s, longer than the 600 s the attempt may take`);
    clock.offsetMs = 11 * MIN;
    try {
      const res = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
      assert.equal(res.status, 400);
      const html = await res.text();
      assert.match(html, /the sign-in took too long/);
      assert.equal(/<a href="([^"]+)">Sign in<\/a>/.exec(html)?.[1], `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`);
      assert.equal(trip.jar.get(proxy.url, 'smart_proxy_session'), undefined);
    } finally {
      clock.offsetMs = 0;
    }
    // A callback with no state, or one this browser never started: a page, not a 500.
    for (const q of ['code=x', 'code=x&state=', `code=x&state=${'s'.repeat(600)}`, 'state=unknown']) {
      const res = await go(new CookieJar(), `${proxy.url}/_smart_proxy/auth/callback/test?${q}`, { headers: BROWSER });
      assert.equal(res.status, 400, q);
      assert.match(await res.text(), /Sign-in failed[\s\S]*Sign in<\/a>/);
    }
  });
});
