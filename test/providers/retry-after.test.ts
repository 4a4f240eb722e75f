/** Retry-After from a provider's API (RFC 9110 §10.2.3): seconds or an HTTP-date; anything else is no value. */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parseRetryAfter } from '../../src/providers/retry-after.ts';

void it('reads delta-seconds and HTTP-dates; refuses the rest', () => {
  const now = Date.UTC(2026, 11, 3, 12, 0, 0);
  assert.equal(parseRetryAfter('120', now), 120);
  assert.equal(parseRetryAfter(' 0 ', now), 0);
  assert.equal(parseRetryAfter(['7', '9'], now), 7, 'the first field counts');
  assert.equal(parseRetryAfter('Thu, 03 Dec 2026 12:00:30 GMT', now), 30);
  assert.equal(parseRetryAfter('Thu, 03 Dec 2026 11:00:00 GMT', now), 0, 'a date in the past: now');
  for (const bad of [undefined, '', '-1', '1.5', '12abc', 'soon', '99999999999999999999', '2026-12-03T12:00:30Z', 'Infinity']) {
    assert.equal(parseRetryAfter(bad, now), undefined, String(bad));
  }
});
