/**
 * The lifecycle rules of issue 4 on the control plane alone (virtual clock, scripted
 * provider): stop, idle, crash repair by health check, circuit breaker, bad providers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProviderError, type SmartProxyError } from '../../src/core/errors.ts';
import { makeReady, settle, setup } from './scripted.ts';

describe('stop', () => {
  it('is idempotent: a second call joins the first, one provider call', async () => {
    const s = await setupReady();
    let open!: () => void;
    s.provider.stopGate = new Promise((r) => { open = r; });
    const a = s.manager.stop(s.inst, 'test');
    const b = s.manager.stop(s.inst, 'test again');
    assert.equal(s.inst.status, 'stopping');
    open();
    await Promise.all([a, b]);
    await s.manager.stop(s.inst, 'already stopped');
    assert.equal(s.inst.status, 'stopped');
    assert.equal(s.provider.stops.length, 1);
  });

  it('a request arriving while the instance stops waits for the stop, then wakes it again', async () => {
    const s = await setupReady();
    let open!: () => void;
    s.provider.stopGate = new Promise((r) => { open = r; });
    const stopping = s.manager.stop(s.inst, 'idle');
    const wait = s.manager.waitUntilReady(s.inst, { timeoutMs: 10_000 });
    await settle();
    assert.equal(s.provider.starts.length, 1, 'no start while the stop is under way');
    open();
    await stopping;
    await s.clock.advance(50);
    assert.equal(await wait, 'http://127.0.0.1:1');
    assert.equal(s.provider.starts.length, 2);
    assert.equal(s.inst.status, 'ready');
  });

  it('still reaches the provider after close() (shutdown stops what it started)', async () => {
    const s = await setupReady();
    s.manager.close();
    await s.manager.stop(s.inst, 'proxy shutdown');
    assert.equal(s.provider.stops.length, 1);
    assert.equal(s.inst.status, 'stopped');
  });
});

describe('crash repair by health check', () => {
  it('marks a ready instance the provider reports gone stopped, and starts it again only for a request', async () => {
    const s = await setupReady({ healthCheckIntervalMs: 30_000, idleStopMs: 0 });
    s.provider.state = { state: 'stopped' };
    const inspectsBefore = s.provider.inspects;
    await s.clock.advance(29_000);
    assert.equal(s.provider.inspects, inspectsBefore, 'no check before the interval');
    await s.clock.advance(1_000);
    await settle();
    assert.equal(s.inst.status, 'stopped', 'gone: marked stopped');
    assert.equal(s.provider.starts.length, 1, 'nothing started without a reason');
    const wait = s.manager.waitUntilReady(s.inst, { timeoutMs: 10_000 });
    assert.equal(s.provider.starts.length, 2, 'a request starts it again');
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:2' };
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:2', 'the request waiting meanwhile is served by the new instance');
  });

  it('forgets a ready instance gone while idle, without starting a new machine', async () => {
    const s = await setupReady({ healthCheckIntervalMs: 30_000, idleStopMs: 600_000 });
    s.provider.state = { state: 'stopped' };
    await s.clock.advance(30_000);
    await settle();
    assert.equal(s.inst.status, 'stopped');
    assert.equal(s.provider.starts.length, 1);
  });

  it('treats an unanswered health check as no verdict', async () => {
    const s = await setupReady({ healthCheckIntervalMs: 1_000 });
    s.provider.inspect = () => Promise.reject(new ProviderError('cloud API 503', { retryable: true }));
    await s.clock.advance(5_000);
    assert.equal(s.inst.status, 'ready');
  });
});

describe('provider faults', () => {
  it('doubles the failure cool-down on each failure in a row (circuit breaker), and names the cause', async () => {
    const s = setup({ failureCooldownMs: 5_000 });
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    s.provider.startErrors = [new ProviderError('quota exceeded', { retryable: false }), new ProviderError('quota exceeded', { retryable: false })];
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), /quota exceeded/);
    assert.equal(inst.failedUntil - s.clock.now(), 5_000);
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 1_000 }), (e: SmartProxyError) =>
      e.code === 'SP_RESOURCE_FAILED' && /quota exceeded/.test(String(e.data.cause)) && e.retryAfterS === 5);
    await s.clock.advance(5_000);
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), /quota exceeded/);
    assert.equal(inst.failedUntil - s.clock.now(), 10_000, 'second failure in a row: twice as long');
    assert.equal(inst.consecutiveFailures, 2);
  });

  it('a provider that ignores its abort signal cannot hang the start: 504 at the deadline, then a new try', async () => {
    const s = setup({ bootTimeoutMs: 3_000, failureCooldownMs: 0 });
    s.provider.hangIgnoringSignal = true;
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const rejected = assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }), (e: SmartProxyError) => e.code === 'SP_BOOT_TIMEOUT');
    await s.clock.advance(3_100);
    await rejected;
    assert.equal(inst.status, 'failed', 'the flight ended instead of waiting for ever');
    s.provider.hangIgnoringSignal = false;
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const again = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(100);
    assert.equal(await again, 'http://127.0.0.1:1');
  });
});

describe('release ramp', () => {
  it('releases held requests at most releaseConcurrency at a time, the next as each forward ends', async () => {
    const s = setup({ releaseConcurrency: 3 });
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    let inFlight = 0;
    let maxInFlight = 0;
    let served = 0;
    const finishers: Array<() => void> = [];
    // Each released request acts as the data plane does: counts itself, forwards, uncounts.
    const waits = Array.from({ length: 10 }, () => s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }).then(() => {
      s.manager.connectionBegun(inst);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      finishers.push(() => { inFlight--; served++; s.manager.connectionEnded(inst); });
    }));
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    await s.clock.advance(50);
    assert.equal(served + inFlight, 3, 'the first batch only');
    while (served < 10) {
      const f = finishers.shift();
      assert.ok(f, `stalled with ${served} served`);
      f();
      await s.clock.advance(0);
    }
    await Promise.all(waits);
    assert.equal(maxInFlight, 3);
  });

  it('a newcomer while the ramp still holds requests queues behind them', async () => {
    const s = setup({ releaseConcurrency: 1 });
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const order: string[] = [];
    const first = s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }).then(() => { order.push('held-1'); s.manager.connectionBegun(inst); });
    const second = s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }).then(() => order.push('held-2'));
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    await s.clock.advance(50);
    await first;
    assert.equal(inst.status, 'ready');
    const late = s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }).then(() => order.push('newcomer'));
    await s.clock.advance(0);
    assert.deepEqual(order, ['held-1'], 'nobody passes while the slot is taken');
    s.manager.connectionEnded(inst);
    await s.clock.advance(0);
    await s.clock.advance(0);
    await Promise.all([second, late]);
    assert.deepEqual(order, ['held-1', 'held-2', 'newcomer']);
  });

  it('lets one more batch go when no slot frees for a while (long-lived streams hold their slots)', async () => {
    const s = setup({ releaseConcurrency: 2 });
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    let released = 0;
    const waits = Array.from({ length: 4 }, () => s.manager.waitUntilReady(inst, { timeoutMs: 60_000 }).then(() => {
      released++;
      s.manager.connectionBegun(inst); // an SSE stream that stays open
    }));
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    await s.clock.advance(50);
    assert.equal(released, 2);
    await s.clock.advance(2_000);
    await Promise.all(waits);
    assert.equal(released, 4);
  });
});

async function setupReady(overrides: Parameters<typeof setup>[0] = {}) {
  const s = setup(overrides);
  const inst = await makeReady(s);
  return { ...s, inst };
}
