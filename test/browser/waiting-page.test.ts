/**
 * The waiting page in a real browser: Debian's Chromium driven by playwright-core. A cold
 * resource with one boot on record is opened; the page must show progress and an ETA and
 * then arrive at the resource's content by itself, with and without JavaScript.
 *
 * `UPDATE_SCREENSHOTS=1` (npm run docs:screenshot) also writes docs/img/waiting-page.png.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext } from 'playwright-core';
import type { Instance } from '../../src/core/resource-manager.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { requireBinary } from '../helpers/system.ts';


/** The little of the DOM the page predicates use (this project has no DOM types). */
interface PageGlobals {
  readonly document: {
    getElementById(id: string): { getAttribute(name: string): string | null } | null;
    readonly body: { readonly innerText: string };
  };
}
const BOOT_MS = 1500;
// Missing Chromium fails the file at once with the package to install (never a silent skip).
const CHROMIUM = requireBinary('chromium', 'chromium');

function bootFinished(h: Harness): Promise<Instance> {
  return new Promise((resolve) => {
    const off = h.manager.onEvent((e) => {
      if (e.type === 'boot-finished') {
        off();
        resolve(e.instance);
      }
    });
  });
}

/** One real boot through the proxy, then a stop: the resource is cold with one boot on record. */
async function bootOnceAndStop(h: Harness, groups: string): Promise<void> {
  const res = await fetch(`${h.url}/smart_proxy/app/${groups}/warm-up`);
  assert.equal(res.status, 200);
  await res.text();
  for (const inst of h.manager.instancesOf('app')) await h.manager.stop(inst, 'test: make it cold again');
}

/** A fresh profile every time, as a first-time visitor has. */
async function launch(javaScriptEnabled: boolean): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 880, height: 720 },
    javaScriptEnabled,
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profileDir, { recursive: true, force: true });
    },
  };
}

describe('waiting page in Chromium', { timeout: 120_000 }, () => {
  let h: Harness;
  let mimic: MimicProvider;

  before(async () => {
    mimic = new MimicProvider({ bootMs: BOOT_MS });
    h = await startHarness({ resources: [{ id: 'app', provider: mimic, sharing: 'groups', bootTimeoutMs: 30_000 }] });
  });

  after(async () => {
    await h?.close();
  });

  it('shows live progress and an ETA, then arrives at the content with no action', async () => {
    await bootOnceAndStop(h, 'g1');
    assert.equal(h.manager.estimateBoot('app')?.samples, 1);
    // This boot ends when the test has looked at the page (a slow machine must not race it).
    mimic.options.manual = true;
    const browser = await launch(true);
    try {
      const page = await browser.context.newPage();
      const url = `${h.url}/smart_proxy/app/g1/hello?x=1`;
      const problems: string[] = [];
      // Chromium logs failed loads as console errors too; those are checked by status below.
      page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(m.text()); });
      page.on('response', (r) => {
        const path = new URL(r.url()).pathname;
        // The page's own 503 is the point; /favicon.ico is outside any resource (the proxy's 404).
        if (r.status() >= 400 && !(r.status() === 503 && r.url() === url) && path !== '/favicon.ico') problems.push(`${r.status()} ${r.url()}`);
      });
      page.on('pageerror', (e) => problems.push(e.message));
      const ready = bootFinished(h);

      const first = await page.goto(url);
      assert.equal(first?.status(), 503);
      // The script is running: the step comes from the progress stream.
      // Predicates are functions, not strings: a string would be eval'd in the page, which its CSP forbids.
      await page.waitForFunction(() => {
        const step = (globalThis as unknown as PageGlobals).document.getElementById('sp-main')?.getAttribute('data-step');
        return step === 'booting' || step === 'probing';
      });
      const eta = await page.textContent('#sp-eta') ?? '';
      assert.match(eta, /(About [\d.]+ s left: usually 1\.\d s|slower than usual).*from 1 past start/i);
      assert.match(await page.textContent('#sp-state') ?? '', /Booting|checking/);
      assert.equal(await page.title(), 'Starting app…');
      assert.match(await page.textContent('#sp-elapsed') ?? '', /^\d+(\.\d)? s$/);
      assert.equal(await page.getAttribute('[role="status"]', 'aria-live'), 'polite');
      assert.equal(await page.locator('main').count(), 1);
      const shot = await page.screenshot({ fullPage: true });
      mkdirSync(new URL('../tmp/', import.meta.url), { recursive: true });
      writeFileSync(new URL('../tmp/waiting-page.png', import.meta.url), shot);
      if (process.env.UPDATE_SCREENSHOTS === '1') {
        mkdirSync(new URL('../../docs/img/', import.meta.url), { recursive: true });
        writeFileSync(new URL('../../docs/img/waiting-page.png', import.meta.url), shot);
      }

      // Arrives by itself: the backend finishes booting, the stream says ready, the page reloads.
      await mimic.release('g1');
      await ready;
      await page.waitForFunction(() => {
        const doc = (globalThis as unknown as PageGlobals).document;
        return doc.getElementById('sp-main') === null && doc.body.innerText.includes('"url"');
      }, null, { timeout: 20_000 });
      const echo = JSON.parse(await page.innerText('body')) as { url: string };
      assert.equal(echo.url, '/hello?x=1');
      assert.equal(page.url(), url, 'still the URL the person opened');
      assert.deepEqual(problems, [], 'no script or CSP errors, no failed loads');
    } finally {
      await browser.close();
    }
  });

  it('arrives at the content without JavaScript too (meta refresh)', async () => {
    mimic.options.manual = false;
    await bootOnceAndStop(h, 'g2');
    const browser = await launch(false);
    try {
      const page = await browser.context.newPage();
      const url = `${h.url}/smart_proxy/app/g2/plain`;
      const arrived = page.waitForResponse((r) => r.url() === url && r.status() === 200, { timeout: 30_000 });
      const first = await page.goto(url);
      assert.equal(first?.status(), 503);
      assert.match(await first?.text() ?? '', /<p id="sp-state" class="state">(Asking|Booting)/);
      await arrived;
      await page.waitForLoadState('load');
      assert.equal((JSON.parse(await page.innerText('body')) as { url: string }).url, '/plain');
    } finally {
      await browser.close();
    }
  });
});

describe('waiting page in Chromium, a start that fails', { timeout: 120_000 }, () => {
  let h: Harness;

  before(async () => {
    // `stuck`: the provider never answers the start, so the boot deadline fails it.
    // `broken`: the provider reports the instance failed once it booted.
    h = await startHarness({ resources: [
      { id: 'stuck', provider: new MimicProvider({ hangStart: true }), bootTimeoutMs: 1_000 },
      { id: 'broken', provider: new MimicProvider({ bootMs: 300, bootFails: true }), bootTimeoutMs: 30_000 },
    ] });
  });

  after(async () => {
    await h?.close();
  });

  const failedStep = (): boolean => (globalThis as unknown as PageGlobals).document.getElementById('sp-main')?.getAttribute('data-step') === 'failed';

  it('says it could not start, and no longer promises to take the person anywhere', async () => {
    const browser = await launch(true);
    try {
      const page = await browser.context.newPage();
      const first = await page.goto(`${h.url}/smart_proxy/stuck/-/x`);
      assert.equal(first?.status(), 503);
      // As served (the live page may already have moved on: the boot deadline is 1 s).
      const served = await first?.text() ?? '';
      assert.match(served, /<title id="sp-title-text">Starting stuck…<\/title>/);
      assert.match(served, /<main id="sp-main" data-step="(requested|booting)"/);
      await page.waitForFunction(failedStep);
      assert.equal(await page.innerText('h1'), 'Could not start stuck');
      const text = await page.innerText('main');
      assert.doesNotMatch(text, /You will be taken to/);
      assert.match(text, /The start failed/);
      assert.match(text, /Try again/);
      // The tab says so too, changed live by the stream (the page was not reloaded).
      assert.equal(await page.title(), 'stuck did not start in time');
    } finally {
      await browser.close();
    }
  });

  it('titles a failed start as failed, live', async () => {
    const browser = await launch(true);
    try {
      const page = await browser.context.newPage();
      const url = `${h.url}/smart_proxy/broken/-/x`;
      assert.equal((await page.goto(url))?.status(), 503);
      await page.waitForFunction(failedStep);
      assert.equal(await page.title(), 'Could not start broken');
    } finally {
      await browser.close();
    }
  });
});
