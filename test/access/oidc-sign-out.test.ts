/**
 * Sign-out and logout CSRF: a GET never signs anyone out (it answers a page with a button),
 * and a POST must come from this site: `Sec-Fetch-Site: same-origin`, an `Origin` of this
 * site, or the page's token sealed for this session.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { BROWSER, CookieJar, freePort, go, signIn, startIssuer, startOidcApp, type OidcApp } from './oidc-helpers.ts';

const TARGET = '/smart_proxy/r1/-/page';
const API = { accept: 'application/json' };
const FORM = { ...BROWSER, 'content-type': 'application/x-www-form-urlencoded' };

describe('oidc sign-out', () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  let signOut: string;
  before(async () => {
    const port = await freePort();
    // No end_session at the provider: a sign-out ends at the proxy's own signed-out page.
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, identity: { endSession: false } });
    signOut = `${proxy.url}/_smart_proxy/auth/sign-out`;
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  const signedIn = async (jar: CookieJar): Promise<boolean> => {
    const r = await go(jar, `${proxy.url}${TARGET}`, { headers: API });
    await r.text();
    return r.status === 200;
  };

  /** The token of the sign-out page's form, as a browser would submit it. */
  const pageToken = async (jar: CookieJar, query = ''): Promise<{ token: string; action: string }> => {
    const page = await go(jar, `${signOut}${query}`, { headers: BROWSER });
    assert.equal(page.status, 200);
    const html = await page.text();
    const token = /name="token" value="([^"]+)"/.exec(html)?.[1];
    const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
    assert.ok(token !== undefined && action !== undefined, html);
    return { token, action: action.replaceAll('&amp;', '&') };
  };

  it('answers a GET with a page and a button, and signs no one out', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    assert.ok(await signedIn(jar));
    const page = await go(jar, signOut, { headers: BROWSER });
    assert.equal(page.status, 200);
    assert.equal(page.headers.get('set-cookie'), null);
    assert.match(await page.text(), /<form method="post" action="\/_smart_proxy\/auth\/sign-out"><input type="hidden" name="token"/);
    assert.ok(await signedIn(jar), 'still signed in after the GET');
    // Without a session the page says so.
    const none = await go(new CookieJar(), signOut, { headers: BROWSER });
    assert.equal(none.status, 200);
    assert.match(await none.text(), /not signed in/);
  });

  it('refuses a POST from another site, by Sec-Fetch-Site or by Origin', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    for (const headers of [
      { ...FORM, 'sec-fetch-site': 'cross-site', origin: 'https://evil.example' },
      { ...FORM, 'sec-fetch-site': 'same-site', origin: proxy.url },
      { ...FORM, origin: 'https://evil.example' },
      { ...FORM, origin: `${proxy.url}.evil.example` },
    ]) {
      const res = await go(jar, signOut, { method: 'POST', headers: { ...headers, accept: 'application/json' }, body: '' });
      assert.equal(res.status, 403, JSON.stringify(headers));
      const body = await res.json() as { code: string; detail: string };
      assert.equal(body.code, 'SP_ACCESS_DENIED');
      assert.match(body.detail, /Sign-out refused/);
      assert.equal(res.headers.get('set-cookie'), null);
    }
    // A token from the page does not help a request that says it comes from elsewhere.
    const { token } = await pageToken(jar);
    const forged = await go(jar, signOut, { method: 'POST', headers: { ...FORM, origin: 'https://evil.example' }, body: new URLSearchParams({ token }).toString() });
    assert.equal(forged.status, 403);
    await forged.text();
    assert.ok(await signedIn(jar), 'still signed in');
  });

  it('refuses a POST with neither Origin nor token, and one with another session\'s token', async () => {
    const alice = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const other = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const bare = await go(alice.jar, signOut, { method: 'POST', headers: FORM, body: '' });
    assert.equal(bare.status, 403);
    await bare.text();
    const { token } = await pageToken(other.jar);
    const stolen = await go(alice.jar, signOut, { method: 'POST', headers: FORM, body: new URLSearchParams({ token }).toString() });
    assert.equal(stolen.status, 403, 'a token is good for its own session only');
    await stolen.text();
    const nullOrigin = await go(alice.jar, signOut, { method: 'POST', headers: { ...FORM, origin: 'null' }, body: 'token=garbage' });
    assert.equal(nullOrigin.status, 403);
    await nullOrigin.text();
    assert.ok(await signedIn(alice.jar));
  });

  it('signs out a POST with the page\'s token (no Origin), and keeps the return path', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const { token, action } = await pageToken(jar, `?rd=${encodeURIComponent('/smart_proxy/r1/-/back?x=1')}`);
    const out = await go(jar, `${proxy.url}${action}`, { method: 'POST', headers: FORM, body: new URLSearchParams({ token }).toString() });
    assert.equal(out.status, 303);
    assert.equal(out.headers.get('location'), `${proxy.url}/_smart_proxy/auth/signed-out?rd=${encodeURIComponent('/smart_proxy/r1/-/back?x=1')}`);
    assert.equal(jar.get(proxy.url, 'smart_proxy_session'), undefined, 'the cookie is deleted');
    assert.equal(await signedIn(jar), false);
  });

  it('signs out a same-origin POST (Sec-Fetch-Site, or an Origin naming the Host addressed)', async () => {
    const a = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const bySite = await go(a.jar, signOut, { method: 'POST', headers: { ...FORM, 'sec-fetch-site': 'same-origin', origin: proxy.url } });
    assert.equal(bySite.status, 303);
    assert.equal(await signedIn(a.jar), false);
    const b = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const byOrigin = await go(b.jar, signOut, { method: 'POST', headers: { ...FORM, origin: proxy.url } });
    assert.equal(byOrigin.status, 303);
    assert.equal(await signedIn(b.jar), false);
  });

  it('bounds the form and refuses other methods with Allow', async () => {
    const { jar } = await signIn(proxy.url, TARGET, 'alice', 'alice-pw');
    const big = await go(jar, signOut, { method: 'POST', headers: { ...FORM, origin: proxy.url, accept: 'application/json' }, body: `token=${'a'.repeat(20_000)}` });
    assert.equal(big.status, 413);
    await big.text();
    const put = await fetch(signOut, { method: 'PUT', headers: API });
    assert.equal(put.status, 405);
    assert.equal(put.headers.get('allow'), 'GET, HEAD, POST');
    await put.text();
    assert.ok(await signedIn(jar));
  });
});
