/**
 * The three KeyValueStore implementations (core/ports.ts), one per state kind: memory (one
 * replica), SQLite (its own table in the state file; replicas on one machine), Redis (many
 * replicas). Sign-in sessions that outgrow a cookie and single-use sign-in markers live here.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { Clock, KeyValueStore, Logger } from '../core/ports.ts';
import type { StoreSpec } from './create-store.ts';
import { openRedis } from './redis/client.ts';

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

export class SqliteKeyValueStore implements KeyValueStore {
  readonly kind = 'sqlite';
  readonly #db: DatabaseSync;
  readonly #clock: Clock;
  #writes = 0;

  constructor(path: string, clock: Clock) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.#db = new DatabaseSync(path);
    this.#clock = clock;
    // Its own table, outside the state schema's migrations: it holds nothing that outlives a session.
    // Calls run on the event loop (sign-in only), so a lock held elsewhere (a backup, the
    // sqlite3 shell) must fail such a call fast rather than freeze every request: 50 ms.
    this.#db.exec(`PRAGMA journal_mode=WAL; PRAGMA busy_timeout=50;
      CREATE TABLE IF NOT EXISTS key_values (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;`);
  }

  set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#db.prepare('INSERT OR REPLACE INTO key_values (k, v, expires_at) VALUES (?, ?, ?)').run(key, value, this.#clock.now() + ttlMs);
    this.#maybeSweep();
    return Promise.resolve();
  }

  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const now = this.#clock.now();
    // One statement: an expired row is replaced, a live one kept; changes tells who won.
    const r = this.#db.prepare(`INSERT INTO key_values (k, v, expires_at) VALUES (?, ?, ?)
      ON CONFLICT (k) DO UPDATE SET v = excluded.v, expires_at = excluded.expires_at WHERE key_values.expires_at <= ?`).run(key, value, now + ttlMs, now);
    this.#maybeSweep();
    return Promise.resolve(Number(r.changes) === 1);
  }

  get(key: string): Promise<string | undefined> {
    const row = this.#db.prepare('SELECT v FROM key_values WHERE k = ? AND expires_at > ?').get(key, this.#clock.now()) as { v: string } | undefined;
    return Promise.resolve(row?.v);
  }

  delete(key: string): Promise<void> {
    this.#db.prepare('DELETE FROM key_values WHERE k = ?').run(key);
    return Promise.resolve();
  }

  close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
    return Promise.resolve();
  }

  #maybeSweep(): void {
    if (++this.#writes % 500 === 0) this.#db.prepare('DELETE FROM key_values WHERE expires_at <= ?').run(this.#clock.now());
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
    case 'sqlite': return new SqliteKeyValueStore(spec.path, clock);
    case 'redis': return new RedisKeyValueStore(spec, logger);
  }
}
