/**
 * Issue 11 item 14, the fast regression test (the soak is `npm run bench -- churn`): after a
 * few hundred start/stop cycles over many per-user instances whose backends get a fresh port
 * on every boot, upstream pools, known instances and live timers are back to their baseline.
 * Real sockets throughout (proxy, backends); the proxy's own clock is the system clock.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Agent } from 'undici';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';
import type { Identify } from '../../src/proxy/server.ts';

/** The user is named by a header: enough for a test of per-user instances. */
const byHeader: Identify = (req) => ({ user: String(req.headers['x-test-user'] ?? 'nobody'), groups: [] });

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let turns = 0; !cond(); turns++) {
    if (turns > 200_000) throw new Error(`never: ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

describe('nothing grows without bound', () => {
  it('pools, instances and timers return to baseline after 150 start/stop cycles over 50 users with fresh ports', async (t) => {
    const provider = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({
      resources: [{ id: 'app', provider, sharing: 'user', providerCallTimeoutMs: 60_000, probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 60_000 } }],
      identify: byHeader, forgetStoppedAfterMs: 1, poolSweepDelayMs: 0,
    });
    const agent = new Agent({ connections: 8 });
    try {
      const get = async (user: string, path: string): Promise<number> => {
        const r = await fetch(`${h.url}/smart_proxy/app/-/${path}`, { dispatcher: agent, headers: { 'x-test-user': user } });
        await r.text();
        return r.status;
      };
      // Warm-up: one cycle, so lazily created things (the agent's sockets, JIT) are in the baseline.
      assert.equal(await get('warmup', 'x'), 200);
      await Promise.all([...h.manager.allInstances()].map((i) => h.manager.stop(i, 'test')));
      await until(() => h.proxy.pools.size === 0 && h.manager.instanceCount === 0, 'warm-up settled');
      const baseTimers = timers();

      const ports = new Set<string>();
      for (let cycle = 0; cycle < 150; cycle++) {
        const user = `u${cycle % 50}`;
        assert.equal(await get(user, `c${cycle}`), 200);
        const inst = [...h.manager.allInstances()].find((i) => i.user === user && i.status === 'ready');
        assert.ok(inst?.endpoint !== undefined);
        ports.add(inst.endpoint);
        await h.manager.stop(inst, 'churn');
      }
      assert.equal(ports.size, 150, 'a fresh port on every boot');
      await until(() => h.proxy.pools.size === 0, 'pools of stopped endpoints closed');
      await until(() => h.manager.instanceCount === 0, 'stopped instances forgotten');
      const leftTimers = timers() - baseTimers;
      t.diagnostic(`after 150 cycles: pools ${h.proxy.pools.size}, instances ${h.manager.instanceCount}, timers ${leftTimers >= 0 ? '+' : ''}${leftTimers} over baseline, provider starts ${provider.calls.start}`);
      // Each cycle makes several provider calls and probes, each once with a 60 s timeout:
      // a timer left per call would show as hundreds here.
      assert.ok(leftTimers <= 5, `timers left over baseline: ${leftTimers}`);
    } finally {
      await agent.close();
      await h.close();
    }
  });
});
