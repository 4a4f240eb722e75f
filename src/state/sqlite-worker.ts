/**
 * Worker-thread side of `SqliteThread`: owns one SQLite connection through one engine (the
 * state store's `SqliteStore`, or the key-value store's `SqliteKeyValueEngine`), so a statement
 * that waits for another connection's lock (a backup, the sqlite3 shell, a second proxy) blocks
 * this thread, never the proxy's event loop.
 *
 * Protocol (structured-clone messages, one at a time in arrival order):
 * - on start: `{ type: 'ready' }`, or `{ type: 'open-failed', error }` and exit;
 * - `{ id, method, args }` → `{ id, ok: true, value }` or `{ id, ok: false, error }`.
 * Only the engine's own async methods may be called; anything else is refused by name.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteKeyValueEngine, type SqliteKeyValueEngineOptions } from './sqlite-key-value-engine.ts';
import { SqliteStore, type SqliteStoreOptions } from './sqlite-store.ts';

/** Which engine the worker hosts, with its options. */
export type WorkerData =
  | { readonly engine: 'state'; readonly options: SqliteStoreOptions }
  | { readonly engine: 'key-values'; readonly options: SqliteKeyValueEngineOptions };

export interface WorkerRequest {
  readonly id: number;
  readonly method: string;
  readonly args: readonly unknown[];
}

export type WorkerReply =
  | { readonly type: 'ready' }
  | { readonly type: 'open-failed'; readonly error: SerializedError }
  | { readonly type: 'reply'; readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly type: 'reply'; readonly id: number; readonly ok: false; readonly error: SerializedError };

export interface SerializedError {
  readonly message: string;
  readonly code?: string | undefined;
}

function serialize(err: unknown): SerializedError {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return { message: err.message, code: typeof code === 'string' ? code : undefined };
  }
  return { message: String(err) };
}

const port = parentPort;
if (port === null) throw new Error('sqlite-worker.ts runs only as a worker thread');

const data = workerData as WorkerData;
const Engine = data.engine === 'key-values' ? SqliteKeyValueEngine : SqliteStore;
let store: object;
try {
  store = data.engine === 'key-values' ? new SqliteKeyValueEngine(data.options) : new SqliteStore(data.options);
  port.postMessage({ type: 'ready' } satisfies WorkerReply);
} catch (err) {
  port.postMessage({ type: 'open-failed', error: serialize(err) } satisfies WorkerReply);
  port.close();
  process.exit(0);
}

/** The engine's callable surface: its own prototype's methods, never inherited ones. */
const callable = new Set(Object.getOwnPropertyNames(Engine.prototype).filter((name) => {
  if (name === 'constructor') return false;
  const d = Object.getOwnPropertyDescriptor(Engine.prototype, name);
  return d !== undefined && typeof d.value === 'function';
}));

port.on('message', (msg: WorkerRequest) => {
  void handle(msg);
});

async function handle(msg: WorkerRequest): Promise<void> {
  const { id, method, args } = msg;
  if (!callable.has(method)) {
    port?.postMessage({ type: 'reply', id, ok: false, error: { message: `store has no method "${method}"` } } satisfies WorkerReply);
    return;
  }
  try {
    const fn = (store as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method] as (...a: unknown[]) => Promise<unknown>;
    const value = await fn.apply(store, [...args]);
    port?.postMessage({ type: 'reply', id, ok: true, value } satisfies WorkerReply);
  } catch (err) {
    port?.postMessage({ type: 'reply', id, ok: false, error: serialize(err) } satisfies WorkerReply);
  }
}
