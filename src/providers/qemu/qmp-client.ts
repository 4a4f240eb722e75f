/**
 * A minimal QMP (QEMU Machine Protocol) client over a unix socket: greeting, capability
 * negotiation, then one command at a time, each answered by `return` or `error` in order.
 * Asynchronous events (`{"event": …}`) are passed to `onEvent`. Protocol:
 * https://www.qemu.org/docs/master/interop/qmp-spec.html
 *
 * Hand-written because the protocol is a few lines of JSON over a socket and the npm QMP
 * clients are unmaintained.
 */
import { connect, type Socket } from 'node:net';

export interface QmpEvent {
  readonly event: string;
  readonly data?: unknown;
}

/** A QMP command failed (`{"error": …}`), or the connection did. */
export class QmpError extends Error {
  /** QMP error class (`GenericError`, `CommandNotFound`…), or `Disconnected`/`Timeout`/`Aborted`. */
  readonly qmpClass: string;

  constructor(qmpClass: string, message: string) {
    super(message);
    this.name = 'QmpError';
    this.qmpClass = qmpClass;
  }
}

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
}

/** Longest line accepted from QEMU; a migration status or a query is a few KiB at most. */
const MAX_LINE_BYTES = 1024 * 1024;

export class QmpClient {
  readonly #socket: Socket;
  readonly #pending: Pending[] = [];
  #buffer = '';
  #closed = false;
  #closeError: QmpError | undefined;
  readonly #closeListeners = new Set<() => void>();
  onEvent: ((event: QmpEvent) => void) | undefined;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', (err) => this.#shutdown(new QmpError('Disconnected', `QMP socket error: ${err.message}`)));
    socket.on('close', () => this.#shutdown(new QmpError('Disconnected', 'QMP connection closed (QEMU exited?)')));
  }

  /**
   * Connects to `path`, reads the greeting and negotiates capabilities. Rejects when the
   * socket does not exist yet (ENOENT/ECONNREFUSED: the caller retries), on timeout or abort.
   */
  static async connect(path: string, options: { readonly timeoutMs: number; readonly signal?: AbortSignal | undefined }): Promise<QmpClient> {
    const socket = connect({ path });
    const client = new QmpClient(socket);
    const greeting = new Promise<unknown>((resolve, reject) => client.#pending.push({ resolve, reject }));
    try {
      await withTimeout(greeting, options.timeoutMs, options.signal, 'QMP greeting');
      await client.execute('qmp_capabilities', undefined, options);
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Called once when the connection ends (QEMU exited, or `close()`). */
  onClose(listener: () => void): void {
    if (this.#closed) queueMicrotask(listener);
    else this.#closeListeners.add(listener);
  }

  /** Runs one QMP command and resolves with its `return` value. */
  execute(command: string, args: Record<string, unknown> | undefined, options: { readonly timeoutMs: number; readonly signal?: AbortSignal | undefined }): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new QmpError('Disconnected', 'QMP connection closed'));
    const answer = new Promise<unknown>((resolve, reject) => this.#pending.push({ resolve, reject }));
    this.#socket.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
    // A timed-out command keeps its slot in the queue: answers come in order, so dropping it
    // would hand the next command this command's late answer.
    return withTimeout(answer, options.timeoutMs, options.signal, `QMP ${command}`);
  }

  close(): void {
    this.#socket.destroy();
    this.#shutdown(new QmpError('Disconnected', 'QMP connection closed by the client'));
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    if (this.#buffer.length > MAX_LINE_BYTES && !this.#buffer.includes('\n')) {
      this.close();
      return;
    }
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line !== '') this.#onMessage(line);
    }
  }

  #onMessage(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // not QMP; ignore rather than desynchronise the queue
    }
    if (msg === null || typeof msg !== 'object') return;
    const m = msg as Record<string, unknown>;
    if (typeof m['event'] === 'string') {
      try {
        this.onEvent?.({ event: m['event'], data: m['data'] });
      } catch {
        // a listener's bug must not break the protocol
      }
      return;
    }
    const pending = this.#pending.shift();
    if (pending === undefined) return;
    if ('QMP' in m) pending.resolve(m['QMP']);
    else if ('return' in m) pending.resolve(m['return']);
    else if ('error' in m) {
      const e = (m['error'] ?? {}) as { class?: unknown; desc?: unknown };
      pending.reject(new QmpError(typeof e.class === 'string' ? e.class : 'GenericError', typeof e.desc === 'string' ? e.desc : 'QMP error'));
    } else pending.reject(new QmpError('GenericError', `unexpected QMP message: ${line.slice(0, 200)}`));
  }

  #shutdown(err: QmpError): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    for (const p of this.#pending.splice(0)) p.reject(err);
    for (const l of this.#closeListeners) l();
    this.#closeListeners.clear();
  }
}

function withTimeout<T>(p: Promise<T>, timeoutMs: number, signal: AbortSignal | undefined, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new QmpError('Aborted', `${what}: aborted`));
      return;
    }
    const timer = setTimeout(() => finish(() => reject(new QmpError('Timeout', `${what}: no answer in ${timeoutMs} ms`))), timeoutMs);
    const onAbort = (): void => finish(() => reject(new QmpError('Aborted', `${what}: aborted`)));
    signal?.addEventListener('abort', onAbort, { once: true });
    const finish = (fn: () => void): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      fn();
    };
    p.then((v) => finish(() => resolve(v)), (e: unknown) => finish(() => reject(e instanceof Error ? e : new Error(String(e)))));
  });
}
