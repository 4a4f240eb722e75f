/**
 * Suspend and resume through the admin API: where the provider can keep an instance's state
 * (`Provider.suspend`), `suspend` stops the instance through it and `resume` starts it again;
 * where it cannot, both answer 501 and the instance is left alone. Real app, real HTTP.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { InstanceRef } from '../../src/core/ports.ts';
import type { Instance } from '../../src/core/resource-manager.ts';
import { auditPageSchema, resourceListSchema } from '../../src/admin/schemas.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { OPS, startAdminApp, type AdminApp } from './admin-kit.ts';

/** A mimic that can suspend: it counts suspends apart from stops. */
class SuspendingMimic extends MimicProvider {
  suspends = 0;
  async suspend(ref: InstanceRef): Promise<void> {
    this.suspends++;
    await super.stop(ref);
  }
}

describe('admin suspend and resume', () => {
  let a: AdminApp;
  let vm: SuspendingMimic;
  let plain: MimicProvider;
  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${a.admin}${path}`, { ...init, headers: { ...OPS, ...(init.headers as Record<string, string> | undefined) } });
  /** Resolves when the resource's instance reaches `status` (from the manager's own events). */
  const reaches = (resource: string, status: Instance['status']): Promise<void> => new Promise((resolve) => {
    for (const i of a.app.manager.instancesOf(resource)) if (i.status === status) return resolve();
    const off = a.app.manager.onEvent((e) => {
      if (e.type === 'instance-changed' && e.instance.resource.id === resource && e.instance.status === status) {
        off();
        resolve();
      }
    });
  });

  before(async () => {
    vm = new SuspendingMimic({ bootMs: 20 });
    plain = new MimicProvider({ bootMs: 20 });
    a = await startAdminApp({
      vm: { provider: 'vm', sharing: 'shared' },
      app: { provider: 'plain', sharing: 'shared' },
    }, { vm, plain });
  });
  after(async () => { await a?.close(); });

  it('reports the capability per resource', async () => {
    const list = resourceListSchema.parse(await (await api('/api/v1/resources')).json());
    const caps = Object.fromEntries(list.items.map((r) => [r.id, r.capabilities.suspend]));
    assert.deepEqual(caps, { vm: true, app: false });
  });

  it('suspends through the provider, then resumes with a start; both audited', async () => {
    const ready = reaches('vm', 'ready');
    assert.equal((await api('/api/v1/resources/vm/start', { method: 'POST' })).status, 202);
    await ready;
    const stopped = reaches('vm', 'stopped');
    const res = await api('/api/v1/resources/vm/instances/*/suspend', { method: 'POST' });
    assert.equal(res.status, 202);
    await res.body?.cancel();
    await stopped;
    assert.equal(vm.suspends, 1);
    assert.equal(vm.calls.stop, 1, 'the suspend went through the provider, not around it');
    const startsBefore = vm.calls.start;
    const readyAgain = reaches('vm', 'ready');
    const resumed = await api('/api/v1/resources/vm/instances/*/resume', { method: 'POST' });
    assert.equal(resumed.status, 202);
    await resumed.body?.cancel();
    await readyAgain;
    assert.equal(vm.calls.start, startsBefore + 1);
    // A second resume of a ready instance starts nothing.
    const again = await api('/api/v1/resources/vm/instances/*/resume', { method: 'POST' });
    assert.equal(again.status, 202);
    await again.body?.cancel();
    assert.equal(vm.calls.start, startsBefore + 1);
    await a.app.state.flush();
    const audit = auditPageSchema.parse(await (await api('/api/v1/audit?limit=100')).json());
    const types = audit.items.filter((e) => e.resource === 'vm').map((e) => `${e.type}:${e.reason ?? ''}`);
    assert.ok(types.includes('admin-suspend:suspended by an operator'), types.join('\n'));
    assert.ok(types.includes('admin-resume:resumed by an operator'), types.join('\n'));
    assert.ok(types.includes('admin-resume:already ready'), types.join('\n'));
  });

  it('answers 501 where the provider cannot, and leaves the instance running', async () => {
    const ready = reaches('app', 'ready');
    assert.equal((await api('/api/v1/resources/app/start', { method: 'POST' })).status, 202);
    await ready;
    for (const action of ['suspend', 'resume']) {
      const res = await api(`/api/v1/resources/app/instances/*/${action}`, { method: 'POST' });
      assert.equal(res.status, 501, action);
      const body = await res.json() as { code: string; detail: string };
      assert.equal(body.code, 'SP_ADMIN_UNSUPPORTED');
      assert.match(body.detail, new RegExp(`cannot ${action}`));
    }
    assert.equal(plain.calls.stop, 0);
    assert.deepEqual([...a.app.manager.instancesOf('app')].map((i) => i.status), ['ready']);
  });
});
