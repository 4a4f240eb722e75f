/**
 * Every call the core makes to a provider: bounded by a per-call timeout and the flight's
 * deadline, retried with backoff when retryable, and gated by the provider's circuit (see
 * provider-circuit.ts). Also the small helpers every unit uses to bound a wait.
 */
import { ProviderError, SmartProxyError } from './errors.ts';
import type { Instance } from './instance.ts';
import type { Clock, Logger, Provider } from './ports.ts';
import { defaultCircuitSettings, isUnreachable, ProviderCircuit, type CircuitSettings } from './provider-circuit.ts';

/** A loop that was superseded (a newer start or a stop) or shut down: not a failure. */
export class Aborted extends Error {}

/**
 * The liveness of one flight: the generation it was started under and its deadline. A check
 * throws `Aborted` when the instance moved on (or the manager closed), SP_BOOT_TIMEOUT past
 * the deadline.
 */
export interface FlightGuard {
  readonly inst: Instance;
  readonly gen: number;
  readonly deadline: number;
  /** Stops run during shutdown too: they are not aborted by `close()`. */
  readonly afterClose?: boolean | undefined;
  /**
   * Checked after a failed call: true ends the retries with that call's error (a stop that
   * requests now wait for is not worth more tries than the one that failed).
   */
  readonly stopRetrying?: (() => boolean) | undefined;
}

export interface ProviderCallsOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly circuit?: CircuitSettings | undefined;
  readonly closed: () => boolean;
  readonly retryAfterS: (inst: Instance) => number;
  /** The circuit of `provider` just opened (see provider-circuit.ts). */
  readonly onCircuitOpen: (provider: Provider, circuit: ProviderCircuit) => void;
}

/** Default of `providerCircuit.maxConcurrentCalls`. */
export const DEFAULT_MAX_CONCURRENT_PROVIDER_CALLS = 64;

/**
 * The calls in flight to one provider, at most `max`. A call holds its slot until it really
 * settles, not until the core stopped waiting for it: a provider that ignores its abort
 * signal keeps its slot, so abandoned calls cannot pile up without bound against a slow or
 * hung cloud. Starts and stops queue for a slot (bounded by their deadline); health checks
 * only take a free one.
 */
export class CallGate {
  readonly #max: number;
  #inFlight = 0;
  readonly #queue: Array<() => void> = [];

  constructor(max: number) {
    this.#max = Math.max(1, max);
  }

  get inFlight(): number { return this.#inFlight; }
  get queued(): number { return this.#queue.length; }

  /** Takes a slot if one is free. */
  tryAcquire(): boolean {
    if (this.#inFlight >= this.#max) return false;
    this.#inFlight++;
    return true;
  }

  /** Resolves with a slot (FIFO); rejects with the signal's reason, slotless, when it aborts first. */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve();
    if (signal.aborted) return Promise.reject(asError(signal.reason));
    return new Promise<void>((resolve, reject) => {
      const grant = (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        const i = this.#queue.indexOf(grant);
        if (i !== -1) this.#queue.splice(i, 1);
        reject(asError(signal.reason));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(grant);
    });
  }

  /** Gives a slot back: to the longest waiter, else to the pool. */
  release(): void {
    const next = this.#queue.shift();
    if (next !== undefined) next();
    else this.#inFlight = Math.max(0, this.#inFlight - 1);
  }
}

export class ProviderCalls {
  readonly #o: ProviderCallsOptions;
  readonly #circuits = new WeakMap<Provider, ProviderCircuit>();
  readonly #gates = new WeakMap<Provider, CallGate>();
  readonly #settings: CircuitSettings;

  constructor(options: ProviderCallsOptions) {
    this.#o = options;
    this.#settings = options.circuit ?? defaultCircuitSettings;
  }

  /** The bound on calls in flight to a provider (created on first use). */
  gateOf(provider: Provider): CallGate {
    let g = this.#gates.get(provider);
    if (g === undefined) {
      g = new CallGate(this.#settings.maxConcurrentCalls ?? DEFAULT_MAX_CONCURRENT_PROVIDER_CALLS);
      this.#gates.set(provider, g);
    }
    return g;
  }

  /**
   * Runs `call` in a slot taken from the provider's gate, released when the call itself
   * settles (see CallGate). The returned promise settles with the call.
   */
  #inSlot<T>(gate: CallGate, call: () => Promise<T>): Promise<T> {
    let p: Promise<T>;
    try {
      p = call();
    } catch (err) {
      gate.release();
      return Promise.reject(asError(err));
    }
    p.then(() => gate.release(), () => gate.release());
    return p;
  }

  /** Runs a call now if the provider has a free slot (health checks); undefined when it has none. */
  tryCall<T>(provider: Provider, call: () => Promise<T>): Promise<T> | undefined {
    const gate = this.gateOf(provider);
    return gate.tryAcquire() ? this.#inSlot(gate, call) : undefined;
  }

  /** The circuit of a provider's API (created closed on first use). */
  circuitOf(provider: Provider): ProviderCircuit {
    let c = this.#circuits.get(provider);
    if (c === undefined) {
      c = new ProviderCircuit(this.#o.clock, this.#settings);
      this.#circuits.set(provider, c);
    }
    return c;
  }

  /** The circuit of a provider if it was ever used. */
  knownCircuit(provider: Provider): ProviderCircuit | undefined {
    return this.#circuits.get(provider);
  }

  unreachableError(inst: Instance, circuit: ProviderCircuit, retryInMs: number): SmartProxyError {
    const retryAfterS = Math.max(1, Math.ceil(retryInMs / 1000));
    const kind = inst.resource.provider.kind;
    return new SmartProxyError('SP_PROVIDER_UNREACHABLE',
      `the ${kind} provider's API cannot be reached (${circuit.failures} connection failures in a row); not trying again for ${retryAfterS} s`, {
        data: { resource: inst.resource.id, provider: kind, circuit: circuit.state }, retryAfterS,
      });
  }

  check(g: FlightGuard): void {
    if (g.inst.generation !== g.gen || (this.#o.closed() && g.afterClose !== true)) throw new Aborted();
    if (this.#o.clock.now() >= g.deadline) throw this.#bootTimeout(g);
  }

  #bootTimeout(g: FlightGuard): SmartProxyError {
    return new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
      data: { resource: g.inst.resource.id, bootTimeoutMs: g.inst.resource.bootTimeoutMs }, retryAfterS: this.#o.retryAfterS(g.inst),
    });
  }

  /** Waits `ms` (cut at the deadline) on the clock, then checks the flight is still live. */
  sleep(ms: number, g: FlightGuard): Promise<void> {
    const wait = Math.max(0, Math.min(ms, g.deadline - this.#o.clock.now()));
    return new Promise<void>((resolve) => {
      this.#o.clock.setTimeout(() => resolve(), wait);
    }).then(() => this.check(g));
  }

  /**
   * Calls the provider with a per-call timeout; retries retryable errors with backoff and
   * jitter. Every call goes through the provider's circuit: starts and inspects are refused
   * at once while it is open (stops still try: a running machine costs money).
   */
  async withRetry<T>(g: FlightGuard, call: (signal: AbortSignal) => Promise<T>, what: string): Promise<T> {
    const res = g.inst.resource;
    const circuit = this.circuitOf(res.provider);
    const gated = what !== 'stop';
    let backoffMs = 100;
    for (let attempt = 1; ; attempt++) {
      this.check(g);
      const refusedMs = gated ? circuit.acquire() : undefined;
      if (refusedMs !== undefined) throw this.unreachableError(g.inst, circuit, refusedMs);
      const gate = this.gateOf(res.provider);
      if (!gate.tryAcquire()) await this.#queueFor(gate, g, what);
      const budget = Math.min(res.providerCallTimeoutMs, g.deadline - this.#o.clock.now());
      const { signal, done } = deadlineSignal(this.#o.clock, budget);
      try {
        // A provider that ignores its signal must not hang the flight: the race ends it.
        const value = await raceAbort(this.#inSlot(gate, () => call(signal)), signal);
        circuit.reached();
        return value;
      } catch (err) {
        this.record(res.provider, circuit, err, signal.aborted);
        this.check(g);
        const stillDown = gated ? circuit.refusedForMs() : undefined;
        if (stillDown !== undefined) throw this.unreachableError(g.inst, circuit, stillDown);
        const retryable = signal.aborted || (err instanceof ProviderError && err.retryable);
        if (!retryable || g.stopRetrying?.() === true) throw err;
        const jittered = backoffMs / 2 + Math.random() * backoffMs / 2;
        // A cloud that says when to come back (429, 503 + Retry-After) is asked no sooner:
        // retrying on our own backoff would hammer an API that is rate-limiting us. When its
        // wait does not fit in what is left of the deadline, waiting is pointless: the start
        // ends now, and the held clients learn when to come back.
        const askedMs = askedWaitMs(err);
        if (askedMs !== undefined && this.#o.clock.now() + askedMs >= g.deadline) throw throttledError(g.inst, what, err, askedMs);
        const waitMs = Math.max(jittered, askedMs ?? 0);
        this.#o.logger.warn({ resource: res.id, instance: g.inst.key, what, attempt, retryInMs: Math.round(waitMs), err: errMessage(err) }, 'provider call failed; retrying');
        await this.sleep(waitMs, g);
        backoffMs = Math.min(2000, backoffMs * 2);
      } finally {
        done();
      }
    }
  }

  /**
   * Waits for a slot of a busy provider, at most until the flight's deadline (then
   * SP_BOOT_TIMEOUT, as for any wait of the flight); the slot is the caller's on return.
   */
  async #queueFor(gate: CallGate, g: FlightGuard, what: string): Promise<void> {
    const { signal, done } = deadlineSignal(this.#o.clock, Math.max(1, g.deadline - this.#o.clock.now()));
    if (gate.queued === 0) {
      this.#o.logger.warn({ resource: g.inst.resource.id, provider: g.inst.resource.provider.kind, what, inFlight: gate.inFlight },
        'provider busy: every call slot is taken; calls queue');
    }
    try {
      await gate.acquire(signal);
    } catch {
      // Only the deadline aborts this wait.
      this.check(g);
      throw this.#bootTimeout(g);
    } finally {
      done();
    }
    try {
      this.check(g);
    } catch (err) {
      gate.release();
      throw err;
    }
  }

  /** Tells the circuit how a failed call went; opening it fails every start of that provider. */
  record(provider: Provider, circuit: ProviderCircuit, err: unknown, timedOut: boolean): void {
    // A call that hung until its timeout says nothing about reachability (provider-circuit.ts).
    if (timedOut) return;
    if (!isUnreachable(err)) {
      circuit.reached();
      return;
    }
    if (circuit.unreachable(errMessage(err))) this.#o.onCircuitOpen(provider, circuit);
  }
}

/**
 * The longest wait a provider's Retry-After is honoured for: a confused or hostile API saying
 * "come back in a year" must not fail a resource for a year.
 */
export const MAX_PROVIDER_RETRY_AFTER_S = 300;

/** The wait a provider error asks for (its Retry-After, capped), in ms; undefined if none. */
function askedWaitMs(err: unknown): number | undefined {
  if (!(err instanceof ProviderError) || err.retryAfterS === undefined || !(err.retryAfterS >= 0)) return undefined;
  return Math.min(err.retryAfterS, MAX_PROVIDER_RETRY_AFTER_S) * 1000;
}

function throttledError(inst: Instance, what: string, err: unknown, askedMs: number): SmartProxyError {
  const retryAfterS = Math.max(1, Math.ceil(askedMs / 1000));
  const kind = inst.resource.provider.kind;
  const status = err instanceof ProviderError ? err.data.status : undefined;
  return new SmartProxyError('SP_PROVIDER_THROTTLED',
    `the ${kind} provider's API asked to wait ${retryAfterS} s before the next ${what} call, longer than the ${what === 'stop' ? 'stop' : 'start'} may still take: ${errMessage(err)}`, {
      data: { resource: inst.resource.id, provider: kind, ...(typeof status === 'number' ? { providerStatus: status } : {}) }, retryAfterS, cause: err,
    });
}

/** An AbortSignal that aborts after `ms` on the given clock (so tests can drive it). */
export function timeoutSignal(clock: Clock, ms: number): AbortSignal {
  return deadlineSignal(clock, ms).signal;
}

/**
 * Like `timeoutSignal`, with `done()` to call once the guarded call settled: it cancels the
 * timer, so that a call that took 5 ms does not leave a timer (and through it the controller
 * and its listeners) alive for the whole timeout. Thousands of calls a minute add up.
 */
export function deadlineSignal(clock: Clock, ms: number): { readonly signal: AbortSignal; readonly done: () => void } {
  const ac = new AbortController();
  const timer = clock.setTimeout(() => ac.abort(new SmartProxyError('SP_PROVIDER_ERROR', `timed out after ${ms} ms`)), ms);
  return { signal: ac.signal, done: () => timer.cancel() };
}

/** Settles with `p`, or rejects as soon as `signal` aborts, whichever comes first. */
export function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(asError(signal.reason));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(asError(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(asError(err)); },
    );
  });
}

export function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
