/**
 * The operator CLI, run as a real child process against a real proxy's admin listener, on a
 * stop the cloud keeps refusing: `status` lists it under its table, `retry-stop` tries it now,
 * `abandon-stop` lets it go, and a second let-go is refused (exit 1, SP_ADMIN_CONFLICT).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { StubbornProvider } from '../helpers/mimic-provider.ts';
import { OPS, readSse, startAdminApp, type AdminApp } from './admin-kit.ts';
import { testCacheEnv } from '../helpers/test-caches.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

interface Run { code: number; stdout: string; stderr: string }

function run(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { env: { PATH: process.env.PATH ?? '', ...testCacheEnv, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

describe('smart-proxy status / retry-stop / abandon-stop (child process)', () => {
  let a: AdminApp;
  const cloud = new StubbornProvider({ bootMs: 10 });
  const asOps = (args: string[]): Promise<Run> => run([...args, '--admin', a.admin], { SMART_PROXY_ADMIN_TOKEN: 'ops-token' });
  const api = (path: string, init: RequestInit = {}): Promise<Response> => fetch(`${a.admin}${path}`, { ...init, headers: { ...OPS, 'content-type': 'application/json' } });

  before(async () => {
    a = await startAdminApp({ vm: { provider: 'cloud', sharing: 'shared', idleStopMs: 600_000 } }, { cloud });
    assert.equal((await api('/api/v1/resources/vm/start', { method: 'POST', body: '{}' })).status, 202);
    await readSse(await api('/api/v1/resources/vm/instances/*/events'), (e) => e === 'ready' || e === 'failed');
    cloud.refuse = true;
    const stream = await api('/api/v1/events');
    assert.equal((await api('/api/v1/resources/vm/instances/*/stop', { method: 'POST', body: '{}' })).status, 202);
    await readSse(stream, (e, d) => e === 'instance' && (d as { stopRetry: unknown }).stopRetry !== null);
  });
  after(async () => { await a?.close(); });

  it('status lists the owed stop; retry-stop tries it now; abandon-stop lets it go, once', async () => {
    const status = await asOps(['status']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /\nStops owed, tried again with backoff \(the machine may still be running\):\n/);
    assert.match(status.stdout, /\nvm\s+\*\s+scheduled\s+1\/6\s+in \d+s\s+DELETE refused \(#1\)\s+stopped by admin:ops; the first stop failed\n/);

    // Followed on the live stream, opened first: the try retry-stop makes ends before the let-go.
    const stream = await api('/api/v1/events');
    const retried = await asOps(['retry-stop', 'vm']);
    assert.equal(retried.code, 0, retried.stderr);
    assert.equal(retried.stdout, 'vm *: trying the stop now\n');
    await readSse(stream, (e, d) => {
      const s = (d as { stopRetry: { state: string; attempts: number } | null }).stopRetry;
      return e === 'instance' && s?.state === 'scheduled' && s.attempts === 2;
    });
    assert.equal(cloud.refusals, 2);
    const abandoned = await asOps(['abandon-stop', 'vm', '--instance', '*', '--json']);
    assert.equal(abandoned.code, 0, abandoned.stderr);
    assert.equal((JSON.parse(abandoned.stdout) as { stopRetry: unknown }).stopRetry, null);
    const twice = await asOps(['abandon-stop', 'vm']);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /SP_ADMIN_CONFLICT/);
    assert.match(twice.stderr, /no stop is owed for vm \*/);
    const after = await asOps(['status']);
    assert.doesNotMatch(after.stdout, /Stops owed/);
    // Each operator action is audited with the operator: the stop, its retry and its let-go.
    await a.app.state.flush();
    const audit = await (await api('/api/v1/audit?resource=vm&actor=admin:ops')).json() as { items: Array<{ type: string; status: string | null }> };
    const types = new Set(audit.items.map((e) => e.type));
    for (const t of ['admin-start', 'start', 'admin-stop', 'admin-retry-stop', 'admin-abandon-stop']) assert.ok(types.has(t), `${t} by admin:ops: ${JSON.stringify(audit.items)}`);
    assert.ok(audit.items.some((e) => e.type === 'instance-changed' && e.status === 'stopping'), 'the stop itself');
  });
});
