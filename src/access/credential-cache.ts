/**
 * What bounds the work a credential costs (issue "credentials cost bounded work"):
 *
 * - `VerdictCache`: a bounded LRU of recent verdicts (verified and refused), each with its own
 *   expiry. Keyed by a SHA-256 of the credential, never by the credential itself, so a heap
 *   dump holds no password or token. A refused credential presented again within the
 *   refusal TTL costs a hash lookup, not a 32 MiB scrypt.
 * - `HashGate`: at most `maxConcurrent` slow hashes (scrypt) run at once, at most `maxQueued`
 *   wait for a slot; past that the request is answered 503 + Retry-After at once. scrypt runs
 *   on libuv's thread pool (4 threads by default), which file, DNS and zlib work share: the
 *   cap keeps the pool usable for them however many credentials arrive.
 *
 * Both are pure memory (no I/O) and run on the request path.
 */
import { hash } from 'node:crypto';
import { SmartProxyError } from '../core/errors.ts';
import { UTF16_DIGEST } from './passwords.ts';
import type { Clock } from '../core/ports.ts';

/**
 * The cache key of a credential: SHA-256 over its parts, each followed by a NUL. One-shot
 * `crypto.hash` into a string: on the warm path (a cached JWT is looked up on every request)
 * it costs a third of `createHash().update().digest()`, which builds a Hash object per call.
 * The 32 digest bytes read as UTF-16LE: a 16-code-unit string, which the Map hashes and
 * compares in 16 steps (base64url would be 43 characters, after an encoding pass).
 */
export function credentialKey(...parts: readonly string[]): string {
  let text = '';
  for (const p of parts) text += `${p}\0`;
  return hash('sha256', text, UTF16_DIGEST);
}

interface Entry<V> {
  readonly value: V;
  readonly untilMs: number;
  /** The cache's insertion counter when this entry was (re)inserted. */
  seq: number;
}

/**
 * A bounded, approximately LRU cache whose entries expire at their own time (clock ms).
 * Eviction takes the entry inserted (or refreshed) longest ago. A hit refreshes its entry
 * only once it has fallen into the older half (more than maxEntries / 2 insertions since it
 * was last refreshed): re-inserting on every hit, as a strict LRU does, cost two Map writes
 * on every warm request. An entry used at least once per maxEntries / 2 insertions is never
 * evicted, which is what the LRU is for: a busy client's verdict outlives a flood of one-off
 * credentials.
 */
export class VerdictCache<V> {
  readonly #entries = new Map<string, Entry<V>>();
  readonly #maxEntries: number;
  readonly #clock: Clock;
  #seq = 0;

  constructor(maxEntries: number, clock: Clock) {
    this.#maxEntries = Math.max(1, maxEntries);
    this.#clock = clock;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The live value under `key`, or undefined (an expired entry is dropped). */
  get(key: string): V | undefined {
    const e = this.#entries.get(key);
    if (e === undefined) return undefined;
    if (e.untilMs <= this.#clock.now()) {
      this.#entries.delete(key);
      return undefined;
    }
    // Map keeps insertion order: re-inserting makes this the most recently used entry.
    if (this.#seq - e.seq > this.#maxEntries >> 1) {
      this.#entries.delete(key);
      e.seq = ++this.#seq;
      this.#entries.set(key, e);
    }
    return e.value;
  }

  /** Stores `value` until clock time `untilMs` (nothing is stored when that is not in the future). */
  set(key: string, value: V, untilMs: number): void {
    if (!(untilMs > this.#clock.now())) return;
    this.#entries.delete(key);
    while (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    this.#entries.set(key, { value, untilMs, seq: ++this.#seq });
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }
}

export interface HashGateOptions {
  readonly maxConcurrent: number;
  readonly maxQueued: number;
  /** Retry-After of the 503 past the queue. */
  readonly retryAfterS: number;
}

/** Caps concurrent slow hashes; see the module comment. */
export class HashGate {
  readonly #options: HashGateOptions;
  #running = 0;
  readonly #queue: Array<() => void> = [];
  /** Hashes run so far (tests and metrics). */
  hashes = 0;
  /** Requests refused because the queue was full. */
  refused = 0;

  constructor(options: HashGateOptions) {
    this.#options = { ...options, maxConcurrent: Math.max(1, options.maxConcurrent) };
  }

  get running(): number {
    return this.#running;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /** Runs `work` when a slot is free; throws SP_ACCESS_BUSY at once when the queue is full. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#options.maxConcurrent) {
      if (this.#queue.length >= this.#options.maxQueued) {
        this.refused++;
        throw new SmartProxyError('SP_ACCESS_BUSY', undefined, { retryAfterS: this.#options.retryAfterS });
      }
      await new Promise<void>((resolve) => this.#queue.push(resolve));
    } else {
      this.#running++;
    }
    // A slot is ours here (handed over by the finisher below, or taken above).
    try {
      this.hashes++;
      return await work();
    } finally {
      const next = this.#queue.shift();
      if (next !== undefined) next();
      else this.#running--;
    }
  }
}

/** What the verifiers share: the gate and the TTLs of the verdict caches. */
export interface CredentialWork {
  readonly gate: HashGate;
  readonly clock: Clock;
  /** How long a verified password or token is trusted without hashing it again. */
  readonly verifiedTtlMs: number;
  /** How long a refused password or token is refused without hashing it again. */
  readonly refusedTtlMs: number;
  /** Entries per verdict cache (each verifier has its own). */
  readonly cacheMaxEntries: number;
  /** A cached JWT is verified again after this long at the latest (key rotation bound). */
  readonly jwtRecheckMs: number;
}

export const DEFAULT_CREDENTIAL_LIMITS = {
  maxConcurrentHashes: 2,
  maxQueuedHashes: 64,
  verifiedTtlMs: 5 * 60_000,
  refusedTtlMs: 60_000,
  cacheMaxEntries: 10_000,
  jwtRecheckMs: 60_000,
} as const;

/** The defaults, for verifiers built without a config (tests, tools). */
export function defaultCredentialWork(clock: Clock): CredentialWork {
  const d = DEFAULT_CREDENTIAL_LIMITS;
  return {
    gate: new HashGate({ maxConcurrent: d.maxConcurrentHashes, maxQueued: d.maxQueuedHashes, retryAfterS: 1 }),
    clock, verifiedTtlMs: d.verifiedTtlMs, refusedTtlMs: d.refusedTtlMs, cacheMaxEntries: d.cacheMaxEntries, jwtRecheckMs: d.jwtRecheckMs,
  };
}

/**
 * Runs `work` once per key at a time: concurrent callers with the same key share the one
 * in-flight promise (N identical credentials arriving together cost one hash).
 */
export class SingleFlight<V> {
  readonly #inFlight = new Map<string, Promise<V>>();

  run(key: string, work: () => Promise<V>): Promise<V> {
    const joined = this.#inFlight.get(key);
    if (joined !== undefined) return joined;
    const p = work().finally(() => this.#inFlight.delete(key));
    this.#inFlight.set(key, p);
    return p;
  }
}
