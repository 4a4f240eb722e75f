/**
 * The SQLite store as the proxy runs it: the `SqliteStore` engine on a worker thread.
 *
 * Why a thread: `node:sqlite` is synchronous, and a write that meets another connection's
 * lock (an online backup, the sqlite3 shell, a second process on the same file) waits up to
 * `busyTimeoutMs` inside SQLite. On the event loop that froze every request for seconds; here
 * only the worker waits, the flush's promise stays pending, and `StateSync` keeps the batch for
 * the next flush if the wait ends in SQLITE_BUSY (nothing is lost).
 *
 * Bounds: every call has a deadline (`callTimeoutMs`; a worker that misses it is replaced,
 * since SQLite rolls back what it left open), calls in flight are capped (`maxPendingCalls`),
 * and a worker that dies is replaced on the next call. The worker keeps the process alive only
 * while a call is in flight, so an idle store never holds up exit, and a final flush at
 * shutdown is never cut short.
 */
import { Worker } from 'node:worker_threads';
import type { AuditEvent, AuditQuery, BootSample, InstanceRecord, Store, StoreBatch, StoredAuditEvent } from '../core/ports.ts';
import type { SqliteStore, SqliteStoreOptions } from './sqlite-store.ts';
import type { SerializedError, WorkerReply, WorkerRequest } from './sqlite-worker.ts';

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

interface Pending {
  readonly method: string;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** An error from the worker, with SQLite's code (`ERR_SQLITE_ERROR` …) when it had one. */
export class StoreCallError extends Error {
  readonly code: string | undefined;
  constructor(method: string, e: SerializedError) {
    super(`sqlite ${method}: ${e.message}`);
    this.name = 'StoreCallError';
    this.code = e.code;
  }
}

export class ThreadedSqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly #options: ThreadedSqliteStoreOptions;
  readonly #callTimeoutMs: number;
  readonly #maxPending: number;
  readonly #pending = new Map<number, Pending>();
  #worker: Worker | undefined;
  #ready: Promise<void> | undefined;
  #nextId = 1;
  #closed = false;
  /** Workers replaced after a crash or a missed deadline (diagnostics and tests). */
  restarts = 0;

  private constructor(options: ThreadedSqliteStoreOptions) {
    this.#options = options;
    this.#callTimeoutMs = options.callTimeoutMs ?? Math.max(30_000, (options.busyTimeoutMs ?? 5_000) * 3);
    this.#maxPending = options.maxPendingCalls ?? 64;
  }

  /**
   * Opens the file on a worker and resolves once the schema is ready, so a file that cannot be
   * used (newer schema, not a database, no permission) fails start-up with SQLite's reason.
   */
  static async open(options: ThreadedSqliteStoreOptions): Promise<ThreadedSqliteStore> {
    const store = new ThreadedSqliteStore(options);
    await store.#spawn();
    return store;
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
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const worker = this.#worker;
    if (worker === undefined) return;
    try {
      await this.#send(worker, 'close', []);
    } catch {
      // The file is closed by the thread's end below either way.
    }
    this.#worker = undefined;
    await worker.terminate();
  }

  #spawn(): Promise<void> {
    const worker = new Worker(new URL('./sqlite-worker.ts', import.meta.url), {
      workerData: { path: this.#options.path, maxBootSamplesPerResource: this.#options.maxBootSamplesPerResource, maxAuditEvents: this.#options.maxAuditEvents, busyTimeoutMs: this.#options.busyTimeoutMs },
    });
    this.#worker = worker;
    const ready = new Promise<void>((resolve, reject) => {
      // Opening loads a thread and may wait out another connection's lock (migrations).
      const openTimeoutMs = Math.max(this.#callTimeoutMs, (this.#options.busyTimeoutMs ?? 5_000) + 30_000);
      const timer = setTimeout(() => {
        reject(new Error(`${this.#options.path}: the store did not open within ${openTimeoutMs} ms`));
        void worker.terminate();
      }, openTimeoutMs);
      worker.once('message', (m: WorkerReply) => {
        clearTimeout(timer);
        if (m.type === 'ready') resolve();
        else if (m.type === 'open-failed') reject(new Error(m.error.message));
        else reject(new Error('store worker spoke before it was ready'));
      });
      worker.once('error', (err: Error) => { clearTimeout(timer); reject(err); });
      worker.once('exit', (code) => { clearTimeout(timer); reject(new Error(`store worker exited (${code}) while opening`)); });
    });
    worker.on('message', (m: WorkerReply) => { if (m.type === 'reply') this.#settle(m); });
    worker.on('error', (err: Error) => { this.#lost(worker, `store worker failed: ${err.message}`); });
    worker.on('exit', (code) => { this.#lost(worker, `store worker exited (${code})`); });
    this.#ready = ready;
    // Opening keeps the process alive; afterwards only calls in flight do (see #send).
    void ready.then(() => { if (this.#pending.size === 0) worker.unref(); }, () => { if (this.#worker === worker) this.#worker = undefined; });
    return ready;
  }

  async #call<K extends EngineMethod>(method: K, ...args: Parameters<SqliteStore[K]>): Promise<Awaited<ReturnType<SqliteStore[K]>>> {
    if (this.#closed) throw new Error('store is closed');
    if (this.#worker === undefined) {
      this.restarts++;
      await this.#spawn();
    } else {
      await this.#ready;
    }
    const worker = this.#worker;
    if (worker === undefined || this.#closed) throw new Error('store is closed');
    return await this.#send(worker, method, args) as Awaited<ReturnType<SqliteStore[K]>>;
  }

  #send(worker: Worker, method: string, args: readonly unknown[]): Promise<unknown> {
    if (this.#pending.size >= this.#maxPending) {
      return Promise.reject(new Error(`sqlite ${method}: ${this.#pending.size} store calls already in flight (maxPendingCalls)`));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`sqlite ${method}: no answer within ${this.#callTimeoutMs} ms; replacing the store worker`));
        // A stuck thread is never trusted again: SQLite rolls back whatever it left open.
        this.#lost(worker, 'store worker missed a deadline');
        void worker.terminate();
      }, this.#callTimeoutMs);
      if (this.#pending.size === 0) worker.ref();
      this.#pending.set(id, { method, resolve, reject, timer });
      worker.postMessage({ id, method, args } satisfies WorkerRequest);
    }).finally(() => {
      if (this.#pending.size === 0 && this.#worker === worker) worker.unref();
    });
  }

  #settle(m: Extract<WorkerReply, { type: 'reply' }>): void {
    const p = this.#pending.get(m.id);
    if (p === undefined) return; // already timed out
    this.#pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.ok) p.resolve(m.value);
    else p.reject(new StoreCallError(p.method, m.error));
  }

  /** The worker is gone: fail what it held; the next call starts a fresh one. */
  #lost(worker: Worker, why: string): void {
    if (this.#worker !== worker) return;
    this.#worker = undefined;
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new Error(why));
    }
  }
}
