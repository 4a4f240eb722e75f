/**
 * OIDC sign-in in Chromium at its edges, as a person and a page's scripts meet them: a
 * page's fetch() and XMLHttpRequest without a session (a 401 they can read, never a redirect
 * towards the provider's origin), two tabs signing in at once, the provider refusing the
 * sign-in (access_denied), and a person who came back from the provider too late.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { freePort, startIssuer, startOidcApp, type OidcApp } from '../access/oidc-helpers.ts';

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (scripts/install-system-deps.sh installs it)`;
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

async function launch(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 880, height: 720 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profileDir, { recursive: true, force: true });
    },
  };
}

/** What a page's scripts got: the status, the challenge, or the error fetch() threw. */
interface ScriptSaw { readonly status: number; readonly challenge: string | null; readonly location: string | null }

describe('OIDC sign-in in Chromium: its edges', { skip, timeout: 120_000 }, () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  const clock = new OffsetClock();

  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, clock, resources: { vm: { access: { anyOf: ['g1'] } } } });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  const signInAtProvider = async (page: Page): Promise<void> => {
    await page.waitForURL((u) => u.href.startsWith(`${issuer.url}/interaction/`));
    await page.fill('input[name=login]', 'alice');
    await page.fill('input[name=password]', 'alice-pw');
    await page.click('button[type=submit]');
  };
  const bodyText = (page: Page): Promise<string> => page.evaluate(() => (globalThis as unknown as { document: { body: { innerText: string } } }).document.body.innerText);
  const onResource = (page: Page): Promise<unknown> => page.waitForFunction(() => (globalThis as unknown as { document: { body: { innerText: string } } }).document.body.innerText.includes('x-forwarded-user'), undefined, { timeout: 30_000 });

  /** fetch() (accepting HTML, and not) and an XMLHttpRequest marked as such, from a page of the proxy's origin. */
  const scriptsSee = (page: Page, url: string): Promise<Record<string, ScriptSaw | string>> => page.evaluate(async (target) => {
    const out: Record<string, ScriptSaw | string> = {};
    const saw = (r: Response): ScriptSaw => ({ status: r.status, challenge: r.headers.get('www-authenticate'), location: r.url });
    for (const [name, accept] of [['fetch', '*/*'], ['fetch accepting HTML', 'text/html,application/xhtml+xml']] as const) {
      try {
        out[name] = saw(await fetch(target, { headers: { accept } }));
      } catch (err) {
        out[name] = String(err);
      }
    }
    out.xhr = await new Promise<ScriptSaw | string>((resolve) => {
      const X = (globalThis as unknown as { XMLHttpRequest: new () => { open(m: string, u: string): void; setRequestHeader(n: string, v: string): void; send(): void; onload: () => void; onerror: () => void; status: number; responseURL: string; getResponseHeader(n: string): string | null } }).XMLHttpRequest;
      const x = new X();
      x.open('GET', target);
      x.setRequestHeader('accept', 'text/html, */*; q=0.01');
      x.setRequestHeader('x-requested-with', 'XMLHttpRequest');
      x.onload = () => resolve({ status: x.status, challenge: x.getResponseHeader('www-authenticate'), location: x.responseURL });
      x.onerror = () => resolve('network error');
      x.send();
    });
    return out;
  }, url);

  it('answers a page\'s fetch() and XMLHttpRequest without a session 401, readable, with a challenge; with one, the resource', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      // A page of the proxy's own origin stands for the resource's page whose session ended.
      await page.goto(`${proxy.url}/_smart_proxy/auth/signed-out`);
      const target = `${proxy.url}/smart_proxy/vm/-/api/data?x=1`;
      const before = await scriptsSee(page, target);
      for (const [name, got] of Object.entries(before)) {
        assert.deepEqual(got, { status: 401, challenge: 'Bearer realm="smart-proxy"', location: target }, name);
      }
      // The person signs in (the page's link), and the same scripts get the resource.
      await page.goto(`${proxy.url}/_smart_proxy/auth/sign-in?rd=${encodeURIComponent('/smart_proxy/vm/-/')}`);
      await signInAtProvider(page);
      await page.waitForURL(`${proxy.url}/smart_proxy/vm/-/`);
      await onResource(page);
      const signedIn = await scriptsSee(page, target);
      for (const [name, got] of Object.entries(signedIn)) assert.equal((got as ScriptSaw).status, 200, name);
    } finally {
      await browser.close();
    }
  });

  it('signs in two tabs at once: each lands on its own page', async () => {
    const browser = await launch();
    try {
      const [one, two] = [await browser.context.newPage(), await browser.context.newPage()];
      const a = `${proxy.url}/smart_proxy/vm/-/tab-one?n=1`;
      const b = `${proxy.url}/smart_proxy/vm/-/tab-two?n=2`;
      await one.goto(a);
      await two.goto(b);
      // Both wait at the provider's form; the first completes, then the second.
      await signInAtProvider(one);
      await one.waitForURL(a);
      await signInAtProvider(two);
      await two.waitForURL(b);
      await Promise.all([onResource(one), onResource(two)]);
      assert.equal((JSON.parse(await one.textContent('body') ?? '{}') as { url: string }).url, '/tab-one?n=1');
      assert.equal((JSON.parse(await two.textContent('body') ?? '{}') as { url: string }).url, '/tab-two?n=2');
    } finally {
      await browser.close();
    }
  });

  it('shows the provider\'s refusal (access_denied) as a 403 page whose link signs in again, back to the page', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      let state: string | null = null;
      page.on('request', (r) => {
        const u = new URL(r.url());
        if (u.origin === issuer.url && u.pathname === '/auth' && u.searchParams.has('state')) state = u.searchParams.get('state');
      });
      const target = `${proxy.url}/smart_proxy/vm/-/report?id=7`;
      await page.goto(target);
      await page.waitForURL((u) => u.href.startsWith(`${issuer.url}/interaction/`));
      assert.ok(state !== null);
      // The provider sends the person back refusing (as after a "Deny" button).
      const response = await page.goto(`${proxy.url}/_smart_proxy/auth/callback/test?error=access_denied&error_description=${encodeURIComponent('not for you')}&state=${encodeURIComponent(state)}`);
      assert.equal(response?.status(), 403);
      assert.match(await bodyText(page), /403 Forbidden[\s\S]*The sign-in provider refused the sign-in \(access_denied: not for you\)/);
      await page.click('a:text("Sign in")');
      await signInAtProvider(page);
      await page.waitForURL(target);
      await onResource(page);
    } finally {
      await browser.close();
    }
  });

  it('tells a person who came back from the provider too late, and its link signs in and lands on the page', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      const target = `${proxy.url}/smart_proxy/vm/-/late?y=2`;
      await page.goto(target);
      await page.waitForURL((u) => u.href.startsWith(`${issuer.url}/interaction/`));
      // The person left the provider's form open past signInTimeoutMs (10 min).
      clock.offsetMs = 11 * MIN;
      try {
        const [response] = await Promise.all([
          page.waitForResponse((r) => r.url().startsWith(`${proxy.url}/_smart_proxy/auth/callback/`)),
          signInAtProvider(page),
        ]);
        assert.equal(response.status(), 400);
        await page.waitForLoadState();
        assert.match(await bodyText(page), /the sign-in took too long/);
      } finally {
        clock.offsetMs = 0;
      }
      // Signed in at the provider already: the link comes straight back, to the page.
      await page.click('a:text("Sign in")');
      await page.waitForURL(target);
      await onResource(page);
    } finally {
      await browser.close();
    }
  });
});
