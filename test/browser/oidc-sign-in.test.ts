/**
 * Browser sign-in end to end in Chromium: a link to a sleeping resource, the provider's
 * login form (the embedded oidc-provider), back to the exact URL, the waiting page while
 * the resource boots (started at the callback), the resource itself, then sign-out at the
 * proxy and the provider, and the next visit asks to sign in again.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { EmbeddedIssuer } from '../../src/mock-idp/embedded-issuer.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { freePort, startIssuer, startOidcApp, type OidcApp } from '../access/oidc-helpers.ts';

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (scripts/install-system-deps.sh installs it)`;

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

describe('OIDC sign-in in Chromium', { skip, timeout: 120_000 }, () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;
  const mimic = new MimicProvider({ manual: true });

  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, provider: mimic, resources: { vm: { access: { anyOf: ['g1'] }, bootTimeoutMs: 60_000 } } });
  });
  after(async () => {
    await proxy?.close();
    await issuer?.close();
  });

  it('signs in, waits for the boot, lands on the resource, signs out', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      const target = `${proxy.url}/smart_proxy/vm/-/notebooks/a%20b?tab=2&x=%2F`;
      const statuses: Array<[number, string]> = [];
      page.on('response', (r) => statuses.push([r.status(), r.url()]));

      await page.goto(target);
      // The provider's login form; nothing has started yet.
      assert.ok(page.url().startsWith(`${issuer.url}/interaction/`), page.url());
      assert.equal(mimic.calls.start, 0);
      await page.fill('input[name=login]', 'alice');
      await page.fill('input[name=password]', 'wrong');
      await page.click('button[type=submit]');
      assert.match(await page.textContent('[role=alert]') ?? '', /Wrong user or password/);
      await page.fill('input[name=login]', 'alice');
      await page.fill('input[name=password]', 'alice-pw');
      await page.click('button[type=submit]');

      // Back at the exact URL, on the waiting page: the boot was started at the callback.
      await page.waitForURL(target);
      assert.equal(mimic.calls.start, 1);
      assert.ok(statuses.some(([s, u]) => s === 503 && u === target), 'the waiting page answered the first visit');
      await page.waitForSelector('#sp-main');
      // The boot completes; the page arrives at the resource by itself.
      await Promise.all([...mimic.instances.keys()].map((key) => mimic.release(key)));
      await page.waitForFunction(() => (globalThis as unknown as { document: { body: { innerText: string } } }).document.body.innerText.includes('x-forwarded-user'));
      assert.equal(page.url(), target);
      // The waiting page's live updates came through with the session cookie (its EventSource).
      assert.ok(statuses.some(([s, u]) => s === 200 && /\/_smart_proxy\/events\/vm\/-\/?$/.test(new URL(u).pathname)),
        `the progress stream answered: ${JSON.stringify(statuses.filter(([, u]) => u.includes('/events/')))}`);
      const echo = JSON.parse(await page.textContent('body') ?? '{}') as { url: string; headers: Record<string, string> };
      assert.equal(echo.url, '/notebooks/a%20b?tab=2&x=%2F');
      assert.equal(echo.headers['x-forwarded-user'], 'alice');
      assert.equal(echo.headers['x-forwarded-groups'], 'g1,staff');
      // (The issuer's own cookies are there: cookies are per host, not per port.)
      assert.doesNotMatch(echo.headers.cookie ?? '', /smart_proxy_session/, 'the session cookie never reaches the backend');

      // Scripts never see the session.
      assert.equal(await page.evaluate(() => (globalThis as unknown as { document: { cookie: string } }).document.cookie), '');

      // Sign out: the link shows a button (a GET signs no one out), which posts the form; then
      // the provider's confirmation, then the proxy's page.
      await page.goto(`${proxy.url}/_smart_proxy/auth/sign-out`);
      assert.match(await page.textContent('h1') ?? '', /Sign out/);
      await Promise.all([page.waitForURL((u) => u.href.startsWith(issuer.url)), page.click('form button')]);
      assert.ok(page.url().startsWith(issuer.url), page.url());
      await page.click('button[name=logout]');
      await page.waitForURL(`${proxy.url}/_smart_proxy/auth/signed-out`);
      assert.match(await page.textContent('h1') ?? '', /Signed out/);

      // The next visit asks to sign in again.
      await page.goto(target);
      assert.ok(page.url().startsWith(`${issuer.url}/interaction/`), page.url());
      assert.equal(issuer.signIns.get('alice'), 1);
    } finally {
      await browser.close();
    }
  });
});

describe('OIDC sign-in in Chromium: what a person runs into', { skip, timeout: 120_000 }, () => {
  let issuer: EmbeddedIssuer;
  let proxy: OidcApp;

  before(async () => {
    const port = await freePort();
    issuer = await startIssuer(port);
    proxy = await startOidcApp({ port, issuerUrl: issuer.url, resources: { vm: { access: { anyOf: ['g1'] } } } });
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

  it('signs in from a URL too long for a cookie and lands on it exactly', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      // 3,500 characters of query: sealed with the rest of the sign-in, more than the 4,096
      // bytes a browser keeps of a cookie.
      const target = `${proxy.url}/smart_proxy/vm/-/dash?f=${'x'.repeat(3500)}`;
      await page.goto(target);
      await signInAtProvider(page);
      await page.waitForURL(target);
      // The waiting page, then the resource by itself.
      await page.waitForFunction(() => (globalThis as unknown as { document: { body: { innerText: string } } }).document.body.innerText.includes('x-forwarded-user'), undefined, { timeout: 30_000 });
      const echo = JSON.parse(await page.textContent('body') ?? '{}') as { url: string; headers: Record<string, string> };
      assert.equal(echo.url, `/dash?f=${'x'.repeat(3500)}`);
      assert.equal(echo.headers['x-forwarded-user'], 'alice');
    } finally {
      await browser.close();
    }
  });

  it('answers a form posted without a session with a page that says so and signs in back to the form', async () => {
    const browser = await launch();
    try {
      const page = await browser.context.newPage();
      // A page of the proxy's own site stands for the resource's form page (same origin).
      const formPage = `${proxy.url}/_smart_proxy/auth/signed-out`;
      await page.goto(formPage);
      const starts = proxy.provider.calls.start;
      // A form with a 1 MiB field: the proxy refuses it without reading the body.
      const [response] = await Promise.all([
        page.waitForNavigation(),
        page.evaluate((action) => {
          const d = (globalThis as unknown as { document: { createElement(t: string): Record<string, unknown> & { appendChild(c: unknown): void; submit(): void }; body: { appendChild(c: unknown): void } } }).document;
          const form = d.createElement('form');
          form.method = 'post';
          form.action = action;
          const area = d.createElement('textarea');
          area.name = 'note';
          area.value = 'y'.repeat(1024 * 1024);
          form.appendChild(area);
          d.body.appendChild(form);
          form.submit();
        }, `${proxy.url}/smart_proxy/vm/-/submit`),
      ]);
      assert.equal(response?.status(), 401);
      assert.equal(page.url(), `${proxy.url}/smart_proxy/vm/-/submit`);
      assert.match(await bodyText(page), /401 Unauthorized[\s\S]*You are not signed in, so this POST request was not sent on\. Sign in, then send it again\./);
      assert.equal(proxy.provider.calls.start, starts, 'nothing started for it');
      // The link signs in and comes back to the page with the form.
      await page.click('a:text("Sign in")');
      await signInAtProvider(page);
      await page.waitForURL(formPage);
      assert.match(await bodyText(page), /Signed out|You are signed out/);
    } finally {
      await browser.close();
    }
  });
});
