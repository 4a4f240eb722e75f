/**
 * An instance's state changes only through its control's transitions, each an edge of the
 * lifecycle table: every edge not in the table throws, and the data that belongs to a status
 * moves with it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SmartProxyError } from '../../src/core/errors.ts';
import { Instance, InstanceControl } from '../../src/core/instance.ts';
import { lifecycleEdges, transition, type InstanceStatus } from '../../src/core/lifecycle.ts';
import { ScriptedProvider } from './scripted.ts';
import { runtimeOf } from '../helpers/proxy-harness.ts';

function make(now = 1_000) {
  const moves: string[] = [];
  const inst = new Instance(runtimeOf({ id: 'r', provider: new ScriptedProvider() }), '*', [], undefined);
  const ctl = new InstanceControl(inst, () => now, (i, event) => moves.push(`${event}->${i.status}`));
  return { inst, ctl, moves };
}

/** Drives a fresh instance into `status` through legal transitions. */
function into(status: InstanceStatus) {
  const m = make();
  const fail = { error: new SmartProxyError('SP_START_FAILED'), failedUntil: 5_000, counted: true };
  if (status === 'stopped') return m;
  m.ctl.start();
  if (status === 'ready') m.ctl.ready('http://127.0.0.1:1', 2_000, true);
  if (status === 'failed') m.ctl.fail(fail);
  if (status === 'stopping') m.ctl.beginStop('test');
  assert.equal(m.inst.status, status);
  return m;
}

const calls: Record<string, (m: ReturnType<typeof make>) => void> = {
  start: (m) => m.ctl.start(),
  ready: (m) => m.ctl.ready('http://127.0.0.1:1', 2_000, true),
  fail: (m) => (m.inst.status === 'stopping' ? m.ctl.stopFailed('x') : m.ctl.fail({ error: new SmartProxyError('SP_START_FAILED'), failedUntil: 0, counted: false })),
  lost: (m) => m.ctl.lost('x'),
  stop: (m) => m.ctl.beginStop('x'),
  stopped: (m) => m.ctl.stopped('x'),
  vanished: (m) => m.ctl.vanished('x', true),
};

describe('Instance and InstanceControl', () => {
  it('allows exactly the edges of the lifecycle table', () => {
    const statuses: InstanceStatus[] = ['stopped', 'starting', 'ready', 'stopping', 'failed'];
    let allowed = 0;
    for (const from of statuses) {
      for (const [event, call] of Object.entries(calls)) {
        const m = into(from);
        const to = transition(from, event as Parameters<typeof transition>[1]);
        if (to === undefined) {
          assert.throws(() => call(m), /invalid lifecycle move/, `${from} --${event}--> must throw`);
          assert.equal(m.inst.status, from, 'a refused move changes nothing');
        } else {
          call(m);
          assert.equal(m.inst.status, to, `${from} --${event}-->`);
          allowed++;
        }
      }
    }
    assert.equal(allowed, lifecycleEdges().length, 'every edge of the table is a transition of the control');
  });

  it('keeps an endpoint exactly while ready, and tells the listener of every move', () => {
    const m = into('ready');
    assert.equal(m.inst.endpoint, 'http://127.0.0.1:1');
    assert.equal(m.inst.freshlyReady, true);
    assert.equal(m.inst.lastActivityAt, 2_000);
    m.ctl.lost('refused');
    assert.equal(m.inst.endpoint, undefined);
    assert.deepEqual(m.moves, ['start->starting', 'ready->ready', 'lost->starting']);
  });

  it('counts failures for the cool-down and forgets the handle once stopped', () => {
    const m = into('failed');
    assert.equal(m.inst.consecutiveFailures, 1);
    assert.equal(m.inst.failedUntil, 5_000);
    assert.equal(m.inst.settledAt, 1_000);
    m.ctl.start();
    m.ctl.setHandle('vm-1');
    m.ctl.beginStop('idle');
    assert.equal(m.inst.handle, 'vm-1', 'the stop call needs the handle');
    m.ctl.stopped('idle');
    assert.equal(m.inst.handle, undefined);
  });

  it('never lets the connection count go below zero', () => {
    const m = into('ready');
    assert.equal(m.ctl.connectionEnded(), false);
    m.ctl.connectionBegun();
    assert.equal(m.inst.activeConnections, 1);
    assert.equal(m.ctl.connectionEnded(), true);
    assert.equal(m.inst.activeConnections, 0);
  });

  it('refuses a start phase or a flight outside starting', () => {
    const m = into('ready');
    assert.throws(() => m.ctl.setPhase('probing'), /outside starting/);
    assert.throws(() => m.ctl.beginFlight(0), /outside starting/);
  });

  it('offers the data plane no way to write (compile-time)', () => {
    const m = into('ready');
    // @ts-expect-error status is read-only: only InstanceControl changes it
    assert.throws(() => { m.inst.status = 'stopped'; }, TypeError);
    // @ts-expect-error the connection count is reported through the ConnectionPort
    assert.throws(() => { m.inst.activeConnections = 3; }, TypeError);
    assert.equal(m.inst.status, 'ready');
  });
});
