/**
 * Idle decisions and keep-warm windows, driven by a ManualClock (no sleeps, no sockets).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import { idleVerdict } from '../../src/core/idle-reaper.ts';
import { KeepWarmPolicy, KeepWarmScheduler, cronProblem } from '../../src/core/keep-warm.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import { settle, setup } from './scripted.ts';

const MIN = 60_000;
const HOUR = 60 * MIN;

describe('idleVerdict', () => {
  const base = { nowMs: 100_000, idleStopMs: 10_000, lastActivityAt: 80_000, activeConnections: 0, heldRequests: 0, keptWarm: false };
  it('stops once idleStopMs passed since the last activity', () => {
    assert.deepEqual(idleVerdict(base), { stop: true, idleForMs: 20_000 });
  });
  it('re-checks when the idle period can end at the earliest', () => {
    assert.deepEqual(idleVerdict({ ...base, lastActivityAt: 97_000 }), { stop: false, recheckInMs: 7_000, why: 'recent-activity' });
  });
  it('never stops under an open connection or a held request', () => {
    assert.equal(idleVerdict({ ...base, activeConnections: 1 }).stop, false);
    assert.equal(idleVerdict({ ...base, heldRequests: 1 }).stop, false);
  });
  it('never stops below the keep-warm floor, and looks again when the floor may change', () => {
    assert.deepEqual(idleVerdict({ ...base, keptWarm: true, keepWarmChangesAt: 103_000 }), { stop: false, recheckInMs: 3_000, why: 'kept-warm' });
  });
});

describe('KeepWarmPolicy', () => {
  it('reads windows as the minutes a 5-field cron expression matches', () => {
    const p = new KeepWarmPolicy({ minInstances: 0, windows: [{ cron: '* 8-17 * * 1-5', minInstances: 2 }], timeZone: 'UTC', groups: [] });
    const mon = Date.UTC(2026, 0, 5); // a Monday
    assert.equal(p.minInstancesAt(mon + 7 * HOUR + 59 * MIN + 59_000), 0);
    assert.equal(p.minInstancesAt(mon + 8 * HOUR), 2);
    assert.equal(p.minInstancesAt(mon + 17 * HOUR + 59 * MIN + 30_000), 2);
    assert.equal(p.minInstancesAt(mon + 18 * HOUR), 0);
    assert.equal(p.minInstancesAt(mon - 2 * 24 * HOUR + 10 * HOUR), 0, 'not on Saturday');
    assert.equal(p.nextChangeAt(mon + 7 * HOUR + 30 * MIN), mon + 8 * HOUR, 'closed: the next opening');
    assert.equal(p.nextChangeAt(mon + 9 * HOUR + 30_000), mon + 9 * HOUR + MIN, 'open: the next minute');
  });
  it('has a floor outside windows too', () => {
    const p = new KeepWarmPolicy({ minInstances: 1, windows: [], groups: [] });
    assert.equal(p.minInstancesAt(0), 1);
    assert.equal(p.nextChangeAt(0), undefined);
  });
  it('says what is wrong with a bad expression', () => {
    assert.match(cronProblem('* * * *') ?? '', /5 fields/);
    assert.match(cronProblem('0 0 * * * *') ?? '', /5 fields/);
    assert.ok(cronProblem('99 * * * *') !== undefined);
    assert.ok(cronProblem('* * * * *', 'Not/AZone') !== undefined);
    assert.equal(cronProblem('*/15 8-17 * * mon-fri', 'Europe/Berlin'), undefined);
  });
});

describe('keep-warm with the resource manager', () => {
  it('pre-starts when a window opens, keeps the instance through it, and lets idle stop it when it closes', async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 5, 7, 58));
    const policy = new KeepWarmPolicy({ minInstances: 0, windows: [{ cron: '* 8-9 * * *', minInstances: 1 }], timeZone: 'UTC', groups: [] });
    const s = setup({ idleStopMs: 10 * MIN, keepWarm: policy }, clock);
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const scheduler = new KeepWarmScheduler({ clock, logger: collectingLogger([]), target: s.manager.keepWarmTarget(new Map([['r', s.resource]])), policies: new Map([['r', policy]]) });
    scheduler.start();
    try {
      await clock.advance(MIN + 59_000);
      assert.equal(s.provider.starts.length, 0, 'nothing before the window');
      await clock.advance(1_000);
      await clock.advance(100);
      assert.equal(s.provider.starts.length, 1, 'pre-started at 08:00');
      const [inst] = s.manager.instancesOf('r');
      assert.equal(inst?.status, 'ready');
      // Idle for two hours, but inside the window: kept.
      await clock.advance(HOUR + 59 * MIN + 50_000);
      assert.equal(inst.status, 'ready', 'kept warm until 09:59');
      await clock.advance(15_000);
      await settle();
      assert.equal(inst.status, 'stopped', 'idle stop once the window closed at 10:00');
      assert.equal(s.provider.stops.length, 1);
      assert.equal(s.provider.starts.length, 1);
    } finally {
      scheduler.close();
      s.manager.close();
    }
  });

  it('with minInstances: 1 starts at once and never idle-stops the last instance', async () => {
    const clock = new ManualClock();
    const policy = new KeepWarmPolicy({ minInstances: 1, windows: [], groups: [] });
    const s = setup({ idleStopMs: MIN, keepWarm: policy }, clock);
    s.provider.state = { state: 'running', endpoint: 'http://127.0.0.1:1' };
    s.probe.ok = true;
    const scheduler = new KeepWarmScheduler({ clock, logger: collectingLogger([]), target: s.manager.keepWarmTarget(new Map([['r', s.resource]])), policies: new Map([['r', policy]]) });
    scheduler.start();
    try {
      await clock.advance(100);
      await clock.advance(HOUR);
      assert.equal(s.provider.starts.length, 1);
      assert.equal(s.provider.stops.length, 0);
      assert.equal([...s.manager.instancesOf('r')][0]?.status, 'ready');
    } finally {
      scheduler.close();
      s.manager.close();
    }
  });
});
