import assert from 'node:assert/strict';
import { it } from 'node:test';
import { nextPollDelayMs } from '../../src/core/poll-schedule.ts';

const narrow = { samples: 10, p50Ms: 300, p90Ms: 340 };

/** Poll instants from 0 until `untilMs`, following the schedule as the manager does. */
function schedule(untilMs: number, estimate: typeof narrow | undefined): number[] {
  const at: number[] = [0];
  let backoff = 20;
  let t = 0;
  while (t < untilMs) {
    t += nextPollDelayMs(t, backoff, 20, 250, estimate);
    at.push(t);
    backoff = Math.min(250, Math.ceil(backoff * 1.5));
  }
  return at;
}

void it('without a history it is plain backoff', () => {
  assert.equal(nextPollDelayMs(500, 152, 20, 250, undefined), 152);
  assert.deepEqual(schedule(300, undefined), [0, 20, 50, 95, 163, 265, 418]);
});

void it('with a narrow history, polls land every min interval around the expected end', () => {
  const at = schedule(420, narrow);
  // No poll gap longer than 20 ms inside [260, 400]: a boot ending there is seen within 20 ms.
  const inside = at.filter((t) => t >= 250 && t <= 420);
  for (let i = 1; i < inside.length; i++) assert.ok(inside[i]! - inside[i - 1]! <= 20, `gap at ${inside[i]}`);
  assert.ok(inside[0]! <= 260, `first poll of the window at ${inside[0]}`);
  // And few calls before it.
  assert.ok(at.filter((t) => t < 240).length <= 7, `polls before the window: ${at.join(',')}`);
});

void it('a wide history costs about 20 polls in the window, never more often than the max allows', () => {
  const wide = { samples: 10, p50Ms: 5000, p90Ms: 9000 };
  assert.equal(nextPollDelayMs(5000, 250, 20, 250, wide), 250);
  const mid = { samples: 10, p50Ms: 2000, p90Ms: 2400 };
  const d = nextPollDelayMs(2000, 250, 20, 250, mid);
  assert.ok(d > 20 && d < 250, `in-window delay ${d}`);
});

void it('past the window it falls back to backoff', () => {
  assert.equal(nextPollDelayMs(2000, 250, 20, 250, narrow), 250);
});
