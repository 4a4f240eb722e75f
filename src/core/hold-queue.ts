/**
 * Held requests: each waits (bounded per resource, in total, and in time) on its instance's
 * waiters until the start flight makes the instance ready, then goes through the release ramp
 * (bounded concurrency, oldest first). Held requests never call a provider.
 */
import { SmartProxyError } from './errors.ts';
import type { Instance, InstanceControl, Waiter } from './instance.ts';
import type { Clock, TimerHandle } from './ports.ts';
import { asError } from './provider-calls.ts';
import { ReleaseRamp } from './release-ramp.ts';

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

export class HoldQueue {
  readonly #o: HoldQueueOptions;
  readonly #heldByResource = new Map<string, number>();
  readonly #ramps = new Map<Instance, ReleaseRamp<Waiter>>();
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
   * `held` so that the caller can start the instance in the same tick.
   */
  hold(ctl: InstanceControl, signal: AbortSignal | undefined, timeoutMs: number, held: () => void): Promise<string> {
    const inst = ctl.instance;
    const resourceId = inst.resource.id;
    return new Promise<string>((resolve, reject) => {
      const done = (): void => {
        ctl.waiters.delete(waiter);
        timer.cancel();
        signal?.removeEventListener('abort', onAbort);
        this.#heldTotal--;
        this.#heldByResource.set(resourceId, (this.#heldByResource.get(resourceId) ?? 1) - 1);
      };
      const waiter: Waiter = {
        resolve: (endpoint) => { done(); resolve(endpoint); },
        reject: (err) => { done(); reject(err); },
      };
      const onAbort = (): void => waiter.reject(asError(signal?.reason));
      ctl.waiters.add(waiter);
      this.#heldTotal++;
      this.#heldByResource.set(resourceId, (this.#heldByResource.get(resourceId) ?? 0) + 1);
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer: TimerHandle = this.#o.clock.setTimeout(() => {
        waiter.reject(new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
          data: { resource: resourceId, waitedMs: timeoutMs }, retryAfterS: this.#o.retryAfterS(inst),
        }));
      }, timeoutMs);
      held();
    });
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
