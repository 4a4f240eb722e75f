/**
 * The operator CLI run as a real child process (`node bin/smart-proxy.js …`) against a real proxy's
 * admin listener: a mimic resource with a visible boot, and a process-provider resource
 * whose output the provider keeps.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startAdminApp, type AdminApp } from './admin-kit.ts';
import { testCacheEnv } from '../helpers/test-caches.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));
const fixture = fileURLToPath(new URL('../fixtures/tiny-http-server.ts', import.meta.url));

interface Run { code: number; stdout: string; stderr: string }

function run(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { env: { PATH: process.env.PATH ?? '', ...testCacheEnv, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

describe('smart-proxy operator CLI (child process)', () => {
  let a: AdminApp;
  const dir = mkdtempSync(join(tmpdir(), 'sp-cli-'));
  const asOps = (args: string[]): Promise<Run> => run([...args, '--admin', a.admin], { SMART_PROXY_ADMIN_TOKEN: 'ops-token' });

  before(async () => {
    const mimic = new MimicProvider({ bootMs: 600 });
    a = await startAdminApp({
      slow: { provider: 'mimic', sharing: 'shared' },
      proc: { provider: 'proc', sharing: 'shared' },
    }, { mimic }, {
      providers: {
        mimic: { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' },
        proc: { kind: 'process', command: [process.execPath, fixture, '--port', '{port}'], stateDir: join(dir, 'state'), stopGraceMs: 2_000 },
      },
      shutdown: { drainTimeoutMs: 0, stopInstances: true },
    });
  });
  after(async () => {
    await a?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('status prints a table of resources and instances', async () => {
    const r = await asOps(['status']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^RESOURCE\s+INSTANCE\s+STATE\s+STARTED BY/);
    assert.ok(lines.some((l) => /^slow\s+-\s+stopped/.test(l)), r.stdout);
    assert.ok(lines.some((l) => /^proc\s+-\s+stopped/.test(l)), r.stdout);
  });

  it('start shows live progress until ready (with a bar and an ETA once a boot is on record); stop stops', async () => {
    const first = await asOps(['start', 'slow']);
    assert.equal(first.code, 0, first.stderr);
    const firstLines = first.stdout.trimEnd().split('\n');
    assert.match(firstLines[0] ?? '', /^slow \*: (requested|booting)\s+\[\?+\]\s+[\d.]+s, no estimate yet$/);
    assert.match(firstLines.at(-1) ?? '', /^slow \*: ready\s+\[#{24}\] 100% {2}ready in [\d.]+s$/);

    const stop = await asOps(['stop', 'slow']);
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout, /^slow \*: stopping/);
    await new Promise<void>((resolve) => {
      const inst = [...a.app.manager.instancesOf('slow')][0];
      if (inst?.status === 'stopped') return resolve();
      const off = a.app.manager.onEvent((e) => { if (e.instance.resource.id === 'slow' && e.instance.status === 'stopped') { off(); resolve(); } });
    });

    const second = await asOps(['start', 'slow']);
    assert.equal(second.code, 0, second.stderr);
    const lines = second.stdout.trimEnd().split('\n');
    assert.ok(lines.length >= 2, second.stdout);
    assert.match(lines[0] ?? '', /^slow \*: (requested|booting)\s+\[#*-+\]\s+\d+%\s+[\d.]+s, ETA [\d.]+s$/, second.stdout);
    assert.match(lines.at(-1) ?? '', /ready in [\d.]+s$/);

    const status = await asOps(['status', 'slow', '--json']);
    assert.equal(status.code, 0, status.stderr);
    const doc = JSON.parse(status.stdout) as { items: Array<{ instances: Array<{ state: string; startedBy: string }>; boot: { history: unknown[] } }> };
    assert.equal(doc.items[0]?.instances[0]?.state, 'ready');
    assert.equal(doc.items[0]?.instances[0]?.startedBy, 'admin:ops');
    assert.equal(doc.items[0]?.boot.history.length, 2);
  });

  it('start --json prints one progress event per line', async () => {
    const r = await asOps(['start', 'proc', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const events = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as { event: string; step: string });
    assert.equal(events.at(-1)?.event, 'ready');
    assert.equal(events.at(-1)?.step, 'ready');
  });

  it('logs prints the output the process provider kept', async () => {
    const r = await asOps(['logs', 'proc']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^listening on \d+$/m);
    const none = await asOps(['logs', 'slow']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /keeps no output.*SP_ADMIN_UNSUPPORTED/);
  });

  it('audit lists the operator\'s actions, filtered; --json for scripts', async () => {
    await a.app.state.flush();
    const r = await asOps(['audit', '--resource', 'slow', '--type', 'admin-start']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.split('\n')[0] ?? '', /^ID\s+TIME\s+TYPE\s+RESOURCE\s+INSTANCE\s+ACTOR/);
    assert.equal(r.stdout.trimEnd().split('\n').length, 3, r.stdout);
    const j = await asOps(['audit', '--actor', 'admin:ops', '--limit', '2', '--json']);
    const page = JSON.parse(j.stdout) as { items: Array<{ actor: string }>; nextBefore: number | null };
    assert.equal(page.items.length, 2);
    assert.ok(page.items.every((e) => e.actor === 'admin:ops'));
    assert.equal(typeof page.nextBefore, 'number');
  });

  it('exit codes: 4 not authorised, 3 unreachable, 2 bad command line, 1 failed action', async () => {
    const denied = await run(['status', '--admin', a.admin], { SMART_PROXY_ADMIN_TOKEN: 'dev-token' });
    assert.equal(denied.code, 4);
    assert.match(denied.stderr, /403.*SP_ACCESS_DENIED/);
    const noToken = await run(['status', '--admin', a.admin]);
    assert.equal(noToken.code, 4);
    assert.match(noToken.stderr, /401.*\nno token was sent: set SMART_PROXY_ADMIN_TOKEN or pass --token TOKEN/);
    const down = await run(['status', '--admin', 'http://127.0.0.1:1']);
    assert.equal(down.code, 3);
    assert.match(down.stderr, /cannot reach the admin API/);
    const usage = await asOps(['start', 'slow', '--resource', 'x']);
    assert.equal(usage.code, 2);
    const unknown = await asOps(['start', 'nope']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /404.*no resource "nope"/);
  });
});
