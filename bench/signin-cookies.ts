/**
 * Sign-in cookie bytes, counted (docs/benchmarks.md, fifth pass): the transaction cookie of a
 * sign-in for return URLs of growing length, whether the callback then succeeds in a browser
 * that drops cookies over 4096 bytes (as Chromium does), and the Cookie header after ten
 * sign-ins started in one browser. Deterministic: bytes and statuses, no timing.
 *
 *   node bench/signin-cookies.ts
 */
import { BROWSER, CookieJar, freePort, go, startIssuer, startOidcApp, tripToCallback } from '../test/access/oidc-helpers.ts';

const port = await freePort();
const issuer = await startIssuer(port);
const proxy = await startOidcApp({ port, issuerUrl: issuer.url });
/** What a browser does with a cookie over 4096 bytes (name=value): it never stores it. */
const dropOversized = (jar: CookieJar): void => {
  for (const n of jar.names(proxy.url)) if (n.length + 1 + (jar.get(proxy.url, n) ?? '').length > 4096) jar.set(proxy.url, n, '');
};
try {
  for (const q of [10, 1000, 2000, 2600, 3000, 3900]) {
    const target = `/smart_proxy/r1/-/dash?f=${'a'.repeat(q)}`;
    const jar = new CookieJar();
    const first = await go(jar, `${proxy.url}${target}`, { headers: BROWSER });
    await first.text();
    const signIn = await go(jar, first.headers.get('location') as string, { headers: BROWSER });
    await signIn.text();
    const tx = signIn.headers.getSetCookie().filter((c) => c.includes('_tx_') && !/max-age=0/i.test(c)).map((c) => (c.split(';')[0] as string).length);
    const jar2 = new CookieJar();
    const trip = await tripToCallback(proxy.url, target, 'alice', 'alice-pw', jar2);
    dropOversized(trip.jar);
    const cb = await go(trip.jar, trip.callbackUrl, { headers: { accept: 'application/json' } });
    const outcome = cb.status === 303 ? '303 (back at the page)' : `${cb.status} ${(await cb.json() as { detail: string }).detail.slice(0, 70)}`;
    console.log(`| ${target.length} | ${tx.join(',')} | ${outcome} |`);
  }
  const jar = new CookieJar();
  for (let i = 0; i < 10; i++) {
    const r = await go(jar, `${proxy.url}/smart_proxy/r1/-/x?${'b'.repeat(300)}&i=${i}`, { headers: BROWSER });
    await r.text();
    const s = await go(jar, r.headers.get('location') as string, { headers: BROWSER });
    await s.text();
  }
  console.log(`after 10 sign-ins (rd 330 chars): ${jar.names(proxy.url).filter((n) => n.includes('_tx_')).length} tx cookies, Cookie header ${jar.header(proxy.url).length} bytes`);
} finally {
  await proxy.close();
  await issuer.close();
}
