/**
 * A person with a browser and the demo's banner (`npm start`): the password prompt must
 * appear, and the printed credentials must open a protected resource and the dashboard.
 * Chromium answers a 401 only when Basic is the first challenge of a WWW-Authenticate
 * line, and it has no way to send a bearer token, so both are checked with a real browser
 * (playwright's httpCredentials answer the prompt the way a person does).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { demoCredentials } from '../../src/demo-banner.ts';
import { exitOf, requireBinary } from '../helpers/system.ts';
import '../helpers/test-caches.ts';

const CHROMIUM = requireBinary('chromium', 'chromium');
const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

/** The demo as `npm start` runs it (free ports), and the URLs its banner prints. */
async function startDemo(t: TestContext): Promise<{ proxy: string; admin: string }> {
  const child = spawn(process.execPath, [cli, 'demo', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = exitOf(child);
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await done;
  });
  let out = '';
  const banner = await new Promise<string>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('Ctrl-C stops')) resolve(out);
    });
    child.stderr.resume();
    void done.then(({ code }) => reject(new Error(`demo exited (${code}) before its banner:\n${out}`)));
  });
  const proxy = /proxy: +(http:\/\/\S+)/.exec(banner)?.[1];
  const admin = /admin: +(http:\/\/\S+?)\/? /.exec(banner)?.[1];
  assert.ok(proxy !== undefined && admin !== undefined, banner);
  assert.match(banner, new RegExp(`sign in as alice / ${demoCredentials.alice.password}`), 'the banner says how to open the dashboard');
  return { proxy, admin };
}

async function openAs(t: TestContext, username: string, password: string, url: string): Promise<{ status: number | undefined; text: string }> {
  const profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    httpCredentials: { username, password },
  });
  t.after(async () => {
    await context.close();
    rmSync(profileDir, { recursive: true, force: true });
  });
  const page = await context.newPage();
  const response = await page.goto(url);
  return { status: response?.status(), text: await page.innerText('body') };
}

describe('the demo in a browser with HTTP Basic', { timeout: 120_000 }, () => {
  it('carol\'s password opens her group\'s VM, and alice\'s opens the dashboard', async (t) => {
    const { proxy, admin } = await startDemo(t);
    // as1 for the group set [g2] is one of the mock cloud's seed VMs: running from the start.
    const vm = await openAs(t, 'carol', demoCredentials.carol.password, `${proxy}/smart_proxy/as1/g2/hello`);
    assert.equal(vm.status, 200, vm.text);
    assert.match(vm.text, /"x-forwarded-user":"carol"/);
    const dashboard = await openAs(t, 'alice', demoCredentials.alice.password, `${admin}/`);
    assert.equal(dashboard.status, 200, dashboard.text);
    assert.match(dashboard.text, /Instances/);
  });
});
