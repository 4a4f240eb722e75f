/**
 * A cloud that rate-limits, fails, hangs or answers nonsense, on the control plane alone
 * (virtual clock, scripted provider): what held clients get and when, how often the provider
 * is asked, and that what a failed start or stop leaves running is stopped later.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProviderError, type SmartProxyError } from '../../src/core/errors.ts';
import { LEFTOVER_FIRST_RETRY_MS } from '../../src/core/leftover-stops.ts';
import type { InspectResult, InstanceRef, Provider } from '../../src/core/ports.ts';
import { MAX_PROVIDER_RETRY_AFTER_S } from '../../src/core/provider-calls.ts';
import { ResourceManager } from '../../src/core/resource-manager.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { collectingLogger, runtimeOf } from '../helpers/proxy-harness.ts';
import { makeReady, settle, setup } from './scripted.ts';

const throttled = (retryAfterS: number): ProviderError =>
  new ProviderError('span_as answered HTTP 429', { retryable: true, retryAfterS, data: { status: 429 } });

describe('a cloud that says when to come back (429, Retry-After)', () => {
  it('is not asked again before its Retry-After, within the boot deadline', async () => {
    const s = setup({ bootTimeoutMs: 10_000 });
    s.provider.startErrors = [throttled(3)];
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(2_900);
    assert.equal(s.provider.starts.length, 1, 'no second call before the 3 s it asked for (our own backoff would have retried at ~100 ms)');
    await s.clock.advance(200);
    assert.equal(s.provider.starts.length, 2);
    assert.equal(await wait, 'http://127.0.0.1:1');
  });

  it('a wait past the deadline ends the start at once: 503 SP_PROVIDER_THROTTLED with its Retry-After, one call, a cool-down as long', async () => {
    const s = setup({ bootTimeoutMs: 10_000, failureCooldownMs: 5_000 });
    s.provider.startErrors = [throttled(60)];
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const t0 = s.clock.now();
    let answeredAt = 0;
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }).finally(() => { answeredAt = s.clock.now(); }),
      (e: SmartProxyError) => e.code === 'SP_PROVIDER_THROTTLED' && e.retryAfterS === 60 && /429/.test(e.message));
    assert.equal(answeredAt, t0, 'answered at once, not at the boot deadline');
    assert.equal(s.provider.starts.length, 1);
    assert.equal(s.provider.stops.length, 0, 'a refused start created nothing: no clean-up call to a cloud that asked for calm');
    assert.equal(inst.failedUntil - s.clock.now(), 60_000);
    await s.clock.advance(30_000);
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 1_000 }), (e: SmartProxyError) =>
      e.code === 'SP_RESOURCE_FAILED' && e.retryAfterS === 30 && e.data.causeCode === 'SP_PROVIDER_THROTTLED');
    assert.equal(s.provider.starts.length, 1, 'nothing asked during the wait');
  });

  it('a Retry-After of a year is honoured for five minutes at most', async () => {
    const s = setup({ bootTimeoutMs: 10_000 });
    s.provider.startErrors = [throttled(365 * 86_400)];
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), (e: SmartProxyError) => e.retryAfterS === MAX_PROVIDER_RETRY_AFTER_S);
    assert.equal(inst.failedUntil - s.clock.now(), MAX_PROVIDER_RETRY_AFTER_S * 1000);
  });
});

describe('what held clients get when a start fails', () => {
  it('a refused start answers 502 SP_START_FAILED with Retry-After at the end of the cool-down', async () => {
    const s = setup({ failureCooldownMs: 5_000 });
    s.provider.startErrors = [new ProviderError('quota exceeded', { retryable: false })];
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    await assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), (e: SmartProxyError) =>
      e.code === 'SP_START_FAILED' && e.retryAfterS === 5 && /quota exceeded/.test(e.message));
  });

  it('a boot timeout answers 504 with a Retry-After no shorter than the cool-down', async () => {
    const s = setup({ bootTimeoutMs: 2_000, failureCooldownMs: 20_000 });
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const wait = assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), (e: SmartProxyError) =>
      e.code === 'SP_BOOT_TIMEOUT' && e.retryAfterS === 20);
    await s.clock.advance(2_100);
    await wait;
  });

  it('a cloud\'s reason is shown bounded and on one line (clients, status page, logs)', async () => {
    const s = setup();
    s.provider.state = { state: 'failed', reason: `disk\nfull\u001b[31m ${'x'.repeat(20_000)}` };
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const wait = assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), (e: SmartProxyError) => {
      assert.ok(e.message.length < 700, `message of ${e.message.length} characters`);
      assert.ok(!e.message.includes('\n') && !e.message.includes('\u001b'), 'one line, no escape');
      assert.match(e.message, /disk full/);
      return e.code === 'SP_START_FAILED';
    });
    await s.clock.advance(100);
    await wait;
  });
});

describe('stops owed after a failed start or a failed stop', () => {
  it('the clean-up stop of a failed start is tried again later, and a new start waits for one in flight', async () => {
    const s = setup({ failureCooldownMs: 1_000 });
    s.provider.state = { state: 'failed', reason: 'bad image' };
    s.provider.stopErrors = [new ProviderError('cloud said no', { retryable: false })];
    const inst = s.manager.selectInstance(s.resource, [], undefined);
    const failed = assert.rejects(s.manager.waitUntilReady(inst, { timeoutMs: 10_000 }), /bad image/);
    await s.clock.advance(50);
    await failed;
    await settle();
    assert.equal(s.provider.stops.length, 1, 'the clean-up stop went at once');
    assert.equal(s.provider.stops[0]?.handle, 'h-1', 'for the machine that start made');
    // The first try failed: the next one comes 30 s later, held at the provider this time.
    let open!: () => void;
    s.provider.stopGate = new Promise((r) => { open = r; });
    await s.clock.advance(LEFTOVER_FIRST_RETRY_MS);
    assert.equal(s.provider.stops.length, 2, 'tried again');
    // A request now: its start must not race the stop still in flight.
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(100);
    assert.equal(s.provider.starts.length, 1, 'no start while the stop is in flight');
    open();
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:1');
    assert.equal(s.provider.starts.length, 2);
    await s.clock.advance(10 * LEFTOVER_FIRST_RETRY_MS);
    assert.equal(s.provider.stops.length, 2, 'the new start ended the retries');
    assert.equal(inst.status, 'ready');
  });

  it('a failed idle stop: marked stopped with its handle kept, stopped again later; a request meanwhile finds the same machine', async () => {
    const s = setup();
    const inst = await makeReady(s);
    assert.equal(inst.handle, 'h-1');
    s.provider.stopErrors = [new ProviderError('stop refused', { retryable: false }), new ProviderError('stop refused', { retryable: false })];
    await s.manager.stop(inst, 'idle for 60000 ms');
    assert.equal(inst.status, 'stopped');
    assert.equal(inst.handle, 'h-1', 'the machine may still run: its handle is kept');
    assert.ok(s.logs.some((l) => l.level === 'error' && /stop failed; marked stopped, the stop is tried again later/.test(l.msg ?? '')
      && (l.obj as { resource?: string }).resource === 'r'));
    await s.clock.advance(LEFTOVER_FIRST_RETRY_MS);
    await settle();
    assert.equal(s.provider.stops.length, 2, 'tried again after 30 s');
    assert.ok(s.logs.some((l) => l.level === 'warn' && /trying again later/.test(l.msg ?? '') && (l.obj as { retryInMs?: number }).retryInMs === 2 * LEFTOVER_FIRST_RETRY_MS));
    // A request before the next try: it starts the instance (with the kept handle), and the retry is dropped.
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:1');
    assert.equal(s.provider.starts.at(-1)?.handle, 'h-1', 'the start names the machine that may still run');
    await s.clock.advance(10 * LEFTOVER_FIRST_RETRY_MS);
    assert.equal(s.provider.stops.length, 2, 'no stop of the machine now in service');
  });

  it('a ready instance the health check finds failed is stopped too (a VM in ERROR still costs), and a request waits for that stop', async () => {
    const s = setup({ healthCheckIntervalMs: 30_000 });
    const inst = await makeReady(s);
    s.provider.state = { state: 'failed', reason: 'ERROR' };
    let open!: () => void;
    s.provider.stopGate = new Promise((r) => { open = r; });
    await s.clock.advance(30_000);
    await settle();
    assert.equal(inst.status, 'stopped');
    assert.deepEqual(s.provider.stops.map((r) => r.handle), ['h-1'], 'the failed machine is stopped, by its handle');
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:2' };
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(100);
    assert.equal(s.provider.starts.length, 1, 'no start while that stop is in flight');
    open();
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:2');
  });

  it('a request arriving during a stop that fails waits for that one try only, then the instance starts again (no 502, no retries first)', async () => {
    const s = setup({ bootTimeoutMs: 10_000 });
    const inst = await makeReady(s);
    let open!: () => void;
    s.provider.stopGate = new Promise((r) => { open = r; });
    s.provider.stopErrors = Array.from({ length: 50 }, () => new ProviderError('DELETE answered 503', { retryable: true }));
    const stopping = s.manager.stop(inst, 'idle for 60000 ms');
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await settle();
    assert.equal(s.provider.starts.length, 1, 'it waits for the stop in flight');
    open();
    await stopping;
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:1', 'served after the one failed try, not after 10 s of retries');
    assert.equal(s.provider.stops.length, 1);
    assert.equal(s.provider.starts.at(-1)?.handle, 'h-1', 'the start names the machine the stop may have left');
    await s.clock.advance(10 * LEFTOVER_FIRST_RETRY_MS);
    assert.equal(s.provider.stops.length, 1, 'nothing stops the instance now in service');
  });

  it('gives up after a bounded number of tries, logged at error with the resource', async () => {
    const s = setup();
    const inst = await makeReady(s);
    s.provider.stopErrors = Array.from({ length: 20 }, () => new ProviderError('stop refused', { retryable: false }));
    await s.manager.stop(inst, 'operator');
    for (let i = 0; i < 10; i++) await s.clock.advance(600_000);
    assert.equal(s.provider.stops.length, 6);
    assert.ok(s.logs.some((l) => l.level === 'error' && /giving up stopping a left-over machine/.test(l.msg ?? '') && (l.obj as { resource?: string }).resource === 'r'));
  });
});

/** A provider whose starts never settle and ignore their signal, counting calls in flight. */
class HungProvider implements Provider {
  readonly kind = 'hung';
  calls = 0;
  async start(_ref: InstanceRef): Promise<{ handle: string }> {
    this.calls++;
    return new Promise(() => undefined);
  }
  async inspect(): Promise<InspectResult> {
    return { state: 'starting' };
  }
  async stop(): Promise<void> {}
}

describe('a hung cloud does not pile up calls', () => {
  it('calls abandoned at their timeout keep their slot: at most maxConcurrentCalls in flight, the rest wait and end at the deadline', async () => {
    const clock = new ManualClock();
    const provider = new HungProvider();
    const logs: Array<{ level: string; obj: object; msg?: string | undefined }> = [];
    const manager = new ResourceManager({
      clock, prober: { probe: async () => ({ ok: false, reason: 'no' }) }, logger: collectingLogger(logs), maxHeldRequestsTotal: 10_000,
      providerCircuit: { failureThreshold: 3, openMs: 5_000, maxOpenMs: 60_000, maxConcurrentCalls: 8 },
    });
    const resource = runtimeOf({ id: 'r', provider, sharing: 'user', bootTimeoutMs: 10_000, providerCallTimeoutMs: 1_000 });
    const waits = Array.from({ length: 20 }, (_, i) => manager.waitUntilReady(manager.selectInstance(resource, [], `u${i}`), { timeoutMs: 60_000 })
      .then(() => 'ready', (e: SmartProxyError) => e.code));
    await clock.advance(10_100);
    // Without the bound, each of the 20 starts is called again after each 1 s timeout: ~200 calls.
    assert.equal(provider.calls, 8);
    assert.deepEqual(new Set(await Promise.all(waits)), new Set(['SP_BOOT_TIMEOUT']));
    assert.ok(logs.some((l) => l.level === 'warn' && /provider busy/.test(l.msg ?? '')));
  });
});
