/**
 * The SQLite store as the proxy runs it: the `SqliteStore` engine on a worker thread
 * (sqlite-thread.ts says why and how it is bounded).
 *
 * A write that meets another connection's lock waits on the worker for up to `busyTimeoutMs`;
 * the flush's promise stays pending meanwhile, and `StateSync` keeps the batch for the next
 * flush if the wait ends in SQLITE_BUSY (nothing is lost).
 */
import type { AuditEvent, AuditQuery, BootSample, InstanceRecord, Store, StoreBatch, StoredAuditEvent } from '../core/ports.ts';
import type { SqliteStore, SqliteStoreOptions } from './sqlite-store.ts';
import { SqliteThread } from './sqlite-thread.ts';

export { StoreCallError } from './sqlite-thread.ts';

export interface ThreadedSqliteStoreOptions extends SqliteStoreOptions {
  /** Longest a single store call may take before it fails and the worker is replaced. */
  readonly callTimeoutMs?: number;
  /** Calls in flight at once; past it a call fails at once instead of queueing. */
  readonly maxPendingCalls?: number;
}

/** The engine's async methods, callable across the thread by name. */
type EngineMethod = {
  [K in keyof SqliteStore]: SqliteStore[K] extends (...args: never[]) => Promise<unknown> ? K : never
}[keyof SqliteStore];

export class ThreadedSqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly #thread: SqliteThread;

  private constructor(options: ThreadedSqliteStoreOptions) {
    const callTimeoutMs = options.callTimeoutMs ?? Math.max(30_000, (options.busyTimeoutMs ?? 5_000) * 3);
    this.#thread = new SqliteThread({
      workerData: {
        engine: 'state',
        options: { path: options.path, maxBootSamplesPerResource: options.maxBootSamplesPerResource, maxAuditEvents: options.maxAuditEvents, busyTimeoutMs: options.busyTimeoutMs },
      },
      callTimeoutMs,
      // Opening loads a thread and may wait out another connection's lock (migrations).
      openTimeoutMs: Math.max(callTimeoutMs, (options.busyTimeoutMs ?? 5_000) + 30_000),
      maxPendingCalls: options.maxPendingCalls ?? 64,
    });
  }

  /**
   * Opens the file on a worker and resolves once the schema is ready, so a file that cannot be
   * used (newer schema, not a database, no permission) fails start-up with SQLite's reason.
   */
  static async open(options: ThreadedSqliteStoreOptions): Promise<ThreadedSqliteStore> {
    const store = new ThreadedSqliteStore(options);
    await store.#thread.open();
    return store;
  }

  /** Workers replaced after a crash or a missed deadline (diagnostics and tests). */
  get restarts(): number {
    return this.#thread.restarts;
  }

  apply(batch: StoreBatch): Promise<void> {
    return this.#call('apply', batch);
  }

  loadInstances(): Promise<InstanceRecord[]> {
    return this.#call('loadInstances');
  }

  loadBootSamples(perResource: number): Promise<BootSample[]> {
    return this.#call('loadBootSamples', perResource);
  }

  recentAudit(limit: number): Promise<AuditEvent[]> {
    return this.#call('recentAudit', limit);
  }

  queryAudit(query: AuditQuery): Promise<StoredAuditEvent[]> {
    return this.#call('queryAudit', query);
  }

  /** Waits for calls in flight (each bounded by its deadline), then closes the file. Idempotent. */
  close(): Promise<void> {
    return this.#thread.close();
  }

  async #call<K extends EngineMethod>(method: K, ...args: Parameters<SqliteStore[K]>): Promise<Awaited<ReturnType<SqliteStore[K]>>> {
    return await this.#thread.call(method, args) as Awaited<ReturnType<SqliteStore[K]>>;
  }
}
