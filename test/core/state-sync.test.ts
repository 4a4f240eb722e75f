/**
 * Write-behind state and re-adoption after a restart, on a ManualClock: two managers play
 * the proxy before and after the restart, sharing one store and one provider.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import type { Store, StoreBatch } from '../../src/core/ports.ts';
import { StateSync, identityOfKey } from '../../src/core/state-sync.ts';
import { MemoryStore } from '../../src/state/memory-store.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import { makeReady, settle, setup } from './scripted.ts';

const SEC = 1_000;

function syncFor(s: ReturnType<typeof setup>, store: Store) {
  const logs: Array<{ level: string; obj: object; msg?: string | undefined }> = [];
  const sync = new StateSync({ store, manager: s.manager, clock: s.clock, logger: collectingLogger(logs), flushIntervalMs: 1_000 });
  return { sync, logs };
}

/** A store that fails while `down` is set. */
class FlakyStore extends MemoryStore {
  down = false;
  applied = 0;
  override async apply(batch: StoreBatch): Promise<void> {
    if (this.down) throw new Error('disk full');
    this.applied++;
    return super.apply(batch);
  }
}

describe('StateSync', () => {
  it('lets its flush timer sleep while nothing is in service, and wakes it on the next event', async () => {
    const s = setup();
    const store = new MemoryStore();
    // Counts the timers the sync itself arms (the manager has its own on the same clock).
    let armed = 0;
    const clock = { now: () => s.clock.now(), setTimeout: (fn: () => void, ms: number) => { armed++; return s.clock.setTimeout(fn, ms); } };
    const sync = new StateSync({ store, manager: s.manager, clock, logger: collectingLogger([]), flushIntervalMs: 1_000 });
    sync.start();
    await s.clock.advance(1_000);
    const asleep = armed;
    await s.clock.advance(60_000);
    assert.equal(armed, asleep, 'nothing in service, nothing pending: no flush timer');
    // An instance in service keeps it going (its activity marks change without events).
    const inst = await makeReady(s);
    await s.clock.advance(1_000);
    assert.equal((await store.loadInstances())[0]?.status, 'ready', 'the event woke the timer');
    const ticking = armed;
    await s.clock.advance(5_000);
    assert.ok(armed >= ticking + 5, `${armed - ticking} flush timers in 5 s while an instance is ready`);
    s.manager.touch(inst);
    const touchedAt = s.clock.now();
    await s.clock.advance(1_000);
    assert.equal((await store.loadInstances())[0]?.lastActivityAt, touchedAt);
    await s.manager.stop(inst, 'test');
    await s.clock.advance(2_000);
    assert.deepEqual(await store.loadInstances(), [], 'the stop is written before the timer sleeps');
    const stopped = armed;
    await s.clock.advance(60_000);
    assert.equal(armed, stopped, 'asleep again');
    // An audit record from outside the control plane wakes it too.
    sync.recordAudit({ at: s.clock.now(), type: 'access-denied', resourceId: 'r', reason: 'test' });
    await s.clock.advance(1_000);
    assert.ok((await store.recentAudit(50)).some((e) => e.type === 'access-denied'));
    await sync.close();
    s.manager.close();
  });

  it('writes instances, activity, boot samples and audit events in batches on a timer', async () => {
    const s = setup();
    const store = new MemoryStore();
    const { sync } = syncFor(s, store);
    sync.start();
    const inst = await makeReady(s);
    assert.deepEqual(await store.loadInstances(), [], 'nothing before the flush timer');
    await s.clock.advance(1_000);
    let [rec] = await store.loadInstances();
    assert.equal(rec?.status, 'ready');
    assert.equal(rec?.handle, 'h-1');
    assert.equal(rec?.endpoint, 'http://127.0.0.1:1');
    await s.clock.advance(5_000);
    s.manager.touch(inst);
    const touchedAt = s.clock.now();
    await s.clock.advance(1_000);
    [rec] = await store.loadInstances();
    assert.equal(rec?.lastActivityAt, touchedAt, 'activity marks are flushed');
    assert.equal((await store.loadBootSamples(10)).length, 1);
    const types = (await store.recentAudit(10)).map((e) => `${e.type}:${e.status ?? ''}`);
    assert.deepEqual(types.reverse(), ['instance-changed:starting', 'start-requested:', 'instance-changed:ready', 'boot-finished:ready']);
    await s.manager.stop(inst, 'test');
    await s.clock.advance(1_000);
    assert.deepEqual(await store.loadInstances(), [], 'a stopped instance is deleted');
    await sync.close();
    await assert.rejects(store.loadInstances(), /closed/, 'close() closes the store');
    s.manager.close();
  });

  it('rewrites only the instances whose activity or state changed since the last flush', async () => {
    const s = setup({ sharing: 'user' });
    const store = new FlakyStore();
    const batches: StoreBatch[] = [];
    const apply = store.apply.bind(store);
    store.apply = async (batch) => { batches.push(batch); return apply(batch); };
    const { sync } = syncFor(s, store);
    sync.start();
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const [alice, bob] = ['alice', 'bob'].map((u) => s.manager.selectInstance(s.resource, [], u));
    const ready = Promise.all([alice!, bob!].map((i) => s.manager.waitUntilReady(i, { timeoutMs: 10_000 })));
    await s.clock.advance(50);
    await ready;
    await s.clock.advance(1_000);
    assert.deepEqual((await store.loadInstances()).map((r) => r.instanceKey).sort(), ['user:alice', 'user:bob']);
    batches.length = 0;
    await s.clock.advance(3_000);
    assert.equal(batches.length, 0, 'nothing changed: nothing written');
    s.manager.touch(bob!);
    const touchedAt = s.clock.now();
    await s.clock.advance(1_000);
    assert.deepEqual(batches.flatMap((b) => b.upserts.map((u) => [u.instanceKey, u.lastActivityAt])), [['user:bob', touchedAt]], 'only the used one');
    await sync.close();
    s.manager.close();
  });

  it('a failing store never fails traffic: it is logged, counted, and the write retried later', async () => {
    const s = setup();
    const store = new FlakyStore();
    const { sync, logs } = syncFor(s, store);
    sync.start();
    store.down = true;
    const inst = await makeReady(s);
    await s.clock.advance(3_000);
    assert.equal(inst.status, 'ready', 'traffic goes on from memory');
    assert.ok(sync.stats.failures >= 2);
    assert.equal(sync.stats.lastError, 'disk full');
    assert.ok(logs.some((l) => l.level === 'warn' && /state flush failed/.test(l.msg ?? '')));
    store.down = false;
    await s.clock.advance(1_000);
    const [rec] = await store.loadInstances();
    assert.equal(rec?.status, 'ready', 'written once the store is back');
    assert.equal((await store.recentAudit(100)).length, 4, 'audit kept while the store was down');
    await sync.close();
    s.manager.close();
  });

  it('after a restart re-adopts a running instance without starting it, and the idle timer goes on', async () => {
    const store = new MemoryStore();
    const before = setup({ idleStopMs: 60 * SEC });
    const a = syncFor(before, store);
    a.sync.start();
    const inst = await makeReady(before);
    before.manager.touch(inst);
    const lastActivityAt = before.clock.now();
    await before.clock.advance(1_000);
    // kill -9: no close, no final flush; 40 s pass before the new process is up.
    const clock = new ManualClock(lastActivityAt + 40 * SEC);
    const after = setup({ idleStopMs: 60 * SEC }, clock);
    after.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    after.probe.ok = true;
    const b = syncFor(after, store);
    const restored = await b.sync.restore(new Map([['r', after.resource]]));
    assert.deepEqual(restored, { adopting: 1, dropped: 0 });
    const [adopted] = after.manager.instancesOf('r');
    assert.ok(adopted);
    assert.equal(adopted.status, 'starting', 'requests arriving meanwhile join it');
    await clock.advance(50);
    assert.equal(adopted.status, 'ready');
    assert.equal(adopted.endpoint, 'http://127.0.0.1:1');
    assert.equal(adopted.handle, 'h-1');
    assert.equal(after.provider.starts.length, 0, 'no second start');
    assert.equal(adopted.lastActivityAt, lastActivityAt);
    await clock.advance(19 * SEC);
    assert.equal(adopted.status, 'ready', '59 s after the last activity: still running');
    await clock.advance(2 * SEC);
    await settle();
    assert.equal(adopted.status, 'stopped', 'stopped 60 s after the last activity, not 60 s after the restart');
    assert.equal(after.provider.stops.length, 1);
    before.manager.close();
    after.manager.close();
  });

  it('does not re-adopt what the provider no longer runs, and starts it afresh only for a waiting request', async () => {
    const store = new MemoryStore();
    await store.apply({
      upserts: [
        { resourceId: 'r', instanceKey: '*', groups: [], status: 'ready', handle: 'h-9', startRequestedAt: 1, readyAt: 2, lastActivityAt: 3, updatedAt: 3 },
        { resourceId: 'removed-from-config', instanceKey: '*', groups: [], status: 'ready', startRequestedAt: 1, readyAt: 2, lastActivityAt: 3, updatedAt: 3 },
      ], deletes: [], bootSamples: [{ resourceId: 'r', bootMs: 4_000, at: 1 }], audit: [],
    });
    const s = setup();
    s.provider.state = { state: 'stopped' };
    const { sync } = syncFor(s, store);
    assert.deepEqual(await sync.restore(new Map([['r', s.resource]])), { adopting: 1, dropped: 1 });
    assert.equal(s.manager.estimateBoot('r')?.p50Ms, 4_000, 'boot history restored');
    const [inst] = s.manager.instancesOf('r');
    await settle();
    assert.equal(inst?.status, 'stopped');
    assert.equal(s.provider.starts.length, 0);
    sync.start();
    await s.clock.advance(1_000);
    assert.deepEqual(await store.loadInstances(), [], 'stale records dropped');

    // Same again, but a request is already waiting when the provider answers "stopped".
    const s2 = setup();
    s2.provider.state = { state: 'stopped' };
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const inspect = s2.provider.inspect.bind(s2.provider);
    s2.provider.inspect = async () => { await gate; return inspect(); };
    const store2 = new MemoryStore();
    await store2.apply({ upserts: [{ resourceId: 'r', instanceKey: '*', groups: [], status: 'ready', startRequestedAt: 1, readyAt: 2, lastActivityAt: 3, updatedAt: 3 }], deletes: [], bootSamples: [], audit: [] });
    await syncFor(s2, store2).sync.restore(new Map([['r', s2.resource]]));
    const [inst2] = s2.manager.instancesOf('r');
    assert.ok(inst2);
    const wait = s2.manager.waitUntilReady(inst2, { timeoutMs: 10_000 });
    release();
    await settle();
    assert.equal(s2.provider.starts.length, 1, 'started for the waiting request');
    s2.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:3' };
    s2.probe.ok = true;
    await s2.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:3');
    s.manager.close();
    s2.manager.close();
  });

  it('adopts running instances a provider lists that the store missed', async () => {
    const s = setup();
    const listed = [
      { resourceId: 'r', instanceKey: '*', state: 'running' as const, endpoint: 'http://127.0.0.1:1', handle: 'vm-7' },
      { resourceId: 'other', instanceKey: '*', state: 'running' as const },
      { resourceId: 'r', instanceKey: 'g1', state: 'running' as const },
    ];
    Object.assign(s.provider, { list: async () => listed });
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const { sync } = syncFor(s, new MemoryStore());
    const adopted = sync.adoptListed(new Map([['r', s.resource]]), 1_000);
    await settle();
    assert.equal(await adopted, 1, 'only the key a shared resource can have');
    await s.clock.advance(50);
    const [inst] = s.manager.instancesOf('r');
    assert.equal(inst?.status, 'ready');
    assert.equal(inst.handle, 'vm-7');
    assert.equal(s.provider.starts.length, 0);
    s.manager.close();
  });

  it('maps instance keys back to identities by sharing mode', () => {
    assert.deepEqual(identityOfKey('shared', '*'), { groups: [] });
    assert.equal(identityOfKey('shared', 'g1'), undefined);
    assert.deepEqual(identityOfKey('groups', 'a,b'), { groups: ['a', 'b'] });
    assert.deepEqual(identityOfKey('groups', '*'), { groups: [] });
    assert.deepEqual(identityOfKey('user', 'user:ann'), { groups: [], user: 'ann' });
  });
});
