/**
 * A person with a browser and the demo with browser sign-in (`npm start -- --oidc`), run as
 * a child process on free ports: a link to a group's VM goes to the embedded provider's form,
 * the printed user signs in and lands on the exact URL. `--port 0` must give a public URL with
 * the port the proxy really listens on (it once said `:0`, sending every browser nowhere).
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

const CHROMIUM = requireBinary('chromium', 'chromium');
const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

/** The demo with --oidc on free ports, and the URLs its banner prints. */
async function startDemo(t: TestContext): Promise<{ proxy: string; issuer: string }> {
  const child = spawn(process.execPath, [cli, 'demo', '--port', '0', '--mock-port', '0', '--oidc'], { stdio: ['ignore', 'pipe', 'pipe'] });
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
  const issuer = /embedded provider at (http:\/\/[^)\s]+)\)/.exec(banner)?.[1];
  assert.ok(proxy !== undefined && issuer !== undefined, banner);
  return { proxy, issuer };
}

describe('the demo with OIDC sign-in in a browser', { timeout: 120_000 }, () => {
  it('sends a link to the provider\'s form; carol signs in and lands on her group\'s VM; API clients get a 401', async (t) => {
    const { proxy, issuer } = await startDemo(t);
    // API clients: a 401 with challenges, never a redirect.
    const api = await fetch(`${proxy}/smart_proxy/notebook/-/`, { headers: { accept: 'application/json' }, redirect: 'manual' });
    assert.equal(api.status, 401);
    assert.match(api.headers.get('www-authenticate') ?? '', /Bearer realm=/);
    await api.text();

    const profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
    const context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    t.after(async () => {
      await context.close();
      rmSync(profileDir, { recursive: true, force: true });
    });
    const page = await context.newPage();
    // as1 for the group set [g2] is one of the mock cloud's seed VMs: running from the start.
    const target = `${proxy}/smart_proxy/as1/g2/hello?from=link`;
    await page.goto(target);
    assert.ok(page.url().startsWith(`${issuer}/interaction/`), page.url());
    await page.fill('input[name=login]', 'carol');
    await page.fill('input[name=password]', demoCredentials.carol.password);
    await page.click('button[type=submit]');
    await page.waitForURL(target);
    await page.waitForFunction(() => (globalThis as unknown as { document: { body: { innerText: string } } }).document.body.innerText.includes('x-forwarded-user'), undefined, { timeout: 30_000 });
    assert.match(await page.innerText('body'), /"x-forwarded-user":"carol"/);
  });
});
