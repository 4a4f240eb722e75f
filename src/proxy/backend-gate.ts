/**
 * A bounded queue in front of one backend's connection pool (every queue here
 * is bounded). undici's pool queues without limit and without deadline: with every
 * connection taken by slow uploads or a hung backend, everyone else waited forever. Here at
 * most `maxInFlight` requests (the pool's size) are handed to undici, so its own queue stays
 * empty; the rest wait in a FIFO of at most `maxQueued`, each at most `queueTimeoutMs`, and
 * then get 503 + Retry-After. A waiter whose client leaves is dropped from the queue.
 */
import { SmartProxyError } from '../core/errors.ts';

/** Gives the slot back; calling it twice is harmless. */
export type ReleaseSlot = () => void;

export interface BackendGateOptions {
  readonly maxInFlight: number;
  readonly maxQueued: number;
  readonly queueTimeoutMs: number;
}

interface Waiter {
  readonly grant: (release: ReleaseSlot) => void;
  readonly fail: (err: SmartProxyError) => void;
  timer: NodeJS.Timeout | undefined;
  done: boolean;
}

export class BackendGate {
  readonly #o: BackendGateOptions;
  readonly #origin: string;
  readonly #queue: Waiter[] = [];
  #inFlight = 0;

  constructor(origin: string, options: BackendGateOptions) {
    this.#origin = origin;
    this.#o = options;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /** A slot now, or undefined when all are taken (the warm path: no promise, no timer). */
  tryAcquire(): ReleaseSlot | undefined {
    if (this.#inFlight >= this.#o.maxInFlight) return undefined;
    this.#inFlight++;
    return this.#releaser();
  }

  /**
   * Waits in the queue for a slot. Rejects with SP_UPSTREAM_QUEUE_FULL at once when the
   * queue is full, SP_UPSTREAM_QUEUE_TIMEOUT after the deadline. `onGone` registers a
   * callback for the client leaving; the waiter then leaves the queue and the promise
   * resolves undefined.
   */
  acquire(onGone: (leave: () => void) => void): Promise<ReleaseSlot | undefined> {
    const now = this.tryAcquire();
    if (now !== undefined) return Promise.resolve(now);
    const retryAfterS = Math.max(1, Math.ceil(this.#o.queueTimeoutMs / 1000));
    if (this.#queue.length >= this.#o.maxQueued) {
      return Promise.reject(new SmartProxyError('SP_UPSTREAM_QUEUE_FULL', undefined, {
        data: { backend: this.#origin, inFlight: this.#inFlight, queued: this.#queue.length }, retryAfterS,
      }));
    }
    return new Promise<ReleaseSlot | undefined>((resolve, reject) => {
      const w: Waiter = { grant: resolve, fail: reject, timer: undefined, done: false };
      const leave = (): void => {
        if (w.done) return;
        w.done = true;
        clearTimeout(w.timer);
        this.#remove(w);
      };
      w.timer = setTimeout(() => {
        leave();
        reject(new SmartProxyError('SP_UPSTREAM_QUEUE_TIMEOUT', `no connection to the backend became free within ${this.#o.queueTimeoutMs} ms`, {
          data: { backend: this.#origin, queueTimeoutMs: this.#o.queueTimeoutMs }, retryAfterS,
        }));
      }, this.#o.queueTimeoutMs);
      this.#queue.push(w);
      onGone(() => {
        leave();
        resolve(undefined);
      });
    });
  }

  #remove(w: Waiter): void {
    const i = this.#queue.indexOf(w);
    if (i !== -1) this.#queue.splice(i, 1);
  }

  #releaser(): ReleaseSlot {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // Hand the slot straight to the next waiter, if any.
      for (let w = this.#queue.shift(); w !== undefined; w = this.#queue.shift()) {
        if (w.done) continue;
        w.done = true;
        clearTimeout(w.timer);
        w.grant(this.#releaser());
        return;
      }
      this.#inFlight--;
    };
  }
}
