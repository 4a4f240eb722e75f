/**
 * The three KeyValueStore implementations (core/ports.ts), one per state kind: memory (one
 * replica), SQLite (its own table in the state file; replicas on one machine), Redis (many
 * replicas). Sign-in sessions that outgrow a cookie and single-use sign-in markers live here.
 */
import type { Clock, KeyValueStore, Logger } from '../core/ports.ts';
import type { StoreSpec } from './create-store.ts';
import { openRedis } from './redis/client.ts';
import { SqliteThread } from './sqlite-thread.ts';

/** Most live entries of the memory store: past it the oldest go first (a bound, not a cache policy). */
const MAX_MEMORY_ENTRIES = 100_000;

export class MemoryKeyValueStore implements KeyValueStore {
  readonly kind = 'memory';
  readonly #clock: Clock;
  readonly #entries = new Map<string, { value: string; expiresAt: number }>();

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  #live(key: string): string | undefined {
    const e = this.#entries.get(key);
    if (e === undefined) return undefined;
    if (e.expiresAt <= this.#clock.now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#entries.delete(key);
    this.#entries.set(key, { value, expiresAt: this.#clock.now() + ttlMs });
    if (this.#entries.size > MAX_MEMORY_ENTRIES) this.#sweep();
    return Promise.resolve();
  }

  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    if (this.#live(key) !== undefined) return Promise.resolve(false);
    return this.set(key, value, ttlMs).then(() => true);
  }

  get(key: string): Promise<string | undefined> {
    return Promise.resolve(this.#live(key));
  }

  delete(key: string): Promise<void> {
    this.#entries.delete(key);
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#entries.clear();
    return Promise.resolve();
  }

  #sweep(): void {
    const now = this.#clock.now();
    for (const [k, e] of this.#entries) if (e.expiresAt <= now) this.#entries.delete(k);
    // Still too many live ones: insertion order is age order.
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= MAX_MEMORY_ENTRIES) break;
      this.#entries.delete(k);
    }
  }
}

/**
 * The SQLite key-value store: its own table in the state file, on a worker thread (the engine
 * is sqlite-key-value-engine.ts, the thread sqlite-thread.ts), so a statement waiting for
 * another connection's lock never blocks the event loop; it waits up to `busyTimeoutMs`, and a
 * call gives up after `callTimeoutMs` (the caller answers 503 with Retry-After, as for any store
 * it cannot reach). The thread starts with the first call, and keeps the process alive only
 * while a call is in flight.
 */
export class SqliteKeyValueStore implements KeyValueStore {
  readonly kind = 'sqlite';
  readonly #thread: SqliteThread;
  readonly #clock: Clock;

  constructor(path: string, clock: Clock, options: { busyTimeoutMs?: number | undefined; callTimeoutMs?: number | undefined } = {}) {
    this.#clock = clock;
    const busyTimeoutMs = options.busyTimeoutMs ?? 5_000;
    // A sign-in waits on this: past the lock wait and a margin, it gets a clear 503.
    const callTimeoutMs = options.callTimeoutMs ?? busyTimeoutMs + 5_000;
    this.#thread = new SqliteThread({
      workerData: { engine: 'key-values', options: { path, busyTimeoutMs } },
      callTimeoutMs,
      openTimeoutMs: callTimeoutMs + 30_000,
      maxPendingCalls: 256,
    });
  }

  /** Workers replaced after a crash or a missed deadline (diagnostics and tests). */
  get restarts(): number {
    return this.#thread.restarts;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    const now = this.#clock.now();
    await this.#thread.call('set', [key, value, now + ttlMs, now]);
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const now = this.#clock.now();
    return await this.#thread.call('setIfAbsent', [key, value, now + ttlMs, now]) as boolean;
  }

  async get(key: string): Promise<string | undefined> {
    return await this.#thread.call('get', [key, this.#clock.now()]) as string | undefined;
  }

  async delete(key: string): Promise<void> {
    await this.#thread.call('delete', [key]);
  }

  close(): Promise<void> {
    return this.#thread.close();
  }
}

export class RedisKeyValueStore implements KeyValueStore {
  readonly kind = 'redis';
  readonly #client: ReturnType<typeof openRedis>;
  readonly #prefix: string;

  constructor(spec: { url: string; keyPrefix: string; options?: Readonly<Record<string, unknown>> | undefined }, logger: Logger) {
    this.#client = openRedis(spec, logger, 'key-values');
    this.#prefix = `${spec.keyPrefix}kv:`;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.#client.set(this.#prefix + key, value, 'PX', Math.max(1, ttlMs));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    return (await this.#client.set(this.#prefix + key, value, 'PX', Math.max(1, ttlMs), 'NX')) === 'OK';
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.#client.get(this.#prefix + key)) ?? undefined;
  }

  async delete(key: string): Promise<void> {
    await this.#client.del(this.#prefix + key);
  }

  async close(): Promise<void> {
    await this.#client.quit().catch(() => this.#client.disconnect());
  }
}

/** The key-value store beside the configured state store (same place, same replicas). */
export function createKeyValueStore(spec: StoreSpec, clock: Clock, logger: Logger): KeyValueStore {
  switch (spec.kind) {
    case 'memory': return new MemoryKeyValueStore(clock);
    case 'sqlite': return new SqliteKeyValueStore(spec.path, clock, { busyTimeoutMs: spec.busyTimeoutMs });
    case 'redis': return new RedisKeyValueStore(spec, logger);
  }
}
