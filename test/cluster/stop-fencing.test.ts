/**
 * Issue 11 item 11: fencing that covers stops, against the real Redis at 127.0.0.1:6379 (a
 * unique key prefix per test). A slow or stale stop never overwrites a newer leader's ready
 * record; a stop lease is renewed while the stop runs; the idle decision compares durations,
 * never one replica's clock with another's; and the manager re-reads local activity after the
 * cluster's answer.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { ManualClock } from '../../src/core/clock.ts';
import type { ClaimOptions, Coordinator, StartClaim, StopDecision } from '../../src/core/coordination.ts';
import type { InstanceRef, Prober } from '../../src/core/ports.ts';
import { ResourceManager } from '../../src/core/resource-manager.ts';
import { RedisCoordinator, type RedisCoordinatorOptions } from '../../src/state/redis/redis-coordinator.ts';
import { collectingLogger, runtimeOf, type Harness } from '../helpers/proxy-harness.ts';
import { ScriptedProvider, settle } from '../core/scripted.ts';
import { cleanPrefix, sharedRedisUrl, uniquePrefix } from './cluster-kit.ts';

const ref: InstanceRef = { resourceId: 'app', instanceKey: '*', groups: [] };
const admin = new Redis(sharedRedisUrl);
const prefixes: string[] = [];
const open: RedisCoordinator[] = [];
after(async () => {
  await Promise.all(open.map((c) => c.close()));
  for (const p of prefixes) await cleanPrefix(sharedRedisUrl, p);
  admin.disconnect();
});

function coordinators(n: number, over: Partial<RedisCoordinatorOptions> = {}, logs: Harness['logs'] = []): RedisCoordinator[] {
  const keyPrefix = uniquePrefix('fence');
  prefixes.push(keyPrefix);
  return Array.from({ length: n }, (_, i) => {
    const c = new RedisCoordinator({
      url: sharedRedisUrl, keyPrefix, logger: collectingLogger(logs), replicaId: `r${i}`, leaseMs: 300, pollIntervalMs: 50, activityFlushIntervalMs: 50, fallbackToLocal: false, ...over,
    });
    open.push(c);
    return c;
  });
}

const noSignal = (): AbortSignal => new AbortController().signal;

async function readyBy(c: RedisCoordinator, endpoint: string): Promise<void> {
  const claim = await c.claimStart(ref, noSignal());
  if (claim.kind !== 'lead') throw new Error('expected to lead');
  await claim.lease.ready(endpoint, undefined);
}

/** Waits (bounded) until `cond` holds, one event-loop turn at a time. */
async function until(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (let turns = 0; !(await cond()); turns++) {
    if (turns > 50_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

describe('stop fencing', () => {
  it('a stale stop (its lease lost while the provider stop was slow) cannot overwrite the newer leader\'s ready record', async () => {
    const logs: Harness['logs'] = [];
    const [a, b] = coordinators(2, {}, logs) as [RedisCoordinator, RedisCoordinator];
    await readyBy(a, 'http://127.0.0.1:11/');
    const idle = { idleStopMs: 1_000, lastActivityAt: Date.now() - 60_000, activeConnections: 0, endpoint: 'http://127.0.0.1:11/' };
    assert.equal(await a.decideStop(ref, () => idle), 'stop');
    // a is paused mid-stop past its lease (simulated: the stop lease expires under it).
    const keys = await admin.keys(`${prefixes.at(-1) ?? ''}c:lease:stop:*`);
    assert.equal(keys.length, 1);
    await admin.del(...keys);
    await readyBy(b, 'http://127.0.0.1:22/');
    const newer = await b.readRecord(ref);
    assert.equal(newer?.state, 'ready');
    // a wakes up and reports its stop: refused by the fence.
    a.stopped(ref);
    await until(async () => (await b.readRecord(ref))?.state !== 'ready' || logs.some((l) => /newer start owns the record/.test(l.msg ?? '')), 'the stale stop to be refused');
    const rec = await b.readRecord(ref);
    assert.equal(rec?.state, 'ready', 'the newer leader\'s record stands');
    assert.equal(rec.endpoint, 'http://127.0.0.1:22/');
    assert.equal(rec.token, newer.token);
  });

  it('the stop lease is renewed while the stop runs: no start begins under a slow stop; once stopped, the next claim leads', async () => {
    const [a, b] = coordinators(2) as [RedisCoordinator, RedisCoordinator];
    await readyBy(a, 'http://127.0.0.1:11/');
    const idle = { idleStopMs: 1_000, lastActivityAt: Date.now() - 60_000, activeConnections: 0, endpoint: 'http://127.0.0.1:11/' };
    assert.equal(await a.decideStop(ref, () => idle), 'stop');
    // The provider stop takes more than four lease lifetimes (300 ms each): b keeps waiting.
    await assert.rejects(b.claimStart(ref, AbortSignal.timeout(1_300)), (err: Error) => err.name === 'TimeoutError');
    a.stopped(ref);
    await until(async () => (await b.readRecord(ref))?.state === 'stopped', 'the stop record');
    const stoppedToken = (await b.readRecord(ref))?.token ?? Infinity;
    const next = await b.claimStart(ref, AbortSignal.timeout(3_000));
    assert.equal(next.kind, 'lead');
    if (next.kind === 'lead') assert.ok(next.lease.token > stoppedToken, 'a newer token than the stop\'s');
  });

  it('idle is judged by durations: a replica whose clock is an hour behind, just used, keeps the instance', async () => {
    const behindMs = 3_600_000;
    const [a] = coordinators(1);
    const skewed = new RedisCoordinator({
      url: sharedRedisUrl, keyPrefix: prefixes.at(-1) as string, logger: collectingLogger([]), replicaId: 'skewed', leaseMs: 300, pollIntervalMs: 50,
      activityFlushIntervalMs: 50, fallbackToLocal: false, now: () => Date.now() - behindMs,
    });
    open.push(skewed);
    if (a === undefined) throw new Error('no coordinator');
    await readyBy(a, 'http://127.0.0.1:11/');
    // Used on the skewed replica just now (its own clock), no open connection.
    skewed.attach({ readyInstances: () => [{ ref, lastActivityAt: Date.now() - behindMs - 10, activeConnections: 0 }], stoppedElsewhere: () => undefined });
    await skewed.flushActivity();
    const idleHere = { idleStopMs: 60_000, lastActivityAt: Date.now() - 120_000, activeConnections: 0, endpoint: 'http://127.0.0.1:11/' };
    assert.equal(await a.decideStop(ref, () => idleHere), 'keep', 'used 10 ms ago on the other replica, whatever its clock says');
  });
});

class AnswerLaterCoordinator implements Coordinator {
  cancelled: Array<string | undefined> = [];
  stops = 0;
  answer: ((d: StopDecision) => void) | undefined;

  async claimStart(_ref: InstanceRef, _signal: AbortSignal, _options?: ClaimOptions): Promise<StartClaim> {
    return { kind: 'ready', endpoint: 'http://10.0.0.5:80' };
  }

  decideStop(): Promise<StopDecision> {
    return new Promise((resolve) => { this.answer = resolve; });
  }

  stopped(): void {
    this.stops++;
  }

  cancelStop(_ref: InstanceRef, endpoint: string | undefined): void {
    this.cancelled.push(endpoint);
  }
}

describe('the idle stop decision on the manager', () => {
  it('re-reads local activity after the cluster answered: a request during the round trip cancels the stop', async () => {
    const clock = new ManualClock();
    const provider = new ScriptedProvider();
    const prober: Prober = { probe: async () => ({ ok: true }) };
    const coordinator = new AnswerLaterCoordinator();
    const manager = new ResourceManager({ clock, prober, logger: collectingLogger([]), maxHeldRequestsTotal: 100, coordinator });
    const resource = runtimeOf({ id: 'r', provider, bootTimeoutMs: 10_000, idleStopMs: 1_000 });
    const inst = manager.selectInstance(resource, [], undefined);
    await manager.waitUntilReady(inst, { timeoutMs: 5_000 });
    await clock.advance(1_100);
    await settle();
    assert.ok(coordinator.answer !== undefined, 'idle here: the cluster was asked');
    manager.touch(inst); // a request arrives while Redis answers
    coordinator.answer('stop');
    await settle();
    assert.equal(inst.status, 'ready', 'not stopped under a fresh request');
    assert.equal(provider.stops.length, 0);
    assert.equal(coordinator.stops, 0);
    assert.deepEqual(coordinator.cancelled, ['http://10.0.0.5:80'], 'the decision is undone in the cluster');
    manager.close();
  });
});
