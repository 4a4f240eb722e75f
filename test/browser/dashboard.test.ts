/**
 * The admin dashboard in a real browser (Debian's Chromium via playwright-core), signed in
 * with Basic (an ambient credential, so every button goes through the CSRF guard), with
 * 1,000 instances listed. It must update live when an instance boots, and stop one from its
 * button. `UPDATE_SCREENSHOTS=1` (npm run docs:screenshot) writes docs/img/dashboard.png.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Instance, ManagerEvent } from '../../src/core/resource-manager.ts';
import { MimicProvider, StubbornProvider } from '../helpers/mimic-provider.ts';
import { DEV, OPS, startAdminApp, type AdminApp } from '../admin/admin-kit.ts';

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (scripts/install-system-deps.sh installs it)`;

/** The little of the DOM the page predicates use (this project has no DOM types). */
interface PageGlobals {
  readonly document: {
    querySelector(sel: string): { getAttribute(name: string): string | null; textContent: string | null } | null;
    querySelectorAll(sel: string): { length: number };
  };
}

/** The resources once a reload removed `old`. */
const RESOURCES_AFTER = {
  app: { provider: 'mimic', sharing: 'shared', idleStopMs: 600_000 },
  desks: { provider: 'mimic', sharing: 'user' },
  vm: { provider: 'stubborn', sharing: 'shared', idleStopMs: 600_000 },
};

/** The first manager event `match` accepts, or an error after 10 s. */
function nextEvent(app: AdminApp, what: string, match: (e: ManagerEvent) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`not within 10 s: ${what}`)); }, 10_000);
    const off = app.app.manager.onEvent((e) => {
      if (!match(e)) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}

describe('admin dashboard in Chromium', { skip, timeout: 180_000 }, () => {
  let a: AdminApp;
  let mimic: MimicProvider;
  const stubborn = new StubbornProvider({ bootMs: 10 });
  const leftover = new StubbornProvider({ bootMs: 10 });
  let context: BrowserContext;
  let profileDir: string;
  let page: Page;

  before(async () => {
    mimic = new MimicProvider({ manual: true });
    a = await startAdminApp({ ...RESOURCES_AFTER, old: { provider: 'leftover', sharing: 'shared', idleStopMs: 600_000 } }, { mimic, stubborn, leftover }, {}, true);
    // 1,000 instances: one real one made by a request, then 999 more of the same resource.
    const first = fetch(`${a.app.proxyUrl}/smart_proxy/desks/g1/`, { headers: DEV });
    const desk = await new Promise<Instance>((resolve) => {
      const off = a.app.manager.onEvent((e) => { if (e.type === 'start-requested') { off(); resolve(e.instance); } });
    });
    await mimic.release('user:dev');
    assert.equal((await first).status, 200);
    for (let i = 1; i < 1_000; i++) a.app.manager.selectInstance(desk.resource, [], `user${String(i).padStart(4, '0')}`);
    profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM, headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 900 },
      httpCredentials: { username: 'web', password: 'web-password' },
    });
    page = context.pages()[0] ?? await context.newPage();
  });

  after(async () => {
    await context?.close();
    if (profileDir !== undefined) rmSync(profileDir, { recursive: true, force: true });
    await a?.close();
  });

  it('loads 1,000 instances paged, goes live, and follows a boot as it happens', async () => {
    const t0 = performance.now();
    const res = await page.goto(`${a.admin}/`);
    assert.equal(res?.status(), 200);
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('#live')?.getAttribute('class') === 'live on'
      && (globalThis as unknown as PageGlobals).document.querySelectorAll('#instances tbody tr').length === 100);
    const loadMs = performance.now() - t0;
    assert.equal(await page.textContent('#instance-count'), '(1000)');
    assert.match(await page.textContent('#page') ?? '', /page 1 of 10/);
    assert.ok(loadMs < 15_000, `loaded and rendered 1,000 instances in ${Math.round(loadMs)} ms`);
    process.stdout.write(`# dashboard: 1,000 instances loaded and rendered in ${Math.round(loadMs)} ms\n`);

    // Paging and filtering work on the whole set.
    await page.click('#next');
    assert.match(await page.textContent('#page') ?? '', /page 2 of 10/);
    await page.fill('#filter', 'user0999');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelectorAll('#instances tbody tr').length === 1);
    await page.fill('#filter', 'app');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelectorAll('#instances tbody tr').length === 0);

    // A request wakes "app": the row appears and walks to ready without a reload.
    const held = fetch(`${a.app.proxyUrl}/smart_proxy/app/g1/`, { headers: OPS });
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="app/*"]')?.getAttribute('data-state') === 'starting');
    assert.equal(await page.textContent('tr[data-key="app/*"] td:nth-child(4)'), 'ops', 'started by the verified user');
    await mimic.release('*');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="app/*"]')?.getAttribute('data-state') === 'ready');
    assert.equal((await held).status, 200);
    // The boot chart of "app" gets its bar (boot history refetched after the boot).
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelectorAll('[data-resource="app"] svg rect').length === 1);
    // The audit list shows the start with its actor.
    await page.waitForFunction(() => ((globalThis as unknown as PageGlobals).document.querySelector('#audit')?.textContent ?? '').includes('start · app * · by ops'));

    await page.fill('#filter', '');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelectorAll('#instances tbody tr').length === 100);
    const shot = await page.screenshot({ fullPage: false });
    mkdirSync(new URL('../tmp/', import.meta.url), { recursive: true });
    writeFileSync(new URL('../tmp/dashboard.png', import.meta.url), shot);
    if (process.env.UPDATE_SCREENSHOTS === '1') {
      mkdirSync(new URL('../../docs/img/', import.meta.url), { recursive: true });
      writeFileSync(new URL('../../docs/img/dashboard.png', import.meta.url), shot);
    }
  });

  it('stops an instance from its button (through the CSRF guard), and the audit shows who', async () => {
    await page.fill('#filter', 'app');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="app/*"]')?.getAttribute('data-state') === 'ready');
    await page.click('tr[data-key="app/*"] button.stop');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="app/*"]')?.getAttribute('data-state') === 'stopped');
    assert.equal(await page.isHidden('#error'), true, await page.textContent('#error') ?? '');
    await page.waitForFunction(() => ((globalThis as unknown as PageGlobals).document.querySelector('#audit')?.textContent ?? '').includes('admin-stop · app * · by admin:web'));
    // The same call without the page's token header is refused, even with the browser's credentials and cookie.
    const status = await page.evaluate(async () => (await fetch('/api/v1/resources/app/start', { method: 'POST', body: '{}' })).status);
    assert.equal(status, 403);
  });

  it('shows a stop owed (its tries, next try, last error) in the header and on its row, and when its tries ran out; retry and let go from the buttons', async () => {
    await page.fill('#filter', 'vm');
    const started = await fetch(`${a.admin}/api/v1/resources/vm/start`, { method: 'POST', body: '{}', headers: { ...OPS, 'content-type': 'application/json' } });
    assert.equal(started.status, 202);
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"]')?.getAttribute('data-state') === 'ready');
    assert.equal(await page.isHidden('#owed'), true, 'nothing owed yet');
    stubborn.refuse = true;
    await page.click('tr[data-key="vm/*"] button.stop');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"]')?.getAttribute('data-stop') === 'scheduled');
    assert.equal(await page.getAttribute('tr[data-key="vm/*"]', 'data-state'), 'stopped');
    assert.match(await page.textContent('tr[data-key="vm/*"] td.stop-retry') ?? '', /retry 2\/6 at .*DELETE refused \(#1\)/);
    assert.equal(await page.textContent('#owed'), '1 stop owed (tried again)');

    // Retry now: the try is made at once (and fails again), the row shows the next one.
    await page.click('tr[data-key="vm/*"] button.retry-stop');
    await page.waitForFunction(() => ((globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"] td.stop-retry')?.textContent ?? '').includes('DELETE refused (#2)'));
    assert.equal(stubborn.refusals, 2);
    assert.equal(await page.isHidden('#error'), true, await page.textContent('#error') ?? '');
    // Four more tries, each from the button: the sixth fails and the stop is given up, in red.
    for (let n = 3; n <= 6; n++) {
      await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"]')?.getAttribute('data-stop') === 'scheduled');
      await page.click('tr[data-key="vm/*"] button.retry-stop');
      await page.waitForFunction((want) => ((globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"] td.stop-retry')?.textContent ?? '').includes(`DELETE refused (#${want})`), n);
    }
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"]')?.getAttribute('data-stop') === 'given-up');
    assert.match(await page.textContent('tr[data-key="vm/*"] td.stop-retry') ?? '', /^gave up after 6 triesDELETE refused \(#6\)/);
    assert.equal(await page.textContent('#owed'), '1 stop owed (1 given up: the machine may still run)');
    assert.equal(await page.getAttribute('#owed', 'class'), 'owed given-up');
    // Giving up is in the audit list at once, with the live refresh (no page reload).
    await page.waitForFunction(() => ((globalThis as unknown as PageGlobals).document.querySelector('#audit')?.textContent ?? '').includes('stop-retry-given-up · vm *'));

    // Let go: no longer owed, gone from the header; audited with the operator.
    await page.click('tr[data-key="vm/*"] button.abandon-stop');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="vm/*"]')?.getAttribute('data-stop') === '');
    assert.equal(await page.isHidden('#owed'), true);
    assert.equal(await page.isHidden('#error'), true, await page.textContent('#error') ?? '');
    await a.app.state.flush();
    const flushed = await (await fetch(`${a.admin}/api/v1/audit?type=admin-abandon-stop`, { headers: OPS })).json() as { items: Array<{ actor: string; resource: string }> };
    assert.deepEqual(flushed.items.map((e) => [e.resource, e.actor]), [['vm', 'admin:web']]);
    stubborn.refuse = false;
  });

  it('shows a stop owed for a resource a reload removed, marked as such, on load and live', async () => {
    // `old` owes a stop, then a reload removes it: it is in no resource view any more.
    const ops = { ...OPS, 'content-type': 'application/json' };
    const ready = nextEvent(a, 'old is ready', (e) => e.instance.resource.id === 'old' && e.instance.status === 'ready');
    assert.equal((await fetch(`${a.admin}/api/v1/resources/old/start`, { method: 'POST', body: '{}', headers: ops })).status, 202);
    await ready;
    leftover.refuse = true;
    // The failed stop marks the instance stopped and schedules its retry in the same turn.
    const owed = nextEvent(a, 'old owes a stop', (e) => e.instance.resource.id === 'old' && e.instance.status === 'stopped');
    assert.equal((await fetch(`${a.admin}/api/v1/resources/old/instances/*/stop`, { method: 'POST', body: '{}', headers: ops })).status, 202);
    await owed;
    assert.equal(a.app.manager.stopRetries.counts().pending, 1);
    const reloaded = await a.reconfigure(RESOURCES_AFTER);
    assert.ok(reloaded.ok && reloaded.summary.removed.includes('old'), JSON.stringify(reloaded));

    await page.reload();
    await page.fill('#filter', 'old');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="old/*"]')?.getAttribute('data-stop') === 'scheduled');
    assert.match(await page.textContent('tr[data-key="old/*"] td:first-child') ?? '', /^old \(removed from config\)$/);
    assert.equal(await page.locator('tr[data-key="old/*"] button.start, tr[data-key="old/*"] button.stop').count(), 0, 'a removed resource is not started from here');
    assert.equal(await page.textContent('#owed'), '1 stop owed (tried again)');
    // Live: its try fails again, then it is let go and leaves the table.
    await page.click('tr[data-key="old/*"] button.retry-stop');
    await page.waitForFunction(() => ((globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="old/*"] td.stop-retry')?.textContent ?? '').includes('DELETE refused (#2)'));
    assert.match(await page.textContent('tr[data-key="old/*"] td:first-child') ?? '', /removed from config/);
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="old/*"]')?.getAttribute('data-stop') === 'scheduled');
    await page.click('tr[data-key="old/*"] button.abandon-stop');
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('tr[data-key="old/*"]') === null);
    assert.equal(await page.isHidden('#owed'), true);
    assert.equal(await page.isHidden('#error'), true, await page.textContent('#error') ?? '');
  });
});
