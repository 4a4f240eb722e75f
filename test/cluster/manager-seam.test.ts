/**
 * The coordinator seam of ResourceManager on a ManualClock with a scripted coordinator:
 * what the manager does with each answer of the cluster, and that the warm path never asks.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import type { ClaimOptions, Coordinator, StartClaim, StartLease, StopDecision } from '../../src/core/coordination.ts';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { Prober } from '../../src/core/ports.ts';
import { ResourceManager } from '../../src/core/resource-manager.ts';
import { collectingLogger, runtimeOf } from '../helpers/proxy-harness.ts';
import { ScriptedProvider, settle } from '../core/scripted.ts';

class ScriptedCoordinator implements Coordinator {
  claims: Array<{ notEndpoint: string | undefined }> = [];
  answers: Array<StartClaim | Error> = [];
  published: string[] = [];
  stops = 0;
  decision: StopDecision = 'stop';

  async claimStart(_ref: unknown, _signal: AbortSignal, options?: ClaimOptions): Promise<StartClaim> {
    this.claims.push({ notEndpoint: options?.notEndpoint });
    const a = this.answers.shift() ?? { kind: 'lead', lease: this.lease(false) };
    if (a instanceof Error) throw a;
    return a;
  }

  async decideStop(): Promise<StopDecision> {
    return this.decision;
  }

  stopped(): void {
    this.stops++;
  }

  lease(takeover: boolean): StartLease {
    return {
      token: 1, takeover, started: () => undefined,
      ready: async (endpoint) => { this.published.push(`ready ${endpoint}`); },
      failed: async (reason) => { this.published.push(`failed ${reason}`); },
      release: async () => { this.published.push('released'); },
    };
  }
}

function setup() {
  const clock = new ManualClock();
  const provider = new ScriptedProvider();
  const alive = new Set<string>();
  const prober: Prober = { probe: async (endpoint) => (alive.has(endpoint) ? { ok: true } : { ok: false, reason: 'refused' }) };
  const coordinator = new ScriptedCoordinator();
  const manager = new ResourceManager({ clock, prober, logger: collectingLogger([]), maxHeldRequestsTotal: 1_000, coordinator });
  const resource = runtimeOf({ id: 'r', provider, bootTimeoutMs: 10_000, idleStopMs: 1_000 });
  const inst = manager.selectInstance(resource, [], undefined);
  return { clock, provider, alive, coordinator, manager, inst };
}

describe('ResourceManager with a coordinator', () => {
  it('another replica got it ready: no provider call, a local probe, then ready; the warm path asks nobody', async () => {
    const s = setup();
    s.alive.add('http://10.0.0.1:80');
    s.coordinator.answers.push({ kind: 'ready', endpoint: 'http://10.0.0.1:80', handle: 'vm-3' });
    assert.equal(await s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 }), 'http://10.0.0.1:80');
    assert.equal(s.provider.starts.length, 0);
    assert.equal(s.provider.inspects, 0);
    assert.equal(s.inst.handle, 'vm-3');
    for (let i = 0; i < 100; i++) await s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    assert.equal(s.coordinator.claims.length, 1, 'no cluster call on the warm path');
  });

  it('a reported endpoint that does not answer here is stale: claim again without it, then lead and start', async () => {
    const s = setup();
    s.coordinator.answers.push({ kind: 'ready', endpoint: 'http://10.0.0.9:80' });
    s.provider.state = { state: 'running', endpoint: 'http://10.0.0.2:80' };
    s.alive.add('http://10.0.0.2:80');
    const w = s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    for (let i = 0; i < 10; i++) await s.clock.advance(50);
    assert.equal(await w, 'http://10.0.0.2:80');
    assert.deepEqual(s.coordinator.claims.map((c) => c.notEndpoint), [undefined, 'http://10.0.0.9:80']);
    assert.equal(s.provider.starts.length, 1);
    assert.deepEqual(s.coordinator.published, ['ready http://10.0.0.2:80']);
  });

  it('takeover: the provider already boots it, so it is watched, not started again', async () => {
    const s = setup();
    s.coordinator.answers.push({ kind: 'lead', lease: s.coordinator.lease(true) });
    s.provider.state = { state: 'starting' };
    const w = s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    await s.clock.advance(50);
    s.provider.state = { state: 'running', endpoint: 'http://10.0.0.3:80' };
    s.alive.add('http://10.0.0.3:80');
    for (let i = 0; i < 10; i++) await s.clock.advance(50);
    assert.equal(await w, 'http://10.0.0.3:80');
    assert.equal(s.provider.starts.length, 0, 'no second start');
    assert.deepEqual(s.coordinator.published, ['ready http://10.0.0.3:80']);
  });

  it('a start given up (a stop, shutdown) releases the lease without reporting a failure', async () => {
    const s = setup();
    const w = s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    await settle();
    assert.equal(s.provider.starts.length, 1);
    s.manager.close();
    await assert.rejects(w);
    await s.clock.advance(50);
    await settle();
    assert.deepEqual(s.coordinator.published, ['released']);
  });

  it('cluster unavailable: held requests get SP_CLUSTER_UNAVAILABLE, no provider call, no cool-down', async () => {
    const s = setup();
    s.coordinator.answers.push(new SmartProxyError('SP_CLUSTER_UNAVAILABLE', undefined, { retryAfterS: 1 }));
    await assert.rejects(s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 }), (err: unknown) => err instanceof SmartProxyError && err.code === 'SP_CLUSTER_UNAVAILABLE');
    assert.equal(s.provider.starts.length, 0);
    // The next request asks the cluster again at once (Redis is back: this replica leads).
    s.provider.state = { state: 'running', endpoint: 'http://10.0.0.4:80' };
    s.alive.add('http://10.0.0.4:80');
    const w = s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    for (let i = 0; i < 5; i++) await s.clock.advance(50);
    assert.equal(await w, 'http://10.0.0.4:80');
    assert.equal(s.coordinator.claims.length, 2);
  });

  it('idle stop asks the cluster: keep postpones it, gone forgets it without a provider call, stop stops and reports', async () => {
    const s = setup();
    s.alive.add('http://10.0.0.5:80');
    s.coordinator.answers.push({ kind: 'ready', endpoint: 'http://10.0.0.5:80' });
    await s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    s.coordinator.decision = 'keep';
    await s.clock.advance(1_100);
    await settle();
    assert.equal(s.inst.status, 'ready');
    s.coordinator.decision = 'gone';
    await s.clock.advance(1_100);
    await settle();
    assert.equal(s.inst.status, 'stopped');
    assert.equal(s.provider.stops.length, 0, 'stopped elsewhere: not stopped again');
    // Again, and this time this replica decides the stop.
    s.coordinator.answers.push({ kind: 'ready', endpoint: 'http://10.0.0.5:80' });
    await s.manager.waitUntilReady(s.inst, { timeoutMs: 5_000 });
    s.coordinator.decision = 'stop';
    await s.clock.advance(1_100);
    await settle();
    assert.equal(s.inst.status, 'stopped');
    assert.equal(s.provider.stops.length, 1);
    assert.equal(s.coordinator.stops, 1);
  });
});
