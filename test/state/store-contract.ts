/**
 * The Store contract (src/core/ports.ts), run against every implementation: memory and
 * SQLite now, Redis later. Each case gets a fresh store from `make`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { InstanceRecord, Store, StoreBatch } from '../../src/core/ports.ts';

export interface StoreUnderTest {
  readonly name: string;
  /** A fresh, empty store. */
  make(): Promise<Store>;
  /** Store options the suite relies on. */
  readonly maxBootSamplesPerResource: number;
  readonly maxAuditEvents: number;
}

const empty: StoreBatch = { upserts: [], deletes: [], bootSamples: [], audit: [] };

export function record(over: Partial<InstanceRecord> = {}): InstanceRecord {
  return {
    resourceId: 'app', instanceKey: '*', groups: [], user: undefined, handle: 'vm-1', endpoint: 'http://127.0.0.1:9/x',
    status: 'ready', startRequestedAt: 1_000, readyAt: 2_000, lastActivityAt: 3_000, updatedAt: 3_000, ...over,
  };
}

export function storeContract(s: StoreUnderTest): void {
  void describe(`Store contract: ${s.name}`, () => {
    void it('round-trips instance records and replaces them by (resource, key)', async () => {
      const store = await s.make();
      try {
        const a = record();
        const b = record({ resourceId: 'nb', instanceKey: 'g1,g2', groups: ['g1', 'g2'], user: 'ann', handle: undefined, endpoint: undefined, status: 'starting' });
        await store.apply({ ...empty, upserts: [a, b] });
        const byKey = (rs: InstanceRecord[]) => new Map(rs.map((r) => [`${r.resourceId}/${r.instanceKey}`, r]));
        let got = byKey(await store.loadInstances());
        assert.equal(got.size, 2);
        assert.deepEqual(got.get('app/*'), a);
        assert.deepEqual(got.get('nb/g1,g2'), b);
        await store.apply({ ...empty, upserts: [record({ lastActivityAt: 9_000, updatedAt: 9_000 })] });
        got = byKey(await store.loadInstances());
        assert.equal(got.size, 2);
        assert.equal(got.get('app/*')?.lastActivityAt, 9_000);
      } finally {
        await store.close();
      }
    });

    void it('deletes records; deleting an unknown one is not an error', async () => {
      const store = await s.make();
      try {
        await store.apply({ ...empty, upserts: [record()] });
        await store.apply({ ...empty, deletes: [{ resourceId: 'app', instanceKey: '*' }, { resourceId: 'nope', instanceKey: 'x' }] });
        assert.deepEqual(await store.loadInstances(), []);
      } finally {
        await store.close();
      }
    });

    void it('applying the same batch twice leaves the same records (a retried flush is safe)', async () => {
      const store = await s.make();
      try {
        const batch: StoreBatch = { ...empty, upserts: [record(), record({ instanceKey: 'b' })], deletes: [{ resourceId: 'app', instanceKey: 'gone' }] };
        await store.apply(batch);
        await store.apply(batch);
        assert.equal((await store.loadInstances()).length, 2);
      } finally {
        await store.close();
      }
    });

    void it('keeps the newest boot samples per resource, oldest first', async () => {
      const store = await s.make();
      try {
        const n = s.maxBootSamplesPerResource;
        const samples = Array.from({ length: n + 5 }, (_, i) => ({ resourceId: 'app', bootMs: i, at: i }));
        await store.apply({ ...empty, bootSamples: samples.slice(0, 3) });
        await store.apply({ ...empty, bootSamples: [...samples.slice(3), { resourceId: 'other', bootMs: 77, at: 1 }] });
        const got = await store.loadBootSamples(1_000);
        const app = got.filter((x) => x.resourceId === 'app').map((x) => x.bootMs);
        assert.deepEqual(app, samples.slice(5).map((x) => x.bootMs), 'pruned to the newest, in order');
        assert.deepEqual(got.filter((x) => x.resourceId === 'other').map((x) => x.bootMs), [77]);
        const last2 = (await store.loadBootSamples(2)).filter((x) => x.resourceId === 'app').map((x) => x.bootMs);
        assert.deepEqual(last2, [n + 3, n + 4]);
      } finally {
        await store.close();
      }
    });

    void it('returns audit events newest first, bounded', async () => {
      const store = await s.make();
      try {
        const events = Array.from({ length: s.maxAuditEvents + 3 }, (_, i) => ({
          at: i, type: 'instance-changed', resourceId: 'app', instanceKey: '*', status: 'ready', reason: `n${i}`,
        }));
        await store.apply({ ...empty, audit: events });
        const recent = await store.recentAudit(2);
        assert.deepEqual(recent.map((e) => e.reason), [`n${events.length - 1}`, `n${events.length - 2}`]);
        assert.deepEqual(recent[0], events.at(-1));
        assert.equal((await store.recentAudit(1_000_000)).length, s.maxAuditEvents);
        await store.apply({ ...empty, audit: [{ at: 1, type: 'start-requested', resourceId: 'x' }] });
        const [latest] = await store.recentAudit(1);
        assert.equal(latest?.type, 'start-requested');
        assert.equal(latest?.instanceKey, undefined);
      } finally {
        await store.close();
      }
    });

    void it('queries audit events by resource, type, actor and time, newest first, paged by id', async () => {
      const store = await s.make();
      try {
        const events = Array.from({ length: s.maxAuditEvents }, (_, i) => ({
          at: 1_000 + i, type: i % 3 === 0 ? 'admin-stop' : 'instance-changed', resourceId: i % 2 === 0 ? 'a' : 'b',
          instanceKey: '*', ...(i % 3 === 0 ? { actor: 'admin:ann' } : {}), reason: `n${i}`,
        }));
        await store.apply({ ...empty, audit: events.slice(0, 10) });
        await store.apply({ ...empty, audit: events.slice(10) });
        const all = await store.queryAudit({ limit: 100 });
        assert.equal(all.length, events.length);
        assert.deepEqual(all.map((e) => e.reason), events.map((e) => e.reason).reverse(), 'newest first');
        assert.ok(all.every((e, i) => i === 0 || e.id < (all[i - 1] as { id: number }).id), 'ids fall');
        const stops = await store.queryAudit({ type: 'admin-stop', actor: 'admin:ann', limit: 100 });
        assert.deepEqual(stops.map((e) => e.reason), events.filter((e) => e.type === 'admin-stop').map((e) => e.reason).reverse());
        assert.equal(stops[0]?.actor, 'admin:ann');
        const aInWindow = await store.queryAudit({ resourceId: 'a', sinceMs: 1_010, untilMs: 1_020, limit: 100 });
        assert.deepEqual(aInWindow.map((e) => e.at), [1_018, 1_016, 1_014, 1_012, 1_010]);
        // Paging: pages of 7 by cursor cover everything once, in order.
        const seen: string[] = [];
        let before: number | undefined;
        for (;;) {
          const page = await store.queryAudit({ limit: 7, beforeId: before });
          if (page.length === 0) break;
          seen.push(...page.map((e) => e.reason ?? ''));
          before = page.at(-1)?.id;
        }
        assert.deepEqual(seen, events.map((e) => e.reason).reverse());
        assert.deepEqual(await store.queryAudit({ limit: 0 }), []);
      } finally {
        await store.close();
      }
    });

    void it('rejects every call after close; close is idempotent', async () => {
      const store = await s.make();
      await store.close();
      await store.close();
      await assert.rejects(store.loadInstances());
      await assert.rejects(store.apply(empty));
    });
  });
}
