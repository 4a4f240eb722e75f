import type { BootEstimate } from './boot-history.ts';

/** Without a history, how late (as a share of the boot so far) a boot's end may be noticed. */
const FIRST_BOOT_FRACTION = 0.1;

/**
 * The pause before the next provider poll while an instance starts.
 *
 * Backoff alone (min → max, ×1.5) keeps provider calls few during a long boot, but a boot that
 * ends just after a poll is then noticed up to `maxMs` late (measured: 120 ms median for a
 * 300 ms boot with the defaults 20 → 250 ms). When past boots of the resource say when this
 * one should end, the schedule lands a poll at the start of that window and polls through it
 * at a short interval: `window / 20`, kept within [minMs, maxMs], so a narrow window (a
 * resource that boots alike every time) is polled every `minMs` and a wide one costs at most
 * about 20 extra calls. After the window, plain backoff.
 *
 * A first boot has no history: the pause is then a tenth of the time elapsed so far (kept
 * within [minMs, maxMs]), so the boot's end is noticed within ~10 % of its length whatever that
 * length is (plain ×1.5 backoff notices it up to a third of its length late: 153 ms for a boot
 * that ends just after the poll at 265 ms). The cost is more provider calls on that one boot:
 * 16 instead of 7 by 300 ms, 35 instead of 14 by 2 s, and no more than 22 extra in all, since
 * once the pause reaches maxMs both schedules poll alike.
 *
 * @param elapsedMs time since the start was requested
 * @param backoffMs the current backoff pause
 * @example nextPollDelayMs(100, 68, 20, 250, { samples: 5, p50Ms: 300, p90Ms: 340 }) // → 68
 */
export function nextPollDelayMs(elapsedMs: number, backoffMs: number, minMs: number, maxMs: number, estimate: BootEstimate | undefined): number {
  if (estimate === undefined) return Math.min(maxMs, Math.max(minMs, Math.ceil(elapsedMs * FIRST_BOOT_FRACTION)));
  const spreadMs = Math.max(0, estimate.p90Ms - estimate.p50Ms);
  const windowStartMs = Math.max(0, estimate.p50Ms - spreadMs - minMs);
  const windowEndMs = estimate.p90Ms + spreadMs + estimate.p50Ms / 4 + minMs;
  if (elapsedMs >= windowEndMs) return backoffMs;
  const inWindowMs = Math.min(maxMs, Math.max(minMs, (windowEndMs - windowStartMs) / 20));
  if (elapsedMs >= windowStartMs) return inWindowMs;
  // Before the window: back off as usual, but do not sleep past its start.
  return Math.max(1, Math.min(backoffMs, windowStartMs - elapsedMs));
}
