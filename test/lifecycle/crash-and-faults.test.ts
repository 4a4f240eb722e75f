/**
 * Crash repair and provider faults through the real data plane: a proxy on 127.0.0.1:0,
 * backends that are real HTTP servers, providers that fail as told.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

async function get(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.text() };
}

function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(sorted.length * q) - 1))] ?? 0;
}

const p99 = (samples: number[]): number => quantile(samples, 0.99);

/** Latencies of `total` warm GETs, `concurrency` at a time. */
async function measureWarm(url: string, total: number, concurrency: number): Promise<{ latenciesMs: number[]; statuses: number[] }> {
  const latenciesMs: number[] = [];
  const statuses: number[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++;
      const t0 = performance.now();
      const r = await get(url);
      latenciesMs.push(performance.now() - t0);
      statuses.push(r.status);
    }
  }));
  return { latenciesMs, statuses };
}

describe('crash repair', () => {
  it('a backend killed after ready: the next requests wait for the restart and all get 200', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      assert.equal((await get(`${h.url}/smart_proxy/app/-/a`)).status, 200);
      assert.equal(mimic.calls.start, 1);
      await mimic.crash('*');
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => get(`${h.url}/smart_proxy/app/-/after-crash/${i}`)));
      assert.deepEqual(results.map((r) => r.status), Array<number>(20).fill(200), `no unsent request got an error: ${results.find((r) => r.status !== 200)?.body ?? ""}`);
      assert.equal(mimic.calls.start, 2, 'restarted once');
      assert.match(results[0]?.body ?? '', /after-crash/);
    } finally {
      await h.close();
    }
  });

  it('a non-idempotent request that reached the backend is not replayed: 502, and the instance is not restarted', async () => {
    let posts = 0;
    const mimic = new MimicProvider({
      bootMs: 0,
      handler: (req, res) => {
        if (req.method === 'POST') {
          posts++;
          req.resume();
          req.on('end', () => req.socket.destroy());
          return;
        }
        res.end('ok');
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      assert.equal((await get(`${h.url}/smart_proxy/app/-/warm`)).status, 200);
      const res = await fetch(`${h.url}/smart_proxy/app/-/order`, { method: 'POST', body: 'buy one', headers: { accept: 'application/json' } });
      assert.equal(res.status, 502);
      const problem = await res.json() as { code: string };
      assert.equal(problem.code, 'SP_UPSTREAM_UNAVAILABLE');
      assert.equal(posts, 1, 'sent once, never replayed');
      assert.equal(mimic.calls.start, 1);
      assert.equal((await get(`${h.url}/smart_proxy/app/-/still`)).status, 200);
    } finally {
      await h.close();
    }
  });
});

describe('provider faults', () => {
  it('the provider answers 500 twice, then succeeds: 200', async () => {
    const mimic = new MimicProvider({ bootMs: 0, failStarts: 2 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const r = await get(`${h.url}/smart_proxy/app/-/x`);
      assert.equal(r.status, 200);
      assert.equal(mimic.calls.start, 3);
    } finally {
      await h.close();
    }
  });

  it('a hanging provider: 504 at the boot deadline, a clear 503 naming the cause after, and warm traffic elsewhere unaffected', async (t) => {
    const warm = new MimicProvider({ bootMs: 0 });
    const hang = new MimicProvider({ hangStart: true });
    const bootTimeoutMs = 2_500;
    const h = await startHarness({
      resources: [
        { id: 'warm', provider: warm },
        { id: 'hang', provider: hang, bootTimeoutMs, providerCallTimeoutMs: 500, failureCooldownMs: 30_000 },
      ],
    });
    try {
      const warmUrl = `${h.url}/smart_proxy/warm/-/ping`;
      assert.equal((await get(warmUrl)).status, 200);
      await measureWarm(warmUrl, 50, 4); // connections and JIT warmed up
      const baseline = await measureWarm(warmUrl, 300, 4);

      const t0 = performance.now();
      const held = Array.from({ length: 50 }, () => get(`${h.url}/smart_proxy/hang/-/x`).then((r) => ({ ...r, ms: performance.now() - t0 })));
      const during = await measureWarm(warmUrl, 300, 4);
      const heldDone = await Promise.all(held);
      const stillHeld = heldDone.filter((r) => r.ms >= performance.now() - t0);
      assert.equal(stillHeld.length, 0);

      assert.deepEqual(new Set(during.statuses), new Set([200]), 'warm traffic all 200 while the other provider hangs');
      assert.deepEqual(new Set(heldDone.map((r) => r.status)), new Set([504]));
      for (const r of heldDone) assert.ok(r.ms >= bootTimeoutMs - 100 && r.ms < bootTimeoutMs + 2_000, `504 at the deadline (${Math.round(r.ms)} ms)`);
      assert.ok(hang.calls.start >= 2, 'timed-out calls were retried within the deadline');

      const after = await fetch(`${h.url}/smart_proxy/hang/-/x`, { headers: { accept: 'application/json' } });
      assert.equal(after.status, 503);
      assert.ok(Number(after.headers.get('retry-after')) > 0);
      const problem = await after.json() as { code: string; cause?: string };
      assert.equal(problem.code, 'SP_RESOURCE_FAILED');
      assert.match(problem.cause ?? '', /boot timeout|did not become ready/i);

      const base99 = p99(baseline.latenciesMs);
      const during99 = p99(during.latenciesMs);
      t.diagnostic(`warm p50/p99: ${quantile(baseline.latenciesMs, 0.5).toFixed(2)}/${base99.toFixed(2)} ms before, `
        + `${quantile(during.latenciesMs, 0.5).toFixed(2)}/${during99.toFixed(2)} ms while 50 requests were held on a hanging provider`);
      // Generous (2 shared cores): a real delay would be the provider's 500 ms call timeout or more.
      assert.ok(during99 < Math.max(100, base99 * 10), `warm p99 ${during99.toFixed(1)} ms vs ${base99.toFixed(1)} ms before`);
    } finally {
      await h.close();
    }
  });
});
