/**
 * The Redis coordinator on its own, against the real Redis at SMART_PROXY_TEST_REDIS_URL (a unique key
 * prefix per test): lease exclusivity and fencing, readiness reaching a waiter by pub/sub and,
 * when a message is lost, by the periodic read; activity summed over replicas for idle stop.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { InstanceRef } from '../../src/core/ports.ts';
import { RedisCoordinator, type RedisCoordinatorOptions } from '../../src/state/redis/redis-coordinator.ts';
import { cleanPrefix, sharedRedisUrl, uniquePrefix } from './cluster-kit.ts';
import { requireRedis } from '../helpers/system.ts';

await requireRedis(sharedRedisUrl);

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const ref: InstanceRef = { resourceId: 'app', instanceKey: 'g1,g2', groups: ['g1', 'g2'] };
const admin = new Redis(sharedRedisUrl);
const prefixes: string[] = [];
const open: RedisCoordinator[] = [];
after(async () => {
  await Promise.all(open.map((c) => c.close()));
  for (const p of prefixes) await cleanPrefix(sharedRedisUrl, p);
  admin.disconnect();
});

function coordinators(n: number, over: Partial<RedisCoordinatorOptions> = {}): RedisCoordinator[] {
  const keyPrefix = uniquePrefix('coord');
  prefixes.push(keyPrefix);
  return Array.from({ length: n }, (_, i) => {
    const c = new RedisCoordinator({
      url: sharedRedisUrl, keyPrefix, logger: quiet, replicaId: `r${i}`, leaseMs: 5_000, pollIntervalMs: 60_000, activityFlushIntervalMs: 50, fallbackToLocal: false, ...over,
    });
    open.push(c);
    return c;
  });
}

const noSignal = (): AbortSignal => new AbortController().signal;

describe('RedisCoordinator', () => {
  it('one replica leads; the others wait and get the endpoint by pub/sub (the periodic read is 60 s here)', async () => {
    const [a, b, c] = coordinators(3) as [RedisCoordinator, RedisCoordinator, RedisCoordinator];
    const first = await a.claimStart(ref, noSignal());
    assert.equal(first.kind, 'lead');
    if (first.kind !== 'lead') return;
    assert.equal(first.lease.takeover, false);
    const waiting = [b.claimStart(ref, noSignal()), c.claimStart(ref, noSignal())];
    // Both have read the record, failed the lease and parked.
    while (b.waiting + c.waiting < 2) await new Promise((r) => setImmediate(r));
    const t0 = Date.now();
    await first.lease.ready('http://127.0.0.1:9/', 'vm-7');
    const got = await Promise.all(waiting);
    assert.deepEqual(got, [{ kind: 'ready', endpoint: 'http://127.0.0.1:9/', handle: 'vm-7' }, { kind: 'ready', endpoint: 'http://127.0.0.1:9/', handle: 'vm-7' }]);
    assert.ok(Date.now() - t0 < 5_000, 'woken by the message, not by the 60 s read');
    // The cluster record's format (version 1), pinned: key order is Lua's, so compare parsed.
    const [key] = await admin.keys(`${prefixes.at(-1) ?? ''}c:rec:*`);
    assert.equal(key, `${prefixes.at(-1) ?? ''}c:rec:app/g1%2Cg2`);
    const raw = JSON.parse(await admin.get(key) ?? '{}') as Record<string, unknown>;
    assert.equal(typeof raw.at, 'number');
    assert.deepEqual({ ...raw, at: 0 }, { v: 1, state: 'ready', token: first.lease.token, owner: 'r0', at: 0, endpoint: 'http://127.0.0.1:9/', handle: 'vm-7' });
  });

  it('a lost message is made up by the periodic read of the record', async () => {
    const [a, b] = coordinators(2, { pollIntervalMs: 100 }) as [RedisCoordinator, RedisCoordinator];
    const lead = await a.claimStart(ref, noSignal());
    assert.equal(lead.kind, 'lead');
    const waiting = b.claimStart(ref, noSignal());
    const rec = await a.readRecord(ref);
    assert.equal(rec?.state, 'starting');
    // Written behind pub/sub's back: no PUBLISH, as if b had been disconnected.
    const key = (await admin.keys(`${prefixes.at(-1) ?? ''}c:rec:*`))[0] ?? '';
    await admin.set(key, JSON.stringify({ ...rec, state: 'ready', endpoint: 'http://127.0.0.1:10/' }));
    assert.deepEqual(await waiting, { kind: 'ready', endpoint: 'http://127.0.0.1:10/', handle: undefined });
  });

  it('an expired lease is taken over with a newer fencing token; the old holder cannot overwrite the record', async () => {
    const [a, b] = coordinators(2, { leaseMs: 300, pollIntervalMs: 50 }) as [RedisCoordinator, RedisCoordinator];
    const old = await a.claimStart(ref, noSignal());
    assert.equal(old.kind, 'lead');
    if (old.kind !== 'lead') return;
    // a is paused past its lease (simulated: the lease key expires under it).
    const keys = await admin.keys(`${prefixes.at(-1) ?? ''}c:lease:start:*`);
    assert.equal(keys.length, 1);
    await admin.del(...keys);
    const next = await b.claimStart(ref, noSignal());
    assert.equal(next.kind, 'lead');
    if (next.kind !== 'lead') return;
    assert.equal(next.lease.takeover, true, 'the record said starting: ask the provider first');
    assert.ok(next.lease.token > old.lease.token);
    await next.lease.ready('http://127.0.0.1:11/', undefined);
    // a wakes up and reports its (stale) outcome: the fenced write refuses it.
    await old.lease.ready('http://127.0.0.1:99/', undefined);
    const rec = await b.readRecord(ref);
    assert.equal(rec?.endpoint, 'http://127.0.0.1:11/');
    assert.equal(rec.token, next.lease.token);
  });

  it('a replica that closes (rolling restart) gives its start lease up: the next one takes over at once', async () => {
    const [a, b] = coordinators(2) as [RedisCoordinator, RedisCoordinator];
    const lead = await a.claimStart(ref, noSignal());
    assert.equal(lead.kind, 'lead');
    await a.close();
    const next = await b.claimStart(ref, AbortSignal.timeout(3_000));
    assert.equal(next.kind, 'lead', 'not after the 5 s lease: at once');
    if (next.kind === 'lead') assert.equal(next.lease.takeover, true);
  });

  it('a failed start cools the instance down cluster-wide for failureCooldownMs', async () => {
    const [a, b] = coordinators(2) as [RedisCoordinator, RedisCoordinator];
    const lead = await a.claimStart(ref, noSignal());
    if (lead.kind !== 'lead') throw new Error('expected to lead');
    await lead.lease.failed('provider said no');
    await assert.rejects(b.claimStart(ref, noSignal(), { failureCooldownMs: 60_000 }), (err: unknown) => {
      assert.ok(err instanceof SmartProxyError);
      assert.equal(err.code, 'SP_RESOURCE_FAILED');
      assert.ok((err.retryAfterS ?? 0) > 50);
      return true;
    });
    const after = await b.claimStart(ref, noSignal(), { failureCooldownMs: 0 });
    assert.equal(after.kind, 'lead', 'past the cool-down: start again');
  });

  it('activity flush: no timer while nothing is ready here; runs while something is, and stops again after', async () => {
    const [c] = coordinators(1) as [RedisCoordinator];
    let ready: Array<{ ref: InstanceRef; lastActivityAt: number; activeConnections: number }> = [];
    c.attach({ readyInstances: () => ready, stoppedElsewhere: () => undefined });
    assert.equal(c.flushArmed, false, 'an idle replica never wakes to flush');
    ready = [{ ref, lastActivityAt: Date.now(), activeConnections: 1 }];
    c.activityExpected();
    assert.equal(c.flushArmed, true);
    // Bounded waits on real I/O: the flush lands in Redis, then, with nothing ready, the timer ends.
    const key = `${prefixes.at(-1) ?? ''}c:act:app/g1%2Cg2`;
    const deadline = Date.now() + 5_000;
    while ((await admin.hexists(key, 'r0')) === 0) assert.ok(Date.now() < deadline, 'the activity was flushed');
    assert.equal(c.flushArmed, true, 'still armed while an instance is ready');
    ready = [];
    while (c.flushArmed) {
      assert.ok(Date.now() < deadline, 'the timer ends once nothing is ready');
      await new Promise((r) => setImmediate(r));
    }
  });

  it('idle stop: kept while another replica has an open connection or recent activity; then decided once', async () => {
    const [a, b] = coordinators(2) as [RedisCoordinator, RedisCoordinator];
    const lead = await a.claimStart(ref, noSignal());
    if (lead.kind !== 'lead') throw new Error('expected to lead');
    await lead.lease.ready('http://127.0.0.1:12/', undefined);
    const old = Date.now() - 60_000;
    let bConnections = 1;
    b.attach({ readyInstances: () => [{ ref, lastActivityAt: old, activeConnections: bConnections }], stoppedElsewhere: () => undefined });
    await b.flushActivity();
    const local = { idleStopMs: 10_000, lastActivityAt: old, activeConnections: 0, endpoint: 'http://127.0.0.1:12/' };
    assert.equal(await a.decideStop(ref, () => local), 'keep', 'b holds a connection');
    bConnections = 0;
    await b.flushActivity();
    assert.equal(await a.decideStop(ref, () => ({ ...local, lastActivityAt: Date.now() })), 'keep', 'recent activity here');
    // Idle at the first look, a connection opened during the wait: the second look keeps it.
    let calls = 0;
    assert.equal(await a.decideStop(ref, () => (++calls >= 3 ? { ...local, activeConnections: 1 } : local)), 'keep', 'second look');
    assert.equal(calls, 3);
    const decisions = await Promise.all([a.decideStop(ref, () => local), b.decideStop(ref, () => local), a.decideStop(ref, () => local)]);
    assert.equal(decisions.filter((d) => d === 'stop').length, 1, `exactly one stop: ${decisions.join(', ')}`);
    assert.ok(decisions.every((d) => d === 'stop' || d === 'keep' || d === 'gone'));
    // Only the replica whose decision won holds the stop lease, and only its stop record is
    // accepted (fenced by that lease): the others' would be refused.
    const winner = decisions[1] === 'stop' ? b : a;
    winner.stopped(ref);
    for (let i = 0; (await a.readRecord(ref))?.state !== 'stopped'; i++) {
      if (i > 10_000) throw new Error('the winner\'s stop record never landed');
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(await b.decideStop(ref, () => local), 'gone', 'stopped elsewhere: forget it locally');
  });
});
