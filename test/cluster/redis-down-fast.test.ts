/**
 * Issue 11 item 7, the cluster store: with Redis known to be down, a cold request gets its
 * 503 SP_CLUSTER_UNAVAILABLE at once (it waited for a command timeout before: about 1.5 s).
 * A real proxy process on a private redis-server that the test kills (the shared 6379 is left
 * alone); warm traffic is not asked about.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Agent } from 'undici';
import { startProxyProcess } from '../helpers/proxy-process.ts';
import { PrivateRedis, freePort, newCloud, replicaConfig, uniquePrefix } from './cluster-kit.ts';

const agent = new Agent({ connections: 16 });
after(() => agent.close());

async function timedGet(url: string): Promise<{ status: number; code: string | undefined; retryAfter: string | null; ms: number }> {
  const t0 = performance.now();
  const r = await fetch(url, { dispatcher: agent, headers: { accept: 'application/json' } });
  const text = await r.text();
  const code = r.status === 200 ? undefined : (JSON.parse(text) as { code?: string }).code;
  return { status: r.status, code, retryAfter: r.headers.get('retry-after'), ms: performance.now() - t0 };
}

describe('the cluster store is down', () => {
  it('a cold request gets 503 SP_CLUSTER_UNAVAILABLE at once; warm traffic goes on', async (t) => {
    const redis = new PrivateRedis(await freePort());
    await redis.start();
    const cloud = await newCloud(0);
    const resources = { app: { provider: 'cloud' }, cold0: { provider: 'cloud' }, cold1: { provider: 'cloud' } };
    const p = await startProxyProcess(replicaConfig(cloud, { redisUrl: redis.url, prefix: uniquePrefix('down-fast'), replicaId: 'r0', resources }));
    try {
      assert.equal((await timedGet(`${p.url}/smart_proxy/app/-/warm`)).status, 200, p.output());
      await redis.kill();
      const cold = [];
      for (let i = 0; i < 6; i++) cold.push(await timedGet(`${p.url}/smart_proxy/cold${i % 2}/-/x${i}`));
      t.diagnostic(`cold requests with Redis down answered in ${cold.map((c) => Math.round(c.ms)).join(', ')} ms`);
      for (const c of cold) {
        assert.equal(c.status, 503);
        assert.equal(c.code, 'SP_CLUSTER_UNAVAILABLE');
        assert.ok(Number(c.retryAfter) >= 1);
      }
      // A command timeout or reconnect wait would cost 0.5-2 s each; "at once" is one event-loop
      // turn, so even on a loaded machine the median is far below that.
      const sorted = cold.map((c) => c.ms).sort((x, y) => x - y);
      const medianMs = sorted[Math.floor(sorted.length / 2)] ?? Infinity;
      assert.ok(medianMs < 250, `median ${Math.round(medianMs)} ms`);
      assert.equal((await timedGet(`${p.url}/smart_proxy/app/-/still-warm`)).status, 200);
      assert.equal(cloud.vms().filter((v) => v.asId !== 'app').length, 0, 'nothing started while Redis was down');
    } finally {
      await p.dispose();
      await cloud.close();
      await redis.kill();
    }
  });
});
