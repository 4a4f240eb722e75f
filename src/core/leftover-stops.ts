/**
 * Stops that no request waits for but that must happen: the clean-up after a failed start (a
 * machine that never became ready must not linger and cost money) and a stop that failed
 * (idle, operator: the machine may still run). The instance itself is already `failed` or
 * `stopped`; its provider is asked to stop it again with backoff until the stop succeeds, the
 * instance is started again, or the attempts run out (logged at error: the machine may be
 * left running).
 *
 * A new start of the instance first cancels a retry that is only scheduled and waits for one
 * in flight to end (`beforeStart`), so a late stop never cuts the machine that start brings
 * up; the start bumps the instance's generation, which ends the retries for good. This is
 * level-triggered the way Kubernetes controllers (and so KEDA) reconcile a scale to zero,
 * instead of one fire-and-forget call.
 */
import { isSmartProxyError } from './errors.ts';
import type { Instance } from './instance.ts';
import type { Clock, Logger, TimerHandle } from './ports.ts';
import { Aborted, errMessage, MAX_PROVIDER_RETRY_AFTER_S, type ProviderCalls } from './provider-calls.ts';

/** First pause before retrying a failed stop; doubles per attempt up to MAX_RETRY_MS. */
export const LEFTOVER_FIRST_RETRY_MS = 30_000;
const MAX_RETRY_MS = 600_000;
/** Attempts in all (the first included): about 25 minutes of retries at the default pauses. */
export const LEFTOVER_MAX_ATTEMPTS = 6;

export interface LeftoverStopsOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly calls: ProviderCalls;
  /** An instance stopped being busy here (the registry may forget it now). */
  readonly settled: () => void;
  /**
   * Whether stops may be tried again later. Not with replicas: another replica may have
   * started the instance meanwhile, and a stop outside the cluster's fenced stop leases would
   * cut the machine it serves; there only the immediate try is made.
   */
  readonly retryLater: boolean;
}

interface Pending {
  readonly gen: number;
  readonly reason: string;
  attempt: number;
  timer: TimerHandle | undefined;
  running: Promise<void> | undefined;
}

export class LeftoverStops {
  readonly #o: LeftoverStopsOptions;
  readonly #pending = new Map<Instance, Pending>();
  #closed = false;

  constructor(options: LeftoverStopsOptions) {
    this.#o = options;
  }

  /**
   * Makes sure the provider stops `inst` as it is now (its current generation): at once, or
   * after `firstDelayMs` when `attemptsSoFar` stops already failed (a stop that just failed
   * was retried until its deadline). False when nothing was scheduled (closed, or a later try
   * where only immediate ones are made).
   */
  schedule(inst: Instance, reason: string, firstDelayMs = 0, attemptsSoFar = 0): boolean {
    if (this.#closed || (firstDelayMs > 0 && !this.#o.retryLater)) return false;
    this.#cancel(inst);
    const p: Pending = { gen: inst.generation, reason, attempt: attemptsSoFar, timer: undefined, running: undefined };
    this.#pending.set(inst, p);
    if (firstDelayMs <= 0) this.#run(inst, p);
    else p.timer = this.#o.clock.setTimeout(() => this.#run(inst, p), firstDelayMs);
    return true;
  }

  /** A stop is scheduled or in flight for `inst` (it must not be forgotten meanwhile). */
  busy(inst: Instance): boolean {
    return this.#pending.has(inst);
  }

  /**
   * `inst` is about to start: a scheduled retry is dropped, and the returned promise (if any)
   * resolves once a stop already in flight has ended. Never rejects.
   */
  beforeStart(inst: Instance): Promise<void> | undefined {
    const p = this.#pending.get(inst);
    if (p === undefined) return undefined;
    p.timer?.cancel();
    p.timer = undefined;
    if (p.running === undefined) {
      this.#drop(inst, p);
      return undefined;
    }
    return p.running;
  }

  /** Scheduled retries are dropped (shutdown); a stop in flight runs to its end. */
  close(): void {
    this.#closed = true;
    for (const [inst, p] of this.#pending) {
      if (p.running === undefined) this.#cancel(inst);
    }
  }

  #cancel(inst: Instance): void {
    const p = this.#pending.get(inst);
    if (p === undefined) return;
    p.timer?.cancel();
    this.#drop(inst, p);
  }

  #drop(inst: Instance, p: Pending): void {
    if (this.#pending.get(inst) !== p) return;
    this.#pending.delete(inst);
    this.#o.settled();
  }

  #run(inst: Instance, p: Pending): void {
    p.timer = undefined;
    if (this.#pending.get(inst) !== p) return;
    if (inst.generation !== p.gen) {
      this.#drop(inst, p);
      return;
    }
    p.attempt++;
    const res = inst.resource;
    const { calls, clock, logger } = this.#o;
    // One call per try (its timeout, a provider's Retry-After): the backoff between tries is
    // this unit's, so a cloud that keeps failing is asked 6 times in 25 minutes, not hammered
    // by a retry loop per try. A new start (another generation) ends the tries.
    const guard = { inst, gen: p.gen, deadline: clock.now() + res.bootTimeoutMs, afterClose: true, stopRetrying: () => true };
    p.running = calls.withRetry(guard, (signal) => res.provider.stop(inst.ref, signal), 'stop').then(() => {
      p.running = undefined;
      logger.info({ resource: res.id, instance: inst.key, reason: p.reason, attempt: p.attempt }, 'left-over machine stopped');
      this.#drop(inst, p);
    }, (err: unknown) => {
      p.running = undefined;
      if (err instanceof Aborted || inst.generation !== p.gen) {
        this.#drop(inst, p);
        return;
      }
      if (p.attempt >= LEFTOVER_MAX_ATTEMPTS || this.#closed || !this.#o.retryLater) {
        logger.error({ resource: res.id, instance: inst.key, reason: p.reason, attempts: p.attempt, err: errMessage(err) },
          'giving up stopping a left-over machine; it may still be running');
        this.#drop(inst, p);
        return;
      }
      // Never sooner than a cloud that said when to come back asked.
      const askedMs = isSmartProxyError(err) ? Math.min(err.retryAfterS ?? 0, MAX_PROVIDER_RETRY_AFTER_S) * 1000 : 0;
      const retryInMs = Math.max(askedMs, Math.min(MAX_RETRY_MS, LEFTOVER_FIRST_RETRY_MS * 2 ** (p.attempt - 1)));
      logger.warn({ resource: res.id, instance: inst.key, reason: p.reason, attempt: p.attempt, retryInMs, err: errMessage(err) },
        'stopping a left-over machine failed; trying again later');
      p.timer = clock.setTimeout(() => this.#run(inst, p), retryInMs);
    });
  }
}
