/**
 * Stops owed for instances out of service, as operators see and steer them: their tries,
 * next try and last error while they are retried; a stop whose tries ran out stays on show
 * (the machine may still run and cost) instead of being dropped; retry now and let go.
 * Control plane only: virtual clock, scripted provider.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProviderError } from '../../src/core/errors.ts';
import { LEFTOVER_FIRST_RETRY_MS, LEFTOVER_MAX_ATTEMPTS } from '../../src/core/leftover-stops.ts';
import type { ManagerEvent } from '../../src/core/resource-manager.ts';
import { makeReady, settle, setup } from './scripted.ts';

const refused = (n: number): ProviderError[] => Array.from({ length: n }, (_, i) => new ProviderError(`stop refused #${i + 1}`, { retryable: false }));

/** A ready instance whose operator stop failed once: a stop is now owed. */
async function owedStop(failures: number) {
  const s = setup();
  const events: Extract<ManagerEvent, { type: 'stop-retry' }>[] = [];
  s.manager.onEvent((e) => { if (e.type === 'stop-retry') events.push(e); });
  const inst = await makeReady(s);
  s.provider.stopErrors = refused(failures);
  await s.manager.stop(inst, 'operator');
  return { s, inst, events, retries: s.manager.stopRetries };
}

/** Runs every remaining try (each pause is at most 10 minutes). */
async function exhaust(s: ReturnType<typeof setup>): Promise<void> {
  for (let i = 0; i < LEFTOVER_MAX_ATTEMPTS; i++) await s.clock.advance(600_000);
  await settle();
}

describe('stops owed, as operators see them', () => {
  it('a failed stop is on show with its tries, the next try\'s time and the last error, each failed try published', async () => {
    const { s, inst, events, retries } = await owedStop(2);
    const t0 = s.clock.now();
    assert.equal(inst.status, 'stopped');
    let st = retries.stateOf(inst);
    assert.deepEqual({ ...st, since: undefined }, {
      state: 'scheduled', reason: 'operator; the first stop failed', attempts: 1, maxAttempts: LEFTOVER_MAX_ATTEMPTS,
      nextAttemptAt: t0 + LEFTOVER_FIRST_RETRY_MS, lastError: 'stop refused #1', since: undefined, gaveUpAt: undefined,
    });
    assert.deepEqual(retries.counts(), { pending: 1, givenUp: 0 });
    assert.deepEqual([...retries.instances()], [inst]);
    await s.clock.advance(LEFTOVER_FIRST_RETRY_MS);
    await settle();
    st = retries.stateOf(inst);
    assert.equal(st?.attempts, 2);
    assert.equal(st?.lastError, 'stop refused #2');
    assert.equal(st?.nextAttemptAt, s.clock.now() + 2 * LEFTOVER_FIRST_RETRY_MS, 'the pause doubles');
    assert.deepEqual(events.map((e) => [e.outcome, e.retry.attempts]), [['failed', 2]]);
    await s.clock.advance(2 * LEFTOVER_FIRST_RETRY_MS);
    await settle();
    assert.equal(retries.stateOf(inst), undefined, 'stopped: nothing owed any more');
    assert.deepEqual(events.map((e) => [e.outcome, e.retry.attempts]), [['failed', 2], ['stopped', 3]]);
    assert.deepEqual(retries.counts(), { pending: 0, givenUp: 0 });
  });

  it('tries that ran out are not dropped: the stop stays given-up, the instance is kept (not forgotten) until someone acts', async () => {
    const { s, inst, events, retries } = await owedStop(100);
    await exhaust(s);
    assert.equal(s.provider.stops.length, LEFTOVER_MAX_ATTEMPTS);
    const st = retries.stateOf(inst);
    assert.equal(st?.state, 'given-up');
    assert.equal(st?.attempts, LEFTOVER_MAX_ATTEMPTS);
    assert.equal(st?.lastError, `stop refused #${LEFTOVER_MAX_ATTEMPTS}`);
    assert.equal(st?.nextAttemptAt, undefined);
    assert.equal(typeof st?.gaveUpAt, 'number');
    assert.equal(events.at(-1)?.outcome, 'given-up');
    assert.deepEqual(retries.counts(), { pending: 0, givenUp: 1 });
    // Stopped instances are forgotten after 10 minutes; this one is still owed a stop.
    await s.clock.advance(3_600_000);
    assert.deepEqual([...s.manager.instancesOf('r')], [inst], 'still known, still on show');
    assert.equal(retries.stateOf(inst)?.state, 'given-up');
  });

  it('retry now: a scheduled try goes at once; a given-up stop gets a new series; a try in flight is not doubled', async () => {
    const { s, inst, retries } = await owedStop(100);
    assert.equal(retries.retryNow(inst), 'started');
    assert.equal(retries.stateOf(inst)?.state, 'running');
    assert.equal(retries.retryNow(inst), 'running');
    assert.equal(retries.abandon(inst), 'running');
    await settle();
    assert.equal(s.provider.stops.length, 2, 'tried at once, without waiting 30 s');
    assert.equal(retries.stateOf(inst)?.attempts, 2);
    await exhaust(s);
    assert.equal(retries.stateOf(inst)?.state, 'given-up');
    s.provider.stopErrors = [];
    assert.equal(retries.retryNow(inst), 'started');
    await settle();
    assert.equal(s.provider.stops.length, LEFTOVER_MAX_ATTEMPTS + 1);
    assert.equal(retries.stateOf(inst), undefined, 'stopped this time');
    assert.equal(retries.retryNow(inst), 'none');
  });

  it('let go: no more tries, no longer shown, and the instance may be forgotten again', async () => {
    const { s, inst, retries } = await owedStop(100);
    assert.equal(retries.abandon(inst), 'abandoned');
    assert.equal(retries.stateOf(inst), undefined);
    await s.clock.advance(10 * LEFTOVER_FIRST_RETRY_MS);
    assert.equal(s.provider.stops.length, 1, 'no try after letting it go');
    const again = await owedStop(100);
    await exhaust(again.s);
    assert.equal(again.retries.abandon(again.inst), 'abandoned');
    assert.equal(again.retries.abandon(again.inst), 'none');
    await again.s.clock.advance(3_600_000);
    assert.deepEqual([...again.s.manager.instancesOf('r')], [], 'forgotten like any stopped instance');
  });

  it('a start of the instance ends a given-up stop (the machine is in service again)', async () => {
    const { s, inst, retries } = await owedStop(100);
    await exhaust(s);
    s.provider.stopErrors = [];
    const wait = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
    await s.clock.advance(100);
    assert.equal(await wait, 'http://127.0.0.1:1');
    assert.equal(retries.stateOf(inst), undefined);
    assert.deepEqual(retries.counts(), { pending: 0, givenUp: 0 });
  });
});
