/**
 * The release ramp: when a backend becomes ready, its held requests are not all sent at
 * once (Knative's issue 9888: 3,244 × 502 at 700 rps from releasing a whole queue onto a
 * fresh container). At most `concurrency` requests are in flight to the instance; each
 * finished forward lets the next held request go, oldest first.
 *
 * "In flight" is the instance's `activeConnections`, so warm requests arriving meanwhile
 * count too. Long-lived connections (SSE, WebSocket) would hold their slot for ever; a stall
 * timer lets one more batch go when no slot freed for `stallMs`, so held requests never
 * wait out their deadline behind open streams.
 */
import type { Clock, TimerHandle } from './ports.ts';

export interface RampTarget<W> {
  /** Held requests in arrival order. */
  readonly waiting: () => Iterable<W>;
  readonly waitingCount: () => number;
  readonly inFlight: () => number;
  /** False when the instance is no longer ready: the ramp stops. */
  readonly canRelease: () => boolean;
  readonly release: (waiter: W) => void;
}

export class ReleaseRamp<W> {
  readonly #clock: Clock;
  readonly #concurrency: number;
  readonly #stallMs: number;
  readonly #target: RampTarget<W>;
  #settleTimer: TimerHandle | undefined;
  #stallTimer: TimerHandle | undefined;
  #pumping = false;

  constructor(clock: Clock, concurrency: number, stallMs: number, target: RampTarget<W>) {
    this.#clock = clock;
    this.#concurrency = Math.max(1, concurrency);
    this.#stallMs = stallMs;
    this.#target = target;
  }

  /** True while held requests remain to be released. */
  get active(): boolean {
    return this.#settleTimer !== undefined || this.#stallTimer !== undefined;
  }

  /**
   * Releases as many held requests as slots are free. Called on readiness, on every
   * finished forward, and by its own timers.
   */
  pump(force = false): void {
    // A release runs the request on at once (its forward may end, and pump, within it): the
    // outer pump counts what is in flight once it is done, through its settle timer.
    if (this.#settleTimer !== undefined || this.#pumping) return;
    if (!this.#target.canRelease() || this.#target.waitingCount() === 0) {
      this.cancel();
      return;
    }
    let free = this.#concurrency - this.#target.inFlight();
    if (force) free = Math.max(free, this.#concurrency);
    if (free <= 0) {
      this.#armStall();
      return;
    }
    const batch: W[] = [];
    for (const w of this.#target.waiting()) {
      if (batch.length >= free) break;
      batch.push(w);
    }
    this.#pumping = true;
    try {
      for (const w of batch) this.#target.release(w);
    } finally {
      this.#pumping = false;
    }
    this.#stallTimer?.cancel();
    this.#stallTimer = undefined;
    if (this.#target.waitingCount() === 0) return;
    // The released requests start their forwards within this turn; count them before
    // releasing more.
    this.#settleTimer = this.#clock.setTimeout(() => {
      this.#settleTimer = undefined;
      this.pump();
    }, 0);
  }

  cancel(): void {
    this.#settleTimer?.cancel();
    this.#settleTimer = undefined;
    this.#stallTimer?.cancel();
    this.#stallTimer = undefined;
  }

  #armStall(): void {
    if (this.#stallTimer !== undefined || this.#stallMs <= 0) return;
    this.#stallTimer = this.#clock.setTimeout(() => {
      this.#stallTimer = undefined;
      this.pump(true);
    }, this.#stallMs);
  }
}
