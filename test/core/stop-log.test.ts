/**
 * Every stop is logged by the core, whatever the provider: an idle stop and an explicit one
 * each leave one info line naming the resource, the instance, the reason and how long it took.
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { makeReady, settle, setup } from './scripted.ts';

it('logs "instance stopped" with the reason for idle stops and explicit stops', async () => {
  const s = setup({ idleStopMs: 10_000 });
  const inst = await makeReady(s);
  await s.clock.advance(10_001);
  await settle();
  assert.equal(inst.status, 'stopped');
  const stops = (): Array<Record<string, unknown>> => s.logs.filter((l) => l.msg === 'instance stopped').map((l) => ({ level: l.level, ...(l.obj as Record<string, unknown>) }));
  assert.equal(stops().length, 1, JSON.stringify(s.logs.map((l) => l.msg)));
  assert.deepEqual({ ...stops()[0], reason: undefined, stopMs: undefined }, { level: 'info', resource: 'r', instance: inst.key, reason: undefined, stopMs: undefined });
  assert.match(String(stops()[0]?.reason), /^idle for \d+ ms/);
  assert.equal(typeof stops()[0]?.stopMs, 'number');

  await makeReady(s);
  await s.manager.stop(inst, 'operator asked');
  assert.equal(stops().length, 2);
  assert.equal(stops()[1]?.reason, 'operator asked');
});
