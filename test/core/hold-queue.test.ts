/**
 * Held requests on a virtual clock: one deadline timer for all of them (not one each), each
 * still ended at its own timeout, a cancelled one gone at once; and the deadline heap under
 * them.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import { DeadlineHeap, type Deadlined } from '../../src/core/deadline-heap.ts';
import { ReleaseRamp } from '../../src/core/release-ramp.ts';
import type { SmartProxyError } from '../../src/core/errors.ts';
import type { Prober, Provider } from '../../src/core/ports.ts';
import { ResourceManager, type HeldRequest } from '../../src/core/resource-manager.ts';
import { collectingLogger, runtimeOf } from '../helpers/proxy-harness.ts';

/** A provider whose instances start and never get further: everything stays held. */
const startingForever: Provider = {
  kind: 'forever',
  start: async () => ({ handle: 'h' }),
  inspect: async () => ({ state: 'starting' }),
  stop: async () => undefined,
};

function setup() {
  const clock = new ManualClock();
  const prober: Prober = { probe: async () => ({ ok: false, reason: 'refused' }) };
  const manager = new ResourceManager({ clock, prober, logger: collectingLogger([]), maxHeldRequestsTotal: 10_000 });
  const resource = runtimeOf({ id: 'r', provider: startingForever, bootTimeoutMs: 1_000_000 });
  const inst = manager.selectInstance(resource, [], undefined);
  const ended: Array<{ id: number; endpoint: string | undefined; err: Error | undefined; at: number }> = [];
  const hold = (id: number, timeoutMs: number): HeldRequest => {
    const h = manager.hold(inst, { timeoutMs }, (endpoint, err) => ended.push({ id, endpoint, err, at: clock.now() }));
    assert.ok(typeof h === 'object' && 'pending' in h, `request ${id} was not held`);
    return h;
  };
  return { clock, manager, inst, ended, hold };
}

describe('hold queue', () => {
  it('arms one timer for all held requests, and ends each at its own timeout, earliest first', async () => {
    const { clock, manager, ended, hold } = setup();
    const t0 = clock.now();
    hold(0, 5_000);
    // Let the start flight set its own timers (provider polls), then count.
    await clock.advance(0);
    const timersWithOne = clock.pending;
    // Deadlines out of arrival order, some shared.
    const timeouts = [3_000, 1_000, 4_000, 1_000, 2_000, 6_000, 2_500];
    timeouts.forEach((ms, i) => hold(i + 1, ms));
    assert.equal(clock.pending, timersWithOne, 'held requests added timers');
    assert.equal(manager.heldTotal, 8);

    await clock.advance(999);
    assert.equal(ended.length, 0);
    await clock.advance(1);
    assert.deepEqual(ended.map((e) => e.id).sort(), [2, 4]);
    await clock.advance(4_000);
    assert.deepEqual(ended.map((e) => e.id), [2, 4, 5, 7, 1, 3, 0]);
    for (const e of ended) {
      const err = e.err as SmartProxyError;
      assert.equal(err.code, 'SP_BOOT_TIMEOUT');
      const waited = err.data.waitedMs as number;
      assert.equal(e.at - t0, waited, `request ${e.id} ended late`);
      assert.equal(e.endpoint, undefined);
    }
    assert.equal(manager.heldTotal, 1);
    await clock.advance(1_000);
    assert.deepEqual(ended.map((e) => e.id), [2, 4, 5, 7, 1, 3, 0, 6]);
    assert.equal(manager.heldTotal, 0);
    manager.close();
  });

  it('a cancelled hold (the client left) is gone at once, ends once, and takes its deadline with it', async () => {
    const { clock, manager, inst, ended, hold } = setup();
    // The first hold starts the instance: its start flight's timers are not the hold's.
    const first = hold(0, 10_000);
    await clock.advance(0);
    const withOne = clock.pending;
    const a = hold(1, 1_000);
    const b = hold(2, 2_000);
    assert.equal(clock.pending, withOne, 'a timer per held request');
    a.reject(new Error('client gone'));
    assert.equal(manager.heldTotal, 2);
    assert.equal(inst.waiters.size, 2);
    assert.equal(a.pending, false);
    assert.deepEqual(ended.map((e) => [e.id, e.err?.message]), [[1, 'client gone']]);
    // Ending it again changes nothing; nor does its old deadline.
    a.reject(new Error('again'));
    a.resolve('http://127.0.0.1:1');
    await clock.advance(1_500);
    assert.equal(ended.length, 1);
    b.reject(new Error('client gone'));
    first.reject(new Error('client gone'));
    assert.equal(manager.heldTotal, 0);
    assert.equal(clock.pending, withOne - 1, 'the deadline timer outlived the last held request');
    manager.close();
  });

  it('the promise form ends on abort and at its timeout like the callback form', async () => {
    const { clock, manager, inst } = setup();
    const ac = new AbortController();
    const aborted = manager.waitUntilReady(inst, { timeoutMs: 1_000, signal: ac.signal });
    const timedOut = assert.rejects(manager.waitUntilReady(inst, { timeoutMs: 1_000 }), (e: SmartProxyError) => e.code === 'SP_BOOT_TIMEOUT');
    assert.equal(manager.heldTotal, 2);
    ac.abort(new Error('gone'));
    await assert.rejects(aborted, /gone/);
    assert.equal(manager.heldTotal, 1);
    await clock.advance(1_000);
    await timedOut;
    assert.equal(manager.heldTotal, 0);
    manager.close();
  });
});

describe('release ramp', () => {
  it('keeps to its concurrency when a released request ends, and pumps, within its release', async () => {
    const clock = new ManualClock();
    const waiting = new Set(Array.from({ length: 100 }, (_, i) => i));
    let inFlight = 0;
    let most = 0;
    const released: number[] = [];
    const ramp: ReleaseRamp<number> = new ReleaseRamp(clock, 4, 2_000, {
      waiting: () => waiting,
      waitingCount: () => waiting.size,
      inFlight: () => inFlight,
      canRelease: () => true,
      release: (w) => {
        waiting.delete(w);
        released.push(w);
        inFlight++;
        most = Math.max(most, inFlight);
        // Every third request's client has left: its forward ends at once, inside the release.
        if (w % 3 === 0) {
          inFlight--;
          ramp.pump();
        }
      },
    });
    ramp.pump();
    assert.ok(most <= 4, `${most} in flight at once`);
    // The rest end one by one; each end lets the next go.
    while (waiting.size > 0) {
      await clock.advance(1);
      if (inFlight > 0) inFlight--;
      ramp.pump();
      assert.ok(inFlight <= 4, `${inFlight} in flight at once`);
    }
    assert.deepEqual(released, Array.from({ length: 100 }, (_, i) => i), 'oldest first, each once');
    ramp.cancel();
  });
});

describe('deadline heap', () => {
  it('gives items back earliest first under random pushes and removals', () => {
    // A fixed LCG: the same sequence every run, many shapes of heap.
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 50; round++) {
      const heap = new DeadlineHeap<Deadlined>();
      const live = new Set<Deadlined>();
      for (let op = 0; op < 200; op++) {
        if (live.size > 0 && rand(3) === 0) {
          const victim = [...live][rand(live.size)]!;
          heap.remove(victim);
          live.delete(victim);
          assert.equal(victim.heapIndex, -1);
        } else {
          const item: Deadlined = { deadline: rand(100), heapIndex: -1 };
          heap.push(item);
          live.add(item);
        }
        assert.equal(heap.size, live.size);
        const least = Math.min(...[...live].map((x) => x.deadline));
        assert.equal(heap.peek()?.deadline ?? Infinity, least);
      }
      const out: number[] = [];
      for (let top = heap.peek(); top !== undefined; top = heap.peek()) {
        out.push(top.deadline);
        heap.remove(top);
      }
      assert.deepEqual(out, [...live].map((x) => x.deadline).sort((a, b) => a - b));
    }
  });

  it('ignores the removal of an item that is not in it', () => {
    const heap = new DeadlineHeap<Deadlined>();
    const a = { deadline: 1, heapIndex: -1 };
    const b = { deadline: 2, heapIndex: -1 };
    heap.push(a);
    heap.remove(b);
    heap.remove(a);
    heap.remove(a);
    assert.equal(heap.size, 0);
  });
});
