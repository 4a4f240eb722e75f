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

    void it('rejects every call after close; close is idempotent', async () => {
      const store = await s.make();
      await store.close();
      await store.close();
      await assert.rejects(store.loadInstances());
      await assert.rejects(store.apply(empty));
    });
  });
}
