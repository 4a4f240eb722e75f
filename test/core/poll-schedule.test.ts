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

void it('without a history the pause is a tenth of the time elapsed, within [min, max]', () => {
  assert.equal(nextPollDelayMs(0, 20, 20, 250, undefined), 20);
  assert.equal(nextPollDelayMs(500, 152, 20, 250, undefined), 50);
  assert.equal(nextPollDelayMs(9000, 250, 20, 250, undefined), 250);
  // A boot ending anywhere in its first 2 s is seen within 10 % of its length (or min).
  const at = schedule(2000, undefined);
  for (let i = 1; i < at.length; i++) {
    const gap = at[i]! - at[i - 1]!;
    assert.ok(gap <= Math.max(20, Math.ceil(at[i - 1]! / 10)), `gap ${gap} after ${at[i - 1]}`);
  }
  assert.equal(at.length, 35, `polls by 2 s: ${at.join(',')}`);
  // The price is bounded: once the pause is at max, plain backoff would poll just as often.
  const plain = (until: number) => {
    let t = 0, b = 20, n = 1;
    while (t < until) { t += b; n++; b = Math.min(250, Math.ceil(b * 1.5)); }
    return n;
  };
  assert.ok(schedule(60_000, undefined).length - plain(60_000) <= 22);
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
