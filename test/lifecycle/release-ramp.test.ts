/**
 * The release ramp on real sockets: a fresh backend that can take only 10 requests at once
 * (it resets the connection of the 11th, as an overloaded app or a full accept queue does)
 * receives 1,000 held requests when it becomes ready. Released all at once, most would fail
 * (Knative issue 9888); through the ramp, none does.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

describe('release ramp', () => {
  it('1,000 held requests onto a fresh backend whose concurrency is 10: no 502, one start', async (t) => {
    const backendConcurrency = 10;
    let inFlight = 0;
    let maxInFlight = 0;
    let refused = 0;
    const mimic = new MimicProvider({
      manual: true,
      handler: (req, res) => {
        if (req.url === '/') { // the readiness probe
          res.end('up');
          return;
        }
        if (inFlight >= backendConcurrency) {
          refused++;
          req.socket.destroy();
          return;
        }
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        // Some work: the answer comes a little later, as from a real app.
        setTimeout(() => {
          inFlight--;
          res.end(`done ${req.url}`);
        }, 2);
      },
    });
    // A generous hold timeout: on 2 shared cores, 1,000 forwards through one test process
    // (client, proxy and backend) take seconds; this test is about resets, not speed.
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, releaseConcurrency: backendConcurrency, holdTimeoutMs: 110_000 }] });
    try {
      const total = 1_000;
      const t0 = performance.now();
      const pending = Array.from({ length: total }, (_, i) => fetch(`${h.url}/smart_proxy/app/-/job/${i}`).then(async (r) => ({ status: r.status, body: await r.text() })));
      await until(() => h.manager.heldTotal === total);
      await mimic.release('*');
      const results = await Promise.all(pending);
      const counts = new Map<number, number>();
      for (const r of results) counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
      t.diagnostic(`statuses ${JSON.stringify(Object.fromEntries(counts))}, backend max in flight ${maxInFlight}, resets ${refused}, ${Math.round(performance.now() - t0)} ms`);
      assert.deepEqual(Object.fromEntries(counts), { 200: total });
      assert.equal(refused, 0, 'the backend never had to refuse');
      assert.ok(maxInFlight <= backendConcurrency);
      assert.equal(mimic.calls.start, 1);
      assert.equal(results[999]?.body, 'done /job/999');
    } finally {
      await h.close();
    }
  });
});
