/**
 * Three (or two) real proxy processes on one Redis and one mock cloud: one start
 * cluster-wide, takeover after kill -9 of the replica holding the start lease, idle stop
 * decided once and never under an open stream on another replica.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Agent } from 'undici';
import type { MockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { decodeClusterRecord, type ClusterRecord } from '../../src/state/redis/redis-coordinator.ts';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-process.ts';
import { cleanPrefix, newCloud, replicaConfig, sharedRedisUrl, uniquePrefix } from './cluster-kit.ts';
import { requireRedis } from '../helpers/system.ts';

await requireRedis(sharedRedisUrl);

const agent = new Agent({ connections: 2_000 });
after(() => agent.close());

async function get(url: string, signal?: AbortSignal): Promise<{ status: number; body: string }> {
  const r = await fetch(url, { dispatcher: agent, signal });
  return { status: r.status, body: await r.text() };
}

async function replicas(cloud: MockCloud, prefix: string, n: number, extra: object = {}): Promise<ProxyProcess[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => startProxyProcess(replicaConfig(cloud, { redisUrl: sharedRedisUrl, prefix, replicaId: `r${i}`, ...extra }))));
}

async function readRecord(admin: Redis, prefix: string, id: string) {
  const text = await admin.get(`${prefix}c:rec:${id}`);
  return text === null ? undefined : decodeClusterRecord(text);
}

describe('replicas on one Redis', () => {
  it('1,000 concurrent cold requests spread over three replicas: one provider start, all 200', async (t) => {
    const prefix = uniquePrefix('cold');
    const cloud = await newCloud(300);
    const ps = await replicas(cloud, prefix, 3);
    try {
      const t0 = performance.now();
      const results = await Promise.all(Array.from({ length: 1_000 }, (_, i) => get(`${ps[i % 3]?.url ?? ''}/smart_proxy/app/-/n/${i}`)));
      t.diagnostic(`1,000 cold requests over 3 replicas (boot 300 ms): all answered in ${Math.round(performance.now() - t0)} ms`);
      const statuses = new Map<number, number>();
      for (const r of results) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      assert.deepEqual([...statuses], [[200, 1_000]], ps.map((p) => p.output()).join('\n'));
      assert.equal(cloud.stats.spans, 1, 'exactly one provider start');
      assert.equal(cloud.vms().length, 1);
      assert.match(results[999]?.body ?? '', /n\/999/);
      for (const p of ps) {
        const s = await p.status();
        assert.equal(s.instances.find((i) => i.resourceId === 'app')?.status, 'ready');
      }
    } finally {
      await Promise.all(ps.map((p) => p.dispose()));
      await cloud.close();
      await cleanPrefix(sharedRedisUrl, prefix);
    }
  });

  it('kill -9 of the replica holding the start lease mid-boot: another takes over the watch, no second machine, all held requests on the others get 200', async () => {
    const prefix = uniquePrefix('takeover');
    const cloud = await newCloud(200);
    const releaseBoots = cloud.holdBoots();
    const admin = new Redis(sharedRedisUrl);
    const ps = await replicas(cloud, prefix, 3);
    try {
      const pending = ps.map((p) => Array.from({ length: 30 }, (_, i) => get(`${p.url}/smart_proxy/app/-/held/${i}`).catch((err: unknown) => ({ status: 0, body: String(err) }))));
      await Promise.all(ps.map((p) => p.waitFor((s) => s.held === 30)));
      await cloud.waitForVm((vm) => vm.state === 'booting');
      const first = await readRecord(admin, prefix, 'app/*');
      assert.equal(first?.state, 'starting');
      const leader = Number(first.owner.slice(1));
      assert.ok(leader >= 0 && leader < 3, first.owner);
      await ps[leader]?.dispose();
      // The lease (1.5 s) expires; a survivor takes over: it inspects (booting), starts nothing.
      let rec: ClusterRecord | undefined = first;
      while (rec?.owner === first.owner) rec = await readRecord(admin, prefix, 'app/*');
      assert.equal(rec?.state, 'starting');
      assert.ok((rec?.token ?? 0) > first.token, 'a newer fencing token');
      releaseBoots();
      const survivors = pending.filter((_, i) => i !== leader).flat();
      const results = await Promise.all(survivors);
      assert.deepEqual(results.map((r) => r.status), Array<number>(60).fill(200), ps.map((p) => p.output()).join('\n'));
      assert.equal(cloud.stats.spans, 1, 'still one provider start');
      assert.equal(cloud.vms().length, 1, 'still one machine');
      await Promise.all(pending[leader] ?? []);
    } finally {
      releaseBoots();
      await Promise.all(ps.map((p) => p.dispose()));
      admin.disconnect();
      await cloud.close();
      await cleanPrefix(sharedRedisUrl, prefix);
    }
  });

  it('idle stop runs once, and never while a stream is open on another replica', async () => {
    const prefix = uniquePrefix('idle');
    const cloud = await newCloud(0);
    const ps = await replicas(cloud, prefix, 2, { resources: { app: { provider: 'cloud', idleStopMs: 1_000 } } });
    const [r0, r1] = ps as [ProxyProcess, ProxyProcess];
    const stream = new AbortController();
    try {
      assert.equal((await get(`${r0.url}/smart_proxy/app/-/warm`)).status, 200);
      // A long stream on r1 (the replica that did not start the instance).
      const res = await fetch(`${r1.url}/smart_proxy/app/-/__sse?n=1000&intervalMs=250`, { dispatcher: agent, signal: stream.signal });
      assert.equal(res.status, 200);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      // 16 events = 4 s: four idle periods with no request anywhere, one stream open on r1.
      let events = 0;
      while (events < 16) {
        const { value } = await reader.read();
        events += (Buffer.from(value ?? new Uint8Array()).toString().match(/^data:/gm) ?? []).length;
      }
      assert.equal(cloud.stats.stops, 0, 'no stop while the stream is open on r1');
      assert.equal(cloud.vms()[0]?.state, 'running');
      stream.abort();
      await cloud.waitForVm((vm) => vm.state === 'stopped');
      await Promise.all(ps.map((p) => p.waitFor((s) => s.instances.every((i) => i.status === 'stopped'))));
      assert.equal(cloud.stats.stops, 1, 'stopped once');
      // And a cold request after the stop starts it again, once.
      assert.equal((await get(`${r1.url}/smart_proxy/app/-/again`)).status, 200);
      assert.equal(cloud.stats.spans, 2);
    } finally {
      stream.abort();
      await Promise.all(ps.map((p) => p.dispose()));
      await cloud.close();
      await cleanPrefix(sharedRedisUrl, prefix);
    }
  });
});
