/**
 * Stops that no request waits for but that must happen: the clean-up after a failed start (a
 * machine that never became ready must not linger and cost money) and a stop that failed
 * (idle, operator: the machine may still run). The instance itself is already `failed` or
 * `stopped`; its provider is asked to stop it again with backoff until the stop succeeds, the
 * instance is started again, or the attempts run out (logged at error: the machine may be
 * left running).
 *
 * Operators see every owed stop (`stateOf`, the admin API, dashboard, `smart-proxy status`,
 * a gauge): its attempts, the next try's time and the last error. One whose tries ran out is
 * not dropped silently: it stays `given-up` (the instance is kept, not forgotten, and an audit
 * entry is written through `changed`), because a machine left running costs money, until the
 * instance starts again or an operator retries it (`retryNow`) or lets it go (`abandon`).
 * Given-up records are bounded (MAX_GIVEN_UP, oldest let go first, logged).
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
/** Given-up stops kept on show; past this the oldest is let go (logged at error). */
export const MAX_GIVEN_UP = 1_000;

/** An owed stop as operators see it. */
export interface StopRetryState {
  /** `scheduled`: waiting for its next try; `running`: a try in flight; `given-up`: tries ran out. */
  readonly state: 'scheduled' | 'running' | 'given-up';
  /** Why the stop is owed (a failed start's clean-up, a failed idle or operator stop…). */
  readonly reason: string;
  /** Tries made so far. */
  readonly attempts: number;
  readonly maxAttempts: number;
  /** When the next try is due (ms); undefined while one runs or once given up. */
  readonly nextAttemptAt: number | undefined;
  readonly lastError: string | undefined;
  /** When the stop became owed (ms). */
  readonly since: number;
  /** When the tries ran out (ms), once given up. */
  readonly gaveUpAt: number | undefined;
}

/**
 * What happened to an owed stop (published as a manager event): a try failed, the tries ran
 * out, it stopped (these three are audited here); an operator retried it now or let it go
 * (audited by the admin API, with the operator).
 */
export type StopRetryOutcome = 'failed' | 'given-up' | 'stopped' | 'retrying' | 'abandoned';

/** The operators' side of the owed stops (what the admin API may call). */
export interface StopRetries {
  stateOf(inst: Instance): StopRetryState | undefined;
  /** Owed stops now: `pending` (scheduled or running) and `givenUp`. */
  counts(): { readonly pending: number; readonly givenUp: number };
  /** Every instance with an owed stop (pending or given up). */
  instances(): Iterable<Instance>;
  /**
   * Tries the stop now: a scheduled one at once, a given-up one afresh (a new series of
   * tries). `running` when a try is in flight already; `none` when nothing is owed;
   * `unsupported` where only immediate tries are made (replicas).
   */
  retryNow(inst: Instance): 'started' | 'running' | 'none' | 'unsupported';
  /** Lets an owed stop go (the operator takes care of the machine): `none` when nothing is owed, `running` while a try is in flight. */
  abandon(inst: Instance): 'abandoned' | 'running' | 'none';
}

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
  /** A try of an owed stop failed, its tries ran out or it succeeded; an operator retried it or let it go (events, audit, live views). */
  readonly changed: (inst: Instance, outcome: StopRetryOutcome, state: StopRetryState) => void;
}

interface Pending {
  readonly gen: number;
  readonly reason: string;
  readonly since: number;
  attempt: number;
  timer: TimerHandle | undefined;
  nextAt: number | undefined;
  lastError: string | undefined;
  running: Promise<void> | undefined;
}

interface GivenUp {
  readonly gen: number;
  readonly state: StopRetryState;
}

export class LeftoverStops implements StopRetries {
  readonly #o: LeftoverStopsOptions;
  readonly #pending = new Map<Instance, Pending>();
  /** Stops whose tries ran out, oldest first (Map order). */
  readonly #givenUp = new Map<Instance, GivenUp>();
  #closed = false;

  constructor(options: LeftoverStopsOptions) {
    this.#o = options;
  }

  /**
   * Makes sure the provider stops `inst` as it is now (its current generation): at once, or
   * after `firstDelayMs` when `attemptsSoFar` stops already failed (a stop that just failed
   * was retried until its deadline; `lastError` is why). False when nothing was scheduled
   * (closed, or a later try where only immediate ones are made).
   */
  schedule(inst: Instance, reason: string, firstDelayMs = 0, attemptsSoFar = 0, lastError?: string): boolean {
    if (this.#closed || (firstDelayMs > 0 && !this.#o.retryLater)) return false;
    this.#cancel(inst);
    this.#givenUp.delete(inst);
    const p: Pending = {
      gen: inst.generation, reason, since: this.#o.clock.now(), attempt: attemptsSoFar, timer: undefined, nextAt: undefined, lastError, running: undefined,
    };
    this.#pending.set(inst, p);
    if (firstDelayMs <= 0) this.#run(inst, p);
    else this.#later(inst, p, firstDelayMs);
    return true;
  }

  /**
   * A stop is scheduled or in flight for `inst`, or its tries ran out: it must not be
   * forgotten meanwhile (a given-up stop stays on show until someone acts).
   */
  busy(inst: Instance): boolean {
    return this.#pending.has(inst) || this.#givenUp.has(inst);
  }

  stateOf(inst: Instance): StopRetryState | undefined {
    const p = this.#pending.get(inst);
    if (p !== undefined) return this.#stateOf(p);
    return this.#givenUp.get(inst)?.state;
  }

  counts(): { readonly pending: number; readonly givenUp: number } {
    return { pending: this.#pending.size, givenUp: this.#givenUp.size };
  }

  *instances(): Iterable<Instance> {
    yield* this.#pending.keys();
    yield* this.#givenUp.keys();
  }

  retryNow(inst: Instance): 'started' | 'running' | 'none' | 'unsupported' {
    const p = this.#pending.get(inst);
    if (p !== undefined) {
      if (p.running !== undefined) return 'running';
      p.timer?.cancel();
      this.#run(inst, p);
      this.#o.changed(inst, 'retrying', this.#stateOf(p));
      return 'started';
    }
    const g = this.#givenUp.get(inst);
    if (g === undefined) return 'none';
    // Replicas fence their stops: a late one outside the cluster's leases could cut the
    // machine another replica started meanwhile (see LeftoverStopsOptions.retryLater).
    if (!this.#o.retryLater) return 'unsupported';
    this.#givenUp.delete(inst);
    if (g.gen !== inst.generation || this.#closed) {
      this.#o.settled();
      return 'none';
    }
    this.schedule(inst, g.state.reason);
    const fresh = this.#pending.get(inst);
    if (fresh !== undefined) this.#o.changed(inst, 'retrying', this.#stateOf(fresh));
    return 'started';
  }

  abandon(inst: Instance): 'abandoned' | 'running' | 'none' {
    const p = this.#pending.get(inst);
    if (p?.running !== undefined) return 'running';
    const state = this.stateOf(inst);
    if (state === undefined) return 'none';
    if (p !== undefined) this.#cancel(inst);
    else if (this.#givenUp.delete(inst)) this.#o.settled();
    this.#o.changed(inst, 'abandoned', state);
    return 'abandoned';
  }

  /**
   * `inst` is about to start: a scheduled retry is dropped, and the returned promise (if any)
   * resolves once a stop already in flight has ended. Never rejects.
   */
  beforeStart(inst: Instance): Promise<void> | undefined {
    // A start takes the machine over again: a given-up stop is no longer owed.
    if (this.#givenUp.delete(inst)) this.#o.settled();
    const p = this.#pending.get(inst);
    if (p === undefined) return undefined;
    p.timer?.cancel();
    p.timer = undefined;
    p.nextAt = undefined;
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

  #stateOf(p: Pending): StopRetryState {
    return {
      state: p.running !== undefined ? 'running' : 'scheduled', reason: p.reason, attempts: p.attempt, maxAttempts: LEFTOVER_MAX_ATTEMPTS,
      nextAttemptAt: p.running !== undefined ? undefined : p.nextAt, lastError: p.lastError, since: p.since, gaveUpAt: undefined,
    };
  }

  #later(inst: Instance, p: Pending, delayMs: number): void {
    p.nextAt = this.#o.clock.now() + delayMs;
    p.timer = this.#o.clock.setTimeout(() => this.#run(inst, p), delayMs);
  }

  /** Tries ran out: kept on show (bounded), not dropped. */
  #giveUp(inst: Instance, p: Pending): void {
    if (this.#pending.get(inst) === p) this.#pending.delete(inst);
    const state: StopRetryState = { ...this.#stateOf(p), state: 'given-up', nextAttemptAt: undefined, gaveUpAt: this.#o.clock.now() };
    this.#givenUp.set(inst, { gen: p.gen, state });
    if (this.#givenUp.size > MAX_GIVEN_UP) {
      const [oldest] = this.#givenUp.keys();
      if (oldest !== undefined) {
        this.#givenUp.delete(oldest);
        this.#o.logger.error({ resource: oldest.resource.id, instance: oldest.key, kept: MAX_GIVEN_UP }, 'too many given-up stops on show: the oldest is no longer shown (it is in the audit log)');
      }
    }
    this.#o.settled();
    this.#o.changed(inst, 'given-up', state);
  }

  #run(inst: Instance, p: Pending): void {
    p.timer = undefined;
    p.nextAt = undefined;
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
      const state = this.#stateOf(p);
      this.#drop(inst, p);
      this.#o.changed(inst, 'stopped', state);
    }, (err: unknown) => {
      p.running = undefined;
      if (err instanceof Aborted || inst.generation !== p.gen) {
        this.#drop(inst, p);
        return;
      }
      p.lastError = errMessage(err);
      if (p.attempt >= LEFTOVER_MAX_ATTEMPTS || this.#closed || !this.#o.retryLater) {
        logger.error({ resource: res.id, instance: inst.key, reason: p.reason, attempts: p.attempt, err: p.lastError },
          'giving up stopping a left-over machine; it may still be running');
        this.#giveUp(inst, p);
        return;
      }
      // Never sooner than a cloud that said when to come back asked.
      const askedMs = isSmartProxyError(err) ? Math.min(err.retryAfterS ?? 0, MAX_PROVIDER_RETRY_AFTER_S) * 1000 : 0;
      const retryInMs = Math.max(askedMs, Math.min(MAX_RETRY_MS, LEFTOVER_FIRST_RETRY_MS * 2 ** (p.attempt - 1)));
      logger.warn({ resource: res.id, instance: inst.key, reason: p.reason, attempt: p.attempt, retryInMs, err: p.lastError },
        'stopping a left-over machine failed; trying again later');
      this.#later(inst, p, retryInMs);
      this.#o.changed(inst, 'failed', this.#stateOf(p));
    });
  }
}
