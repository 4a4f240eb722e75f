/**
 * Held requests: each waits (bounded per resource, in total, and in time) on its instance's
 * waiters until the start flight makes the instance ready, then goes through the release ramp
 * (bounded concurrency, oldest first). Held requests never call a provider.
 */
import { SmartProxyError } from './errors.ts';
import { DeadlineHeap, type Deadlined } from './deadline-heap.ts';
import type { Instance, InstanceControl, Waiter } from './instance.ts';
import type { Clock, TimerHandle } from './ports.ts';
import { asError } from './provider-calls.ts';
import { ReleaseRamp } from './release-ramp.ts';
import type { StartRequester } from './resource-runtime.ts';

const DEFAULT_RELEASE_CONCURRENCY = 64;
/** A ramp with no free slot for this long lets one more batch go (see release-ramp.ts). */
const RELEASE_STALL_MS = 2_000;

export interface HoldQueueOptions {
  readonly clock: Clock;
  /** Requests held at once over all resources. */
  readonly maxHeldTotal: number;
  readonly retryAfterS: (inst: Instance) => number;
  readonly closed: () => boolean;
}

export interface HoldOptions {
  readonly timeoutMs: number;
  /** Who a start made for this hold is counted for. */
  readonly requester?: StartRequester | undefined;
}

/**
 * How a hold ends: with the endpoint, or with why not. Called once, from loops over many held
 * requests (the release ramp, the deadline timer): it must not throw.
 */
export type HoldSettled = (endpoint: string | undefined, err: Error | undefined) => void;

/**
 * The object form of HoldSettled: a caller that keeps per-request state in an object of its
 * own passes that object, instead of a closure (and the scope it keeps) per held request.
 */
export interface HoldTarget {
  holdEnded(endpoint: string | undefined, err: Error | undefined): void;
}

/** How a hold's end is told: the callback, or the target's method. */
export type HoldEnd = HoldSettled | HoldTarget;

let dropHeld: (queue: HoldQueue, h: HeldRequest) => void;

/**
 * One held request. Held requests are many and long-lived, so this is all one costs in the
 * core: this object (its methods on the prototype, no closure, promise or timer of its own),
 * its place in the instance's waiters and in the queue's deadline heap.
 */
export class HeldRequest implements Waiter, Deadlined {
  heapIndex = -1;
  readonly deadline: number;
  readonly timeoutMs: number;
  /** The instance's control: the one writer of its waiters. */
  readonly control: InstanceControl;
  readonly #queue: HoldQueue;
  #settled: HoldEnd | undefined;

  constructor(queue: HoldQueue, control: InstanceControl, deadline: number, timeoutMs: number, settled: HoldEnd) {
    this.#queue = queue;
    this.control = control;
    this.deadline = deadline;
    this.timeoutMs = timeoutMs;
    this.#settled = settled;
  }

  get instance(): Instance {
    return this.control.instance;
  }

  /** Still held (not yet released, rejected or cancelled). */
  get pending(): boolean {
    return this.#settled !== undefined;
  }

  resolve(endpoint: string): void {
    this.#end(endpoint, undefined);
  }

  /** Ends the hold with `err`; also how the data plane cancels it when its client leaves. */
  reject(err: Error): void {
    this.#end(undefined, err);
  }

  #end(endpoint: string | undefined, err: Error | undefined): void {
    const settled = this.#settled;
    if (settled === undefined) return;
    this.#settled = undefined;
    dropHeld(this.#queue, this);
    if (typeof settled === 'function') settled(endpoint, err);
    else settled.holdEnded(endpoint, err);
  }
}

/**
 * The promise form of a hold (WebSocket upgrades, a re-hold after a lost backend): rejects
 * with `signal.reason` when it aborts.
 */
export function holdAsPromise(hold: (settled: HoldSettled) => HeldRequest | string | Error, signal: AbortSignal | undefined): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const onAbort = (): void => {
      if (h instanceof HeldRequest) h.reject(asError(signal?.reason));
    };
    const h = hold((endpoint, err) => {
      signal?.removeEventListener('abort', onAbort);
      if (err === undefined && endpoint !== undefined) resolve(endpoint);
      else reject(err ?? new Error('hold ended without an endpoint'));
    });
    if (typeof h === 'string') resolve(h);
    else if (h instanceof Error) reject(h);
    // A start that failed at once has settled it already: nothing left to abort.
    else if (h.pending) signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class HoldQueue {
  readonly #o: HoldQueueOptions;
  readonly #heldByResource = new Map<string, number>();
  readonly #ramps = new Map<Instance, ReleaseRamp<Waiter>>();
  readonly #deadlines = new DeadlineHeap<HeldRequest>();
  #deadlineTimer: TimerHandle | undefined;
  #deadlineAt = Infinity;
  #heldTotal = 0;

  constructor(options: HoldQueueOptions) {
    this.#o = options;
  }

  /** Requests held right now over all resources. */
  get heldTotal(): number {
    return this.#heldTotal;
  }

  /** SP_HOLD_QUEUE_FULL when one more request for `inst` would pass a bound. */
  full(inst: Instance): SmartProxyError | undefined {
    const resourceId = inst.resource.id;
    const heldHere = this.#heldByResource.get(resourceId) ?? 0;
    if (heldHere < inst.resource.maxHeldRequests && this.#heldTotal < this.#o.maxHeldTotal) return undefined;
    const scope = heldHere >= inst.resource.maxHeldRequests ? 'resource' : 'total';
    return new SmartProxyError('SP_HOLD_QUEUE_FULL', undefined, {
      data: { resource: resourceId, scope }, retryAfterS: this.#o.retryAfterS(inst),
    });
  }

  /**
   * Holds one request on `ctl`'s instance (bounds already checked with `full`), then calls
   * `held` so that the caller can start the instance in the same tick. `settled` is called
   * once: with the endpoint, or with the error (the hold's own timeout, SP_BOOT_TIMEOUT; the
   * start's failure; whatever `cancel` is given when the client leaves), possibly before this
   * returns (a start that fails at once).
   */
  hold(ctl: InstanceControl, timeoutMs: number, settled: HoldEnd, held: () => void): HeldRequest {
    const h = new HeldRequest(this, ctl, this.#o.clock.now() + timeoutMs, timeoutMs, settled);
    ctl.waiters.add(h);
    this.#heldTotal++;
    const resourceId = ctl.instance.resource.id;
    this.#heldByResource.set(resourceId, (this.#heldByResource.get(resourceId) ?? 0) + 1);
    this.#deadlines.push(h);
    this.#armDeadline();
    held();
    return h;
  }

  /** `h` left the queue (released, rejected or cancelled): HeldRequest calls this, once. */
  static {
    dropHeld = (q, h) => q.#drop(h);
  }

  #drop(h: HeldRequest): void {
    h.control.waiters.delete(h);
    this.#deadlines.remove(h);
    if (this.#deadlines.size === 0) this.#cancelDeadline();
    this.#heldTotal--;
    const resourceId = h.instance.resource.id;
    this.#heldByResource.set(resourceId, (this.#heldByResource.get(resourceId) ?? 1) - 1);
  }

  /** One timer for the earliest deadline of all held requests (see deadline-heap.ts). */
  #armDeadline(): void {
    const next = this.#deadlines.peek();
    if (next === undefined || (this.#deadlineTimer !== undefined && this.#deadlineAt <= next.deadline)) return;
    this.#deadlineTimer?.cancel();
    this.#deadlineAt = next.deadline;
    this.#deadlineTimer = this.#o.clock.setTimeout(() => this.#expire(), Math.max(0, next.deadline - this.#o.clock.now()));
  }

  #cancelDeadline(): void {
    this.#deadlineTimer?.cancel();
    this.#deadlineTimer = undefined;
    this.#deadlineAt = Infinity;
  }

  /** Ends every hold whose own timeout has come (SP_BOOT_TIMEOUT), then waits for the next. */
  #expire(): void {
    this.#deadlineTimer = undefined;
    this.#deadlineAt = Infinity;
    const now = this.#o.clock.now();
    for (let h = this.#deadlines.peek(); h !== undefined && h.deadline <= now; h = this.#deadlines.peek()) {
      const inst = h.instance;
      h.reject(new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
        data: { resource: inst.resource.id, waitedMs: h.timeoutMs }, retryAfterS: this.#o.retryAfterS(inst),
      }));
    }
    this.#armDeadline();
  }

  /** Lets held requests go through the release ramp (bounded concurrency, oldest first). */
  release(inst: Instance): void {
    if (inst.endpoint === undefined || inst.waiters.size === 0 || inst.draining) return;
    let ramp = this.#ramps.get(inst);
    if (ramp === undefined) {
      ramp = new ReleaseRamp<Waiter>(this.#o.clock, inst.resource.releaseConcurrency ?? DEFAULT_RELEASE_CONCURRENCY, RELEASE_STALL_MS, {
        waiting: () => inst.waiters,
        waitingCount: () => inst.waiters.size,
        inFlight: () => inst.activeConnections,
        canRelease: () => inst.status === 'ready' && inst.endpoint !== undefined && !inst.draining && !this.#o.closed(),
        release: (w) => { if (inst.endpoint !== undefined) w.resolve(inst.endpoint); },
      });
      this.#ramps.set(inst, ramp);
    }
    ramp.pump();
  }

  /** A connection to `inst` ended: its slot may let the next held request go. */
  connectionEnded(inst: Instance): void {
    if (inst.waiters.size > 0) this.#ramps.get(inst)?.pump();
  }

  /** Rejects every request held on `inst`. */
  rejectAll(inst: Instance, err: Error): void {
    for (const w of [...inst.waiters]) w.reject(err);
  }

  /** The instance left `ready`: its ramp stops (the held requests stay held). */
  pause(inst: Instance): void {
    this.#ramps.get(inst)?.cancel();
  }

  forget(inst: Instance): void {
    this.#ramps.get(inst)?.cancel();
    this.#ramps.delete(inst);
  }
}
