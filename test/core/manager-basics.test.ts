/**
 * The control plane on a virtual clock: no sockets, no sleeps. Provider behaviour is
 * scripted per call; the prober answers from a flag the test flips.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import { ProviderError, type SmartProxyError } from '../../src/core/errors.ts';
import { lifecycleEdges, transition } from '../../src/core/lifecycle.ts';
import type { InspectResult, InstanceRef, Prober, Provider } from '../../src/core/ports.ts';
import { ResourceManager, isSubset } from '../../src/core/resource-manager.ts';
import { collectingLogger, runtimeOf } from '../helpers/proxy-harness.ts';

class ScriptedProvider implements Provider {
  readonly kind = 'scripted';
  starts: InstanceRef[] = [];
  stops: InstanceRef[] = [];
  startErrors: Error[] = [];
  state: InspectResult = { state: 'starting' };
  async start(ref: InstanceRef): Promise<{ handle: string }> {
    this.starts.push(ref);
    const err = this.startErrors.shift();
    if (err) throw err;
    return { handle: `h-${this.starts.length}` };
  }
  async inspect(): Promise<InspectResult> {
    return this.state;
  }
  async stop(ref: InstanceRef): Promise<void> {
    this.stops.push(ref);
  }
}

function setup(overrides: Partial<Parameters<typeof runtimeOf>[0]> = {}) {
  const clock = new ManualClock();
  const provider = new ScriptedProvider();
  const probe = { ok: false };
  const prober: Prober = { probe: async () => (probe.ok ? { ok: true } : { ok: false, reason: 'refused' }) };
  const logs: Array<{ level: string; obj: object; msg?: string | undefined }> = [];
  const manager = new ResourceManager({ clock, prober, logger: collectingLogger(logs), maxHeldRequestsTotal: 1000 });
  const resource = runtimeOf({ id: 'r', provider, bootTimeoutMs: 10_000, failureCooldownMs: 5_000, ...overrides });
  return { clock, provider, probe, manager, resource, logs };
}

/** Lets pending promise chains run (the manager's loops are async). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

describe('lifecycle table', () => {
  it('allows only the documented moves', () => {
    assert.equal(transition('stopped', 'start'), 'starting');
    assert.equal(transition('starting', 'ready'), 'ready');
    assert.equal(transition('ready', 'lost'), 'starting');
    assert.equal(transition('stopped', 'ready'), undefined);
    assert.equal(transition('stopping', 'start'), undefined);
    assert.ok(lifecycleEdges().length >= 10);
  });
});

describe('ResourceManager', () => {
  it('joins concurrent waiters onto one start and releases them when the probe passes', async () => {
    const { clock, provider, probe, manager, resource } = setup();
    const inst = manager.selectInstance(resource, ['g1'], undefined);
    const waits = Array.from({ length: 100 }, () => manager.waitUntilReady(inst, { timeoutMs: 10_000 }));
    await settle();
    assert.equal(provider.starts.length, 1);
    assert.equal(inst.status, 'starting');
    assert.equal(inst.phase, 'booting');
    provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    await clock.advance(100);
    assert.equal(inst.phase, 'probing', 'running is not ready until the probe passes');
    probe.ok = true;
    await clock.advance(100);
    const endpoints = await Promise.all(waits);
    assert.deepEqual(new Set(endpoints), new Set(['http://127.0.0.1:1']));
    assert.equal(inst.status, 'ready');
    assert.equal(manager.heldTotal, 0);
    assert.equal(manager.estimateBoot('r')?.samples, 1);
  });

  it('retries retryable provider errors with backoff, within the boot deadline', async () => {
    const { clock, provider, probe, manager, resource } = setup();
    provider.startErrors = [new ProviderError('500', { retryable: true }), new ProviderError('500', { retryable: true })];
    provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    probe.ok = true;
    const inst = manager.selectInstance(resource, [], undefined);
    const wait = manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await clock.advance(1_000);
    assert.equal(await wait, 'http://127.0.0.1:1');
    assert.equal(provider.starts.length, 3);
  });

  it('fails fast on a non-retryable error, then cools down before trying again', async () => {
    const { clock, provider, manager, resource } = setup();
    provider.startErrors = [new ProviderError('quota exceeded', { retryable: false })];
    const inst = manager.selectInstance(resource, [], undefined);
    const wait = manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await settle();
    await assert.rejects(wait, (e: SmartProxyError) => e.code === 'SP_START_FAILED' && /quota exceeded/.test(e.message));
    assert.equal(inst.status, 'failed');
    await assert.rejects(manager.waitUntilReady(inst, { timeoutMs: 1000 }), (e: SmartProxyError) => e.code === 'SP_RESOURCE_FAILED' && e.retryAfterS === 5);
    assert.equal(provider.starts.length, 1, 'no start during the cool-down');
    await clock.advance(5_000);
    void manager.waitUntilReady(inst, { timeoutMs: 1000 }).catch(() => undefined);
    await settle();
    assert.equal(provider.starts.length, 2);
  });

  it('gives up at the boot timeout, answers the waiters 504 and stops the half-started machine', async () => {
    const { clock, provider, manager, resource } = setup({ bootTimeoutMs: 3_000 });
    const inst = manager.selectInstance(resource, [], undefined);
    // The assertion is attached before time moves, so the rejection is never unhandled.
    const rejected = assert.rejects(manager.waitUntilReady(inst, { timeoutMs: 60_000 }), (e: SmartProxyError) => e.code === 'SP_BOOT_TIMEOUT');
    await clock.advance(3_500);
    await rejected;
    assert.equal(inst.status, 'failed');
    await settle();
    assert.equal(provider.stops.length, 1);
  });

  it('ends one held request at its own hold timeout without failing the boot', async () => {
    const { clock, manager, resource } = setup();
    const inst = manager.selectInstance(resource, [], undefined);
    const rejected = assert.rejects(manager.waitUntilReady(inst, { timeoutMs: 1_000 }), (e: SmartProxyError) => e.code === 'SP_BOOT_TIMEOUT');
    await clock.advance(1_000);
    await rejected;
    assert.equal(inst.status, 'starting');
  });

  it('releases a waiter whose client went away', async () => {
    const { manager, resource } = setup();
    const inst = manager.selectInstance(resource, [], undefined);
    const ac = new AbortController();
    const wait = manager.waitUntilReady(inst, { timeoutMs: 1_000, signal: ac.signal });
    assert.equal(manager.heldTotal, 1);
    ac.abort(new Error('gone'));
    await assert.rejects(wait, /gone/);
    assert.equal(manager.heldTotal, 0);
  });

  it('in groups mode reuses an instance started for a subset of the groups', async () => {
    const { clock, provider, probe, manager, resource } = setup({ sharing: 'groups' });
    provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    probe.ok = true;
    const g1 = manager.selectInstance(resource, ['g1'], undefined);
    const w = manager.waitUntilReady(g1, { timeoutMs: 10_000 });
    await clock.advance(100);
    await w;
    assert.equal(manager.selectInstance(resource, ['g1', 'g2'], undefined), g1, 'superset reuses');
    assert.notEqual(manager.selectInstance(resource, ['g2'], undefined), g1, 'disjoint set does not');
    assert.deepEqual(provider.starts.map((r) => r.groups), [['g1']]);
  });

  it('in groups mode keys each group list by its content, whether the array is reused or new', () => {
    const { manager, resource } = setup({ sharing: 'groups' });
    // One array selected with again and again (a verified identity's groups): its key is
    // remembered, and must never stand for another list.
    const alice = ['g1', 'g2'];
    const a = manager.selectInstance(resource, alice, undefined);
    assert.equal(manager.selectInstance(resource, alice, undefined), a);
    const b = manager.selectInstance(resource, ['g3'], undefined);
    assert.notEqual(b, a, 'another list, another instance');
    assert.equal(manager.selectInstance(resource, alice, undefined), a, 'the first list again');
    assert.equal(manager.selectInstance(resource, ['g1', 'g2'], undefined), a, 'an equal list in a new array');
    assert.equal(manager.selectInstance(resource, ['g3'], undefined), b);
  });

  it('in user mode never hands alice carol\'s ready instance, though carol\'s groups are a subset of hers', async () => {
    const { clock, provider, probe, manager, resource } = setup({ sharing: 'user' });
    provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    probe.ok = true;
    const carol = manager.selectInstance(resource, ['g1'], 'carol');
    const w = manager.waitUntilReady(carol, { timeoutMs: 10_000 });
    await clock.advance(100);
    await w;
    const alice = manager.selectInstance(resource, ['g1', 'g2'], 'alice');
    assert.notEqual(alice, carol);
    assert.equal(alice.key, 'user:alice');
    assert.equal(alice.user, 'alice');
    assert.equal(manager.selectInstance(resource, ['g1'], 'carol'), carol, 'carol keeps hers');
    // And the provider is asked for alice's own instance, with her name on it.
    const wa = manager.waitUntilReady(alice, { timeoutMs: 10_000 });
    await clock.advance(100);
    await wa;
    assert.deepEqual(provider.starts.map((r) => [r.instanceKey, r.user]), [['user:carol', 'carol'], ['user:alice', 'alice']]);
  });

  it('stops an idle instance, but never under an open connection', async () => {
    const { clock, provider, probe, manager, resource } = setup({ idleStopMs: 60_000 });
    provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    probe.ok = true;
    const inst = manager.selectInstance(resource, [], undefined);
    const w = manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await clock.advance(50);
    await w;
    manager.connectionBegun(inst);
    await clock.advance(120_000);
    assert.equal(inst.status, 'ready', 'a connected user keeps it running');
    manager.connectionEnded(inst);
    manager.touch(inst);
    await clock.advance(59_000);
    assert.equal(inst.status, 'ready');
    await clock.advance(61_000);
    await settle();
    assert.equal(inst.status, 'stopped');
    assert.equal(provider.stops.length, 1);
  });

  it('bounds held requests in total', async () => {
    const { manager, resource } = setup();
    const small = new ResourceManager({ clock: new ManualClock(), prober: { probe: async () => ({ ok: false, reason: 'x' }) }, logger: collectingLogger([]), maxHeldRequestsTotal: 2 });
    const inst = small.selectInstance(resource, [], undefined);
    const a = small.waitUntilReady(inst, { timeoutMs: 1000 });
    const b = small.waitUntilReady(inst, { timeoutMs: 1000 });
    await assert.rejects(small.waitUntilReady(inst, { timeoutMs: 1000 }), (e: SmartProxyError) => e.code === 'SP_HOLD_QUEUE_FULL' && e.data.scope === 'total');
    small.close();
    await assert.rejects(a, (e: SmartProxyError) => e.code === 'SP_SHUTTING_DOWN');
    await assert.rejects(b, (e: SmartProxyError) => e.code === 'SP_SHUTTING_DOWN');
    manager.close();
  });
});

describe('isSubset', () => {
  it('compares sorted lists', () => {
    assert.ok(isSubset([], ['a']));
    assert.ok(isSubset(['a', 'c'], ['a', 'b', 'c']));
    assert.ok(!isSubset(['a', 'd'], ['a', 'b', 'c']));
    assert.ok(!isSubset(['a'], []));
  });
});
