/**
 * One SQLite engine on a worker thread (sqlite-worker.ts), called by method name: the part
 * the state store (`ThreadedSqliteStore`) and the key-value store (`SqliteKeyValueStore`)
 * share.
 *
 * Why a thread: `node:sqlite` is synchronous, and a statement that meets another connection's
 * lock (an online backup, the sqlite3 shell, a second process on the same file) waits up to
 * its busy timeout inside SQLite. On the event loop that froze every request; here only the
 * worker waits and the caller's promise stays pending.
 *
 * Bounds: every call has a deadline (`callTimeoutMs`; a worker that misses it is replaced,
 * since SQLite rolls back what it left open), calls in flight are capped (`maxPendingCalls`),
 * and a worker that dies is replaced on the next call. The worker keeps the process alive only
 * while a call is in flight, so an idle store never holds up exit, and a final flush at
 * shutdown is never cut short.
 */
import { Worker } from 'node:worker_threads';
import { workerEnvWithCompileCache } from '../config/compile-cache.js';
import type { SerializedError, WorkerData, WorkerReply, WorkerRequest } from './sqlite-worker.ts';

export interface SqliteThreadOptions {
  /** The engine and its options, as the worker builds it. */
  readonly workerData: WorkerData;
  /** Longest a single call may take before it fails and the worker is replaced. */
  readonly callTimeoutMs: number;
  /** Longest the worker may take to open the file (loading a thread, migrations behind a lock). */
  readonly openTimeoutMs: number;
  /** Calls in flight at once; past it a call fails at once instead of queueing. */
  readonly maxPendingCalls: number;
}

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

export class SqliteThread {
  readonly #o: SqliteThreadOptions;
  readonly #pending = new Map<number, Pending>();
  #worker: Worker | undefined;
  #ready: Promise<void> | undefined;
  #nextId = 1;
  #closed = false;
  /** Workers replaced after a crash or a missed deadline (diagnostics and tests). */
  restarts = 0;

  constructor(options: SqliteThreadOptions) {
    this.#o = options;
  }

  /** Starts the worker and resolves once the engine has opened its file (or rejects with SQLite's reason). */
  open(): Promise<void> {
    return this.#worker === undefined ? this.#spawn() : (this.#ready ?? Promise.resolve());
  }

  /** Calls the engine's method `method`; the first call opens the worker if none runs. */
  async call(method: string, args: readonly unknown[]): Promise<unknown> {
    if (this.#closed) throw new Error('store is closed');
    if (this.#worker === undefined) {
      if (this.#ready !== undefined) this.restarts++;
      await this.#spawn();
    } else {
      await this.#ready;
    }
    const worker = this.#worker;
    if (worker === undefined || this.#closed) throw new Error('store is closed');
    return await this.#send(worker, method, args);
  }

  /** Waits for calls in flight (each bounded by its deadline), closes the engine, ends the thread. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const worker = this.#worker;
    if (worker === undefined) return;
    try {
      await this.#ready;
      await this.#send(worker, 'close', []);
    } catch {
      // The file is closed by the thread's end below either way.
    }
    this.#worker = undefined;
    await worker.terminate();
  }

  #spawn(): Promise<void> {
    // The thread compiles its modules too (on the start-up path): with the process's compile cache.
    const env = workerEnvWithCompileCache();
    const worker = new Worker(new URL('./sqlite-worker.ts', import.meta.url), { workerData: this.#o.workerData, ...(env === undefined ? {} : { env }) });
    this.#worker = worker;
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.#o.workerData.options.path}: the store did not open within ${this.#o.openTimeoutMs} ms`));
        void worker.terminate();
      }, this.#o.openTimeoutMs);
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

  #send(worker: Worker, method: string, args: readonly unknown[]): Promise<unknown> {
    if (this.#pending.size >= this.#o.maxPendingCalls) {
      return Promise.reject(new Error(`sqlite ${method}: ${this.#pending.size} store calls already in flight (maxPendingCalls)`));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`sqlite ${method}: no answer within ${this.#o.callTimeoutMs} ms; replacing the store worker`));
        // A stuck thread is never trusted again: SQLite rolls back whatever it left open.
        this.#lost(worker, 'store worker missed a deadline');
        void worker.terminate();
      }, this.#o.callTimeoutMs);
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
