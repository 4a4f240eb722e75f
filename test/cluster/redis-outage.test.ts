/**
 * Redis goes away and comes back under load, with real proxy processes on a private
 * redis-server (killed and restarted on the same port; the shared 6379 is left alone).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Agent } from 'undici';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-process.ts';
import { PrivateRedis, freePort, newCloud, replicaConfig, uniquePrefix } from './cluster-kit.ts';

const agent = new Agent({ connections: 64 });
after(() => agent.close());

async function get(url: string): Promise<{ status: number; code: string | undefined }> {
  try {
    const r = await fetch(url, { dispatcher: agent, headers: { accept: 'application/json' } });
    const text = await r.text();
    const code = r.status === 200 ? undefined : (JSON.parse(text) as { code?: string }).code;
    return { status: r.status, code };
  } catch (err) {
    return { status: 0, code: String(err) };
  }
}

const resources = { app: { provider: 'cloud' }, cold0: { provider: 'cloud' }, cold1: { provider: 'cloud' } };

describe('Redis outage', () => {
  it('warm traffic has zero errors while Redis restarts; cold starts get 503 while it is away and work once it is back', async (t) => {
    const redis = new PrivateRedis(await freePort());
    await redis.start();
    const cloud = await newCloud(50);
    const prefix = uniquePrefix('outage');
    const ps = await Promise.all([0, 1].map((i) => startProxyProcess(replicaConfig(cloud, { redisUrl: redis.url, prefix, replicaId: `r${i}`, resources }))));
    const [r0, r1] = ps as [ProxyProcess, ProxyProcess];
    let stop = false;
    let warmOk = 0;
    const warmErrors: string[] = [];
    let progress: (() => void) | undefined;
    const warmProgress = (n: number): Promise<void> => {
      const target = warmOk + n;
      return new Promise((resolve) => {
        progress = () => { if (warmOk >= target) resolve(); };
      });
    };
    const load = async (p: ProxyProcess): Promise<void> => {
      while (!stop) {
        const r = await get(`${p.url}/smart_proxy/app/-/warm`);
        if (r.status === 200) warmOk++;
        else warmErrors.push(`${r.status} ${r.code ?? ''}`);
        progress?.();
      }
    };
    let loads: Promise<void[]> | undefined;
    try {
      for (const p of ps) assert.equal((await get(`${p.url}/smart_proxy/app/-/first`)).status, 200, p.output());
      loads = Promise.all([load(r0), load(r1), load(r0), load(r1)]);
      await warmProgress(40);

      const killedAt = performance.now();
      const okBefore = warmOk;
      await redis.kill();
      const during = await get(`${r0.url}/smart_proxy/cold0/-/x`);
      assert.deepEqual(during, { status: 503, code: 'SP_CLUSTER_UNAVAILABLE' });
      await warmProgress(200);

      await redis.start();
      const outageMs = performance.now() - killedAt;
      const okDuringOutage = warmOk - okBefore;
      // Replicas reconnect with backoff (≤ 2 s): until then a cold start is still a clear 503.
      let cold = await get(`${r1.url}/smart_proxy/cold1/-/x`);
      for (let attempt = 0; cold.status !== 200 && attempt < 200; attempt++) {
        assert.deepEqual(cold, { status: 503, code: 'SP_CLUSTER_UNAVAILABLE' });
        await warmProgress(5);
        cold = await get(`${r1.url}/smart_proxy/cold1/-/x`);
      }
      assert.equal(cold.status, 200, r1.output());
      t.diagnostic(`Redis away ${Math.round(outageMs)} ms: ${okDuringOutage} warm requests served meanwhile; cold start worked ${Math.round(performance.now() - killedAt - outageMs)} ms after Redis was back`);
      // The other replica reconnects on its own backoff: a clear 503 until then, then it joins.
      let join = await get(`${r0.url}/smart_proxy/cold1/-/y`);
      for (let attempt = 0; join.status !== 200 && attempt < 200; attempt++) {
        assert.deepEqual(join, { status: 503, code: 'SP_CLUSTER_UNAVAILABLE' });
        await warmProgress(5);
        join = await get(`${r0.url}/smart_proxy/cold1/-/y`);
      }
      assert.equal(join.status, 200, 'the other replica joins the same instance');
      assert.equal(cloud.vms().filter((v) => v.asId === 'cold1').length, 1, 'cold1 started once');
      assert.equal(cloud.vms().filter((v) => v.asId === 'cold0').length, 0, 'nothing started while Redis was away');
      await warmProgress(20);
      stop = true;
      await loads;
      assert.deepEqual(warmErrors, [], 'zero errors on warm traffic');
      assert.ok(warmOk > 260, `warm requests served: ${warmOk}`);
      for (const p of ps) assert.equal(p.child.exitCode, null, 'no crash');
    } finally {
      stop = true;
      await loads;
      await Promise.all(ps.map((p) => p.dispose()));
      await cloud.close();
      await redis.kill();
    }
  });

  it('with cluster.fallbackToLocal, a cold start while Redis is unreachable starts locally', async () => {
    const cloud = await newCloud(0);
    const deadUrl = `redis://127.0.0.1:${await freePort()}`;
    const p = await startProxyProcess(replicaConfig(cloud, { redisUrl: deadUrl, prefix: uniquePrefix('fallback'), replicaId: 'r0', cluster: { fallbackToLocal: true } }));
    try {
      assert.equal((await get(`${p.url}/smart_proxy/app/-/x`)).status, 200, p.output());
      assert.equal(cloud.stats.spans, 1);
    } finally {
      await p.dispose();
      await cloud.close();
    }
  });
});
