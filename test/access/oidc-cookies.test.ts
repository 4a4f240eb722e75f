/**
 * The Secure attribute of the sign-in cookies behind a front proxy that terminates TLS: a
 * browser on https, a proxy configured with an http `publicUrl` (its inner address). With
 * `secure: auto`, a trusted front proxy's `X-Forwarded-Proto: https` makes every cookie the
 * proxy sets Secure; the same header from anyone else, or with `secure: never`, does not.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { BROWSER, freePort, go, startIssuer, startOidcApp, tripToCallback, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/page?q=1';
const HTTPS = { ...BROWSER, 'x-forwarded-proto': 'https' };

/** Every cookie a response sets, by name, with its attributes. */
const setCookies = (res: Response): Map<string, string> => new Map(res.headers.getSetCookie().map((c) => [c.slice(0, c.indexOf('=')), c]));

for (const variant of [
  { name: 'trusted front proxy, secure: auto', trusted: ['127.0.0.1'], secure: 'auto', expectSecure: true },
  { name: 'untrusted peer', trusted: [], secure: 'auto', expectSecure: false },
  { name: 'trusted front proxy, secure: never', trusted: ['127.0.0.1'], secure: 'never', expectSecure: false },
] as const) {
  describe(`oidc cookies with X-Forwarded-Proto: https (${variant.name})`, () => {
    let issuer: EmbeddedIssuer;
    let proxy: OidcApp;
    before(async () => {
      const port = await freePort();
      issuer = await startIssuer(port);
      proxy = await startOidcApp({ port, issuerUrl: issuer.url, trustedProxies: [...variant.trusted], sessions: { secure: variant.secure } });
    });
    after(async () => {
      await proxy?.close();
      await issuer?.close();
    });

    it(variant.expectSecure ? 'sets every cookie Secure' : 'sets no cookie Secure', async () => {
      const check = (c: string | undefined, what: string): void => {
        assert.ok(c !== undefined, `${what} is set`);
        assert.equal(/;\s*Secure(;|$)/i.test(c), variant.expectSecure, `${what}: ${c}`);
        assert.match(c, /HttpOnly/);
        assert.match(c, /SameSite=Lax/);
      };
      const signIn = await fetch(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent(TARGET)}`, { headers: HTTPS, redirect: 'manual' });
      assert.equal(signIn.status, 303);
      check([...setCookies(signIn)].find(([n]) => n.includes('_tx_'))?.[1], 'the transaction cookie');
      const trip = await tripToCallback(proxy.url, TARGET, 'alice', 'alice-pw');
      const callback = await go(trip.jar, trip.callbackUrl, { headers: HTTPS });
      assert.equal(callback.status, 303);
      const cookies = setCookies(callback);
      check(cookies.get('smart_proxy_session'), 'the session cookie');
      check(cookies.get(trip.txCookie[0]), 'the deleted transaction cookie');
      const out = await go(trip.jar, `${proxy.url}/_smart_proxy/auth/sign-out`, { method: 'POST', headers: { ...HTTPS, origin: proxy.url } });
      assert.equal(out.status, 303);
      check(setCookies(out).get('smart_proxy_session'), 'the deleted session cookie');
    });
  });
}
