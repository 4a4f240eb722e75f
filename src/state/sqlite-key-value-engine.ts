/**
 * The engine of the SQLite key-value store (sign-in sessions too big for a cookie, single-use
 * sign-in marks): one table in the state file, synchronous inside (DatabaseSync). The proxy
 * never runs it on its event loop: `SqliteKeyValueStore` hosts it on a worker thread
 * (sqlite-worker.ts), because a statement that meets another connection's lock (a backup, the
 * sqlite3 shell, a second proxy on the file) waits inside SQLite for up to `busyTimeoutMs`.
 *
 * Time comes in as arguments: the clock is the proxy's (injected in tests), not the thread's.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';

export interface SqliteKeyValueEngineOptions {
  /** File path, or `:memory:`. The parent directory is created if missing. */
  readonly path: string;
  /** How long a statement waits for another connection's lock. */
  readonly busyTimeoutMs?: number | undefined;
}

/** Expired rows are swept once per this many writes (reads ignore them anyway). */
const SWEEP_EVERY_WRITES = 500;

export class SqliteKeyValueEngine {
  readonly #db: DatabaseSync;
  readonly #set: StatementSync;
  readonly #setIfAbsent: StatementSync;
  readonly #get: StatementSync;
  readonly #delete: StatementSync;
  readonly #sweep: StatementSync;
  #writes = 0;

  constructor(options: SqliteKeyValueEngineOptions) {
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    this.#db = new DatabaseSync(options.path);
    const busy = Math.max(0, Math.floor(options.busyTimeoutMs ?? 5_000));
    // Its own table, outside the state schema's migrations: it holds nothing that outlives a session.
    this.#db.exec(`PRAGMA journal_mode=WAL; PRAGMA busy_timeout=${busy};
      CREATE TABLE IF NOT EXISTS key_values (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;`);
    this.#set = this.#db.prepare('INSERT OR REPLACE INTO key_values (k, v, expires_at) VALUES (?, ?, ?)');
    // One statement: an expired row is replaced, a live one kept; changes tells who won.
    this.#setIfAbsent = this.#db.prepare(`INSERT INTO key_values (k, v, expires_at) VALUES (?, ?, ?)
      ON CONFLICT (k) DO UPDATE SET v = excluded.v, expires_at = excluded.expires_at WHERE key_values.expires_at <= ?`);
    this.#get = this.#db.prepare('SELECT v FROM key_values WHERE k = ? AND expires_at > ?');
    this.#delete = this.#db.prepare('DELETE FROM key_values WHERE k = ?');
    this.#sweep = this.#db.prepare('DELETE FROM key_values WHERE expires_at <= ?');
  }

  set(key: string, value: string, expiresAt: number, now: number): Promise<void> {
    this.#set.run(key, value, expiresAt);
    this.#maybeSweep(now);
    return Promise.resolve();
  }

  setIfAbsent(key: string, value: string, expiresAt: number, now: number): Promise<boolean> {
    const r = this.#setIfAbsent.run(key, value, expiresAt, now);
    this.#maybeSweep(now);
    return Promise.resolve(Number(r.changes) === 1);
  }

  get(key: string, now: number): Promise<string | undefined> {
    const row = this.#get.get(key, now) as { v: string } | undefined;
    return Promise.resolve(row?.v);
  }

  delete(key: string): Promise<void> {
    this.#delete.run(key);
    return Promise.resolve();
  }

  close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
    return Promise.resolve();
  }

  #maybeSweep(now: number): void {
    if (++this.#writes % SWEEP_EVERY_WRITES === 0) this.#sweep.run(now);
  }
}
