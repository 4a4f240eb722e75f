/**
 * A stop still owed to the cloud for a resource that a configuration reload removed: its
 * machine may run on, so it stays visible where operators look. The admin API lists it marked
 * as removed, `smart-proxy status` (a real child process) shows it under its table, the live
 * stream marks its instance view, and the fate of each try reaches the live stream as an audit
 * event at once (not only after a page reload).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { instanceViewSchema, stopRetryListSchema } from '../../src/admin/schemas.ts';
import { MimicProvider, StubbornProvider } from '../helpers/mimic-provider.ts';
import { OPS, readSse, startAdminApp, type AdminApp } from './admin-kit.ts';
import { testCacheEnv } from '../helpers/test-caches.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

function run(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { env: { PATH: process.env.PATH ?? '', ...testCacheEnv, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

describe('stops owed for a resource a reload removed', () => {
  let a: AdminApp;
  const cloud = new StubbornProvider({ bootMs: 10 });
  // Every read is bounded: a stream that never says what is awaited fails the test, never hangs it.
  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${a.admin}${path}`, { signal: AbortSignal.timeout(15_000), ...init, headers: { ...OPS, 'content-type': 'application/json' } });

  before(async () => {
    a = await startAdminApp({
      app: { provider: 'mimic', sharing: 'shared' },
      old: { provider: 'cloud', sharing: 'shared', idleStopMs: 600_000 },
    }, { mimic: new MimicProvider(), cloud }, {}, true);
    assert.equal((await api('/api/v1/resources/old/start', { method: 'POST', body: '{}' })).status, 202);
    await readSse(await api('/api/v1/resources/old/instances/*/events'), (e) => e === 'ready' || e === 'failed');
    cloud.refuse = true;
    const stream = await api('/api/v1/events');
    assert.equal((await api('/api/v1/resources/old/instances/*/stop', { method: 'POST', body: '{}' })).status, 202);
    await readSse(stream, (e, d) => e === 'instance' && (d as { stopRetry: unknown }).stopRetry !== null);
    const reloaded = await a.reconfigure({ app: { provider: 'mimic', sharing: 'shared' } });
    assert.ok(reloaded.ok, JSON.stringify(reloaded));
    assert.deepEqual(reloaded.summary.removed, ['old']);
  });
  after(async () => { await a?.close(); });

  it('the admin API lists it, marked as removed', async () => {
    const list = stopRetryListSchema.parse(await (await api('/api/v1/stop-retries')).json());
    assert.deepEqual(list.items.map((i) => [i.resource, i.instanceKey, i.resourceRemoved, i.stopRetry.state]), [['old', '*', true, 'scheduled']]);
    const resources = await (await api('/api/v1/resources')).json() as { items: Array<{ id: string }> };
    assert.deepEqual(resources.items.map((r) => r.id), ['app'], 'in no resource view');
  });

  it('smart-proxy status shows it under its table, marked as removed from config; --json carries it', async () => {
    const env = { SMART_PROXY_ADMIN_TOKEN: 'ops-token' };
    const status = await run(['status', '--admin', a.admin], env);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /\nStops owed, tried again with backoff \(the machine may still be running\):\n/);
    assert.match(status.stdout, /\nold \(removed from config\)\s+\*\s+scheduled\s+1\/6\s+in \d+s\s+DELETE refused \(#1\)\s+stopped by admin:ops; the first stop failed\n/);
    const json = await run(['status', '--json', '--admin', a.admin], env);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as { removedResourceStops?: Array<{ resource: string; resourceRemoved: boolean }> };
    assert.deepEqual(parsed.removedResourceStops?.map((i) => [i.resource, i.resourceRemoved]), [['old', true]]);
  });

  it('the live stream marks its instance view as removed, and tells each try\'s fate as an audit event at once', async () => {
    const stream = await api('/api/v1/events');
    assert.equal((await api('/api/v1/resources/old/instances/*/retry-stop', { method: 'POST', body: '{}' })).status, 202);
    // Instance views are batched to the next turn; the audit event is written at once: both come.
    let audited = false;
    let viewed = false;
    const seen = await readSse(stream, (e, d) => {
      if (e === 'audit' && (d as { type: string }).type === 'stop-retry-failed') audited = true;
      if (e === 'instance' && (d as { stopRetry: { attempts: number } | null }).stopRetry?.attempts === 2) viewed = true;
      return audited && viewed;
    });
    const views = seen.filter((s) => s.event === 'instance').map((s) => instanceViewSchema.parse(s.data));
    assert.ok(views.every((v) => v.resource === 'old' && v.resourceRemoved), JSON.stringify(views));
    const failed = seen.find((s) => s.event === 'audit' && (s.data as { type: string }).type === 'stop-retry-failed')?.data as { resource: string; reason: string };
    assert.equal(failed.resource, 'old');
    assert.match(failed.reason, /try 2 of 6 failed \(DELETE refused \(#2\)\)/);
    cloud.refuse = false;
  });
});
