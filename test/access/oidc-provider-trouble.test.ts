/**
 * OIDC with a provider in trouble, over raw HTTP: a token endpoint that is slow, answers
 * garbage or a 500 (at the callback: a bounded 503 with a way to try again; at a refresh: the
 * session goes on), a provider that rotated its signing key, and a provider that is down when
 * the proxy starts (it starts anyway, says so in its log at once, answers sign-ins 503, and
 * signs people in once the provider is back).
 */
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import type { Harness } from '../helpers/proxy-harness.ts';
import { BROWSER, CookieJar, freePort, go, KEY_A, signIn, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/page?q=1';
const API = { accept: 'application/json' };
const MIN = 60_000;
/** One call to the provider may take this long (discoveryTimeoutMs). */
const CALL_TIMEOUT_MS = 1_000;

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

type Fault = 'none' | 'slow' | 'garbage' | 'html-500' | 'json-500';

/** The token endpoint's answer under each fault (the provider answers everything else). */
function tokenFault(fault: () => Fault) {
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (req.url?.startsWith('/token') !== true) return false;
    switch (fault()) {
      case 'none': return false;
      // Answers long after the proxy stopped waiting (the issuer's close ends it).
      case 'slow': setTimeout(() => res.writeHead(500).end(), 30_000).unref(); return true;
      case 'garbage': res.writeHead(200, { 'content-type': 'application/json' }).end('{"access_token": "a'); return true;
      case 'html-500': res.writeHead(500, { 'content-type': 'text/html' }).end('<h1>Internal Server Error</h1>'); return true;
      case 'json-500': res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"server_error"}'); return true;
    }
  };
}

describe('oidc with a token endpoint in trouble', () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  let fault: Fault = 'none';
  const clock = new OffsetClock();
  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port, { accessTokenTtlS: 600, intercept: tokenFault(() => fault) });
    proxy = await startOidcApp({
      port, issuerUrl: issuer.url, clock, identity: { discoveryTimeoutMs: CALL_TIMEOUT_MS },
      sessions: { idleTimeoutMs: 60 * MIN, absoluteTimeoutMs: 120 * MIN, refreshBeforeMs: MIN },
    });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  it('answers the callback 503 within the bound, with a way to sign in again, for each fault', async () => {
    for (const f of ['slow', 'garbage', 'html-500', 'json-500'] as const) {
      fault = 'none';
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      fault = f;
      const started = Date.now();
      const res = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
      const took = Date.now() - started;
      assert.equal(res.status, 503, f);
      assert.ok(res.headers.get('retry-after'), f);
      assert.ok(took < CALL_TIMEOUT_MS + 2_000, `${f}: answered after ${took} ms`);
      const html = await res.text();
      assert.match(html, /cannot be reached right now/, f);
      assert.equal(/<a href="([^"]+)">Sign in<\/a>/.exec(html)?.[1], `${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`, f);
      assert.equal(trip.jar.get(proxy.url, 'smart_proxy_session'), undefined, f);
    }
    fault = 'none';
    const { callback } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    assert.equal(callback.status, 303, 'signs in once the provider answers again');
  });

  it('keeps the session when a refresh meets a slow or garbled token endpoint, and refreshes once it answers', async () => {
    fault = 'none';
    const { jar } = await signIn(proxy.url, '/smart_proxy/tok/-/', 'alice', 'alice-pw');
    const ready = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
    assert.equal(ready.status, 200);
    await ready.text();
    const refreshes = issuer.refreshes;
    // Within refreshBeforeMs of the access token's expiry (600 s): each request would refresh.
    let offset = 9.5 * MIN;
    for (const f of ['slow', 'garbage', 'html-500'] as const) {
      fault = f;
      clock.offsetMs = offset;
      const res = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
      assert.equal(res.status, 200, `${f}: the session goes on`);
      await res.text();
      // Past the back-off after a failed refresh (30 s), so the next request tries again.
      offset += 0.6 * MIN;
    }
    assert.equal(proxy.logs.filter((l) => l.msg?.includes('refresh failed (provider unreachable)')).length, 3);
    fault = 'none';
    clock.offsetMs = offset;
    const res = await go(jar, `${proxy.url}/smart_proxy/tok/-/`, { headers: API });
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(issuer.refreshes, refreshes + 1, 'refreshed once the provider answered');
    clock.offsetMs = 0;
  });
});

describe('oidc with a provider slow to answer its discovery document or its keys', () => {
  it('answers 503 within the bound at sign-in and at the callback, and signs in once it answers', async () => {
    const port = await freePort();
    let slowPath: string | undefined = '/.well-known/openid-configuration';
    const issuer = await startIssuer(port, {
      intercept: (req, res) => {
        if (slowPath === undefined || req.url?.startsWith(slowPath) !== true) return false;
        setTimeout(() => res.writeHead(500).end(), 30_000).unref();
        return true;
      },
    });
    const proxy = await startOidcApp({ port, issuerUrl: issuer.url, identity: { discoveryTimeoutMs: CALL_TIMEOUT_MS } });
    const bounded = async (what: string, res: Promise<Response>): Promise<Response> => {
      const started = Date.now();
      const r = await res;
      assert.ok(Date.now() - started < CALL_TIMEOUT_MS + 2_000, `${what}: answered after ${Date.now() - started} ms`);
      return r;
    };
    try {
      const signInPage = await bounded('sign-in', go(new CookieJar(), `${proxy.url}/_smart_proxy/auth/sign-in?rd=%2F`, { headers: BROWSER }));
      assert.equal(signInPage.status, 503);
      assert.match(await signInPage.text(), /cannot be reached right now/);
      slowPath = '/jwks';
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      const callback = await bounded('callback', go(trip.jar, trip.callbackUrl, { headers: BROWSER }));
      assert.equal(callback.status, 503);
      assert.match(await callback.text(), /cannot be reached right now/);
      slowPath = undefined;
      const { callback: ok } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
      assert.equal(ok.status, 303);
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});

describe('oidc: the provider rotates its signing key', () => {
  it('signs the next person in with the new key, and takes its bearer tokens', async () => {
    const port = await freePort();
    const issuerPort = await freePort();
    let issuer = await startIssuer(port, { port: issuerPort });
    const proxy = await startOidcApp({ port, issuerUrl: issuer.url });
    try {
      const first = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
      assert.equal(first.callback.status, 303);
      // The provider comes back with a new key (a new kid), seconds after the proxy read its key set.
      await issuer.close();
      issuer = await startIssuer(port, { port: issuerPort });
      const second = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
      assert.equal(second.callback.status, 303, await second.callback.text());
      const { Sealer } = await import('../../src/access/oidc/sealer.ts');
      const idToken = (await new Sealer([KEY_A]).open('session', second.jar.get(proxy.url, 'smart_proxy_session') as string))?.idt as string;
      const bearer = await fetch(`${proxy.url}/smart_proxy/r1/-/api`, { headers: { ...API, authorization: `Bearer ${idToken}` } });
      assert.equal(bearer.status, 200);
      await bearer.text();
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});

describe('oidc with the provider down when the proxy starts', () => {
  it('starts, logs it at once, answers sign-in 503, and signs in once the provider is up', async () => {
    const port = await freePort();
    const issuerPort = await freePort();
    const logs: Harness['logs'] = [];
    const discoveryFailed = new Promise<void>((resolve) => {
      logs.push = (...items) => {
        if (items.some((l) => l.level === 'warn' && l.msg?.includes('discovery failed') === true)) resolve();
        return Array.prototype.push.apply(logs, items);
      };
    });
    const proxy = await startOidcApp({ port, issuerUrl: `http://127.0.0.1:${issuerPort}`, logs });
    let issuer: EmbeddedIssuer | undefined;
    try {
      // Before any person tries to sign in: the operator reads it in the start-up log.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([discoveryFailed, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('no "discovery failed" log after start')), 5_000); })]);
      clearTimeout(timer);
      const line = logs.find((l) => l.msg?.includes('discovery failed'));
      assert.match(JSON.stringify(line), new RegExp(`127\\.0\\.0\\.1:${issuerPort}`));
      assert.match(line?.msg ?? '', /503/);
      const page = await go(new CookieJar(), `${proxy.url}/_smart_proxy/auth/sign-in?rd=%2F`, { headers: BROWSER });
      assert.equal(page.status, 503);
      assert.match(await page.text(), /cannot be reached right now/);
      // The provider comes up: the next sign-in discovers it (discoveryRetryMs: 0 here).
      issuer = await startIssuer(port, { port: issuerPort });
      const { callback } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
      assert.equal(callback.status, 303);
      assert.ok(logs.some((l) => l.msg?.includes('provider discovered')));
    } finally {
      await proxy.close();
      await issuer?.close();
    }
  });
});
