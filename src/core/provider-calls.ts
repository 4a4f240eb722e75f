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

export class ProviderCalls {
  readonly #o: ProviderCallsOptions;
  readonly #circuits = new WeakMap<Provider, ProviderCircuit>();
  readonly #settings: CircuitSettings;

  constructor(options: ProviderCallsOptions) {
    this.#o = options;
    this.#settings = options.circuit ?? defaultCircuitSettings;
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
    if (this.#o.clock.now() >= g.deadline) {
      throw new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
        data: { resource: g.inst.resource.id, bootTimeoutMs: g.inst.resource.bootTimeoutMs }, retryAfterS: this.#o.retryAfterS(g.inst),
      });
    }
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
      const budget = Math.min(res.providerCallTimeoutMs, g.deadline - this.#o.clock.now());
      const { signal, done } = deadlineSignal(this.#o.clock, budget);
      try {
        // A provider that ignores its signal must not hang the flight: the race ends it.
        const value = await raceAbort(call(signal), signal);
        circuit.reached();
        return value;
      } catch (err) {
        this.record(res.provider, circuit, err, signal.aborted);
        this.check(g);
        const stillDown = gated ? circuit.refusedForMs() : undefined;
        if (stillDown !== undefined) throw this.unreachableError(g.inst, circuit, stillDown);
        const retryable = signal.aborted || (err instanceof ProviderError && err.retryable);
        if (!retryable) throw err;
        this.#o.logger.warn({ resource: res.id, instance: g.inst.key, what, attempt, err: errMessage(err) }, 'provider call failed; retrying');
        const jittered = backoffMs / 2 + Math.random() * backoffMs / 2;
        await this.sleep(jittered, g);
        backoffMs = Math.min(2000, backoffMs * 2);
      } finally {
        done();
      }
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
