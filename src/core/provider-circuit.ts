/**
 * A circuit breaker per provider (cloud API): a cloud that cannot be reached is not a slow
 * boot. After `failureThreshold` consecutive calls that never reached the API (connection
 * refused/reset, DNS, unreachable network, connect timeout) the circuit opens: starts are
 * refused at once with SP_PROVIDER_UNREACHABLE instead of holding every request for a whole
 * boot timeout. Once `openMs` has passed on the injected clock it is half-open: one call (a
 * trial) may go; an answer of any kind closes it, another connection failure opens it again
 * for twice as long (up to `maxOpenMs`).
 *
 * Only reachability counts: an API that answers with an error (4xx, 5xx, a malformed body)
 * is reachable, and that failure belongs to the start, not to the circuit. A call that hangs
 * until its timeout counts neither way: the API accepted the connection, and a slow API is
 * the slow-boot case (held until the boot timeout, then SP_BOOT_TIMEOUT).
 */
import type { Clock } from './ports.ts';

export interface CircuitSettings {
  /** Consecutive unreachable calls that open the circuit. */
  readonly failureThreshold: number;
  /** How long the circuit stays open before one trial call may go. */
  readonly openMs: number;
  /** Each failed trial doubles the open time, up to this. */
  readonly maxOpenMs: number;
  /** Calls in flight to one provider at once (see CallGate in provider-calls.ts); default 64. */
  readonly maxConcurrentCalls?: number | undefined;
}

export const defaultCircuitSettings: CircuitSettings = { failureThreshold: 3, openMs: 5_000, maxOpenMs: 60_000 };

export type CircuitState = 'closed' | 'open' | 'half-open';

export class ProviderCircuit {
  readonly #clock: Clock;
  readonly #settings: CircuitSettings;
  #failures = 0;
  #open = false;
  #openUntil = 0;
  #openMs: number;
  /** When the outstanding trial call was let through (0: none). */
  #trialAt = 0;
  /** Why the circuit opened (the last connection failure), for messages. */
  lastFailure: string | undefined;

  constructor(clock: Clock, settings: CircuitSettings) {
    this.#clock = clock;
    this.#settings = settings;
    this.#openMs = settings.openMs;
  }

  get state(): CircuitState {
    if (!this.#open) return 'closed';
    return this.#clock.now() >= this.#openUntil ? 'half-open' : 'open';
  }

  /** Consecutive unreachable calls so far. */
  get failures(): number {
    return this.#failures;
  }

  /**
   * Milliseconds until a call may be tried again, or undefined when one may go now. Does not
   * take the half-open trial (see `acquire`): for deciding whether to answer a request at once.
   */
  refusedForMs(): number | undefined {
    if (!this.#open) return undefined;
    const now = this.#clock.now();
    if (now < this.#openUntil) return this.#openUntil - now;
    // Half-open: refused only while a trial is out (and that trial is not long forgotten).
    if (this.#trialAt !== 0 && now - this.#trialAt < this.#openMs) return Math.max(1, this.#trialAt + this.#openMs - now);
    return undefined;
  }

  /** Before a call: undefined lets it go (taking the half-open trial); else ms to wait. */
  acquire(): number | undefined {
    const refused = this.refusedForMs();
    if (refused !== undefined) return refused;
    if (this.#open) this.#trialAt = this.#clock.now();
    return undefined;
  }

  /** The API answered (whatever it said). */
  reached(): void {
    this.#failures = 0;
    this.#open = false;
    this.#trialAt = 0;
    this.#openMs = this.#settings.openMs;
    this.lastFailure = undefined;
  }

  /** A call did not reach the API. Returns true when this failure opened the circuit. */
  unreachable(reason: string): boolean {
    this.#failures++;
    this.lastFailure = reason;
    const now = this.#clock.now();
    if (this.#open) {
      // A failed trial (or a late failure of a call let through before it opened).
      if (this.#trialAt !== 0 || now >= this.#openUntil) this.#openMs = Math.min(this.#settings.maxOpenMs, this.#openMs * 2);
      this.#trialAt = 0;
      this.#openUntil = Math.max(this.#openUntil, now + this.#openMs);
      return false;
    }
    if (this.#failures < this.#settings.failureThreshold) return false;
    this.#open = true;
    this.#trialAt = 0;
    this.#openUntil = now + this.#openMs;
    return true;
  }

  /** Epoch ms at which the circuit half-opens (meaningful while open). */
  get openUntil(): number {
    return this.#openUntil;
  }
}

const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'ENOTFOUND', 'EAI_AGAIN',
  'ETIMEDOUT', 'EPIPE', 'ECONNABORTED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED',
]);

/**
 * Whether a failed provider call never reached the API: a connection-level error code
 * anywhere in the cause chain (providers wrap them; `AggregateError` lists one per address).
 */
export function isUnreachable(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 6 && e !== null && typeof e === 'object'; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return true;
    const nested = (e as { errors?: unknown }).errors;
    if (Array.isArray(nested) && nested.some((x) => isUnreachable(x))) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}
