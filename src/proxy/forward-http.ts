/**
 * Forwards one HTTP request to a backend through a keep-alive undici Pool per backend
 * origin, streaming bodies both ways (never buffered whole; backpressure both ways).
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { Pool, undiciErrors } from './undici-parts.ts';
import { SmartProxyError } from '../core/errors.ts';
import { BackendGate, type ReleaseSlot } from './backend-gate.ts';
import { DEFAULT_BACKEND_TLS, tlsConnectOptions, type BackendTls } from './backend-tls.ts';
import { idleBoundedBody } from './body-idle.ts';
import { stripBackendCors } from './cors.ts';
import { downstreamHeaders, downstreamTrailers } from './headers.ts';

export interface UpstreamOptions {
  readonly connectTimeoutMs: number;
  readonly headersTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly connectionsPerBackend: number;
  /** Requests queued for a busy backend (backend-gate.ts); default 1024. */
  readonly maxQueuedPerBackend?: number;
  /** Longest wait in that queue; default 10 s. */
  readonly queueTimeoutMs?: number;
  /** Longest silence of a client while its request body is forwarded; 0 = none. */
  readonly bodyIdleTimeoutMs?: number;
  /**
   * Told when a backend's answer breaks after its head went out (the client connection is
   * cut then): the one failure the client cannot be told about.
   */
  readonly onBrokenAnswer?: (origin: string, err: Error) => void;
}

/** A backend endpoint split once into what undici needs. */
export interface ParsedEndpoint {
  readonly origin: string;
  readonly pathPrefix: string;
}

/** How a forward ended, when it did not throw. */
export type ForwardOutcome =
  /** The response went out (or the client left). */
  | 'done'
  /** The backend could not be reached (connection refused, unreachable, connect timeout). */
  | 'unreachable'
  /**
   * The connection was reset before an answer, on an idempotent request whose body was never
   * read: safe to send again. It may be one stale keep-alive socket, not a dead backend.
   */
  | 'reset';

/**
 * How a forward ended: its outcome, or the error to answer the client with (a failure before
 * the response head that is not safe to send again).
 */
export type ForwardSettled = (result: ForwardOutcome | Error) => void;

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * One undici Pool per backend origin (and, for https: origins, per TLS setting: two resources
 * may trust different CAs for one address), created on first use, closed on shutdown.
 */
export class UpstreamPools {
  readonly #pools = new Map<string, Pool>();
  readonly #gates = new Map<string, BackendGate>();
  readonly #endpoints = new Map<string, ParsedEndpoint>();
  readonly #options: UpstreamOptions;

  constructor(options: UpstreamOptions) {
    this.#options = options;
  }

  /** Parses an endpoint URL once and caches it (endpoints are few and long-lived). */
  endpoint(url: string): ParsedEndpoint {
    let parsed = this.#endpoints.get(url);
    if (parsed === undefined) {
      const u = new URL(url);
      parsed = { origin: u.origin, pathPrefix: u.pathname === '/' ? '' : u.pathname };
      if (this.#endpoints.size > 10_000) this.#endpoints.clear();
      this.#endpoints.set(url, parsed);
    }
    return parsed;
  }

  pool(origin: string, tls: BackendTls = DEFAULT_BACKEND_TLS): Pool {
    const key = poolKey(origin, tls);
    let pool = this.#pools.get(key);
    if (pool === undefined || pool.destroyed || pool.closed) {
      const https = origin.startsWith('https:');
      pool = new Pool(origin, {
        ...(https ? { connect: tlsConnectOptions(tls, new URL(origin).hostname) } : {}),
        connections: this.#options.connectionsPerBackend,
        connectTimeout: this.#options.connectTimeoutMs,
        headersTimeout: this.#options.headersTimeoutMs,
        bodyTimeout: this.#options.bodyTimeoutMs,
        keepAliveTimeout: 4_000,
      });
      this.#pools.set(key, pool);
    }
    return pool;
  }

  /** The bounded queue in front of a backend's pool (one per pool: origin and TLS setting). */
  gate(origin: string, tls: BackendTls = DEFAULT_BACKEND_TLS): BackendGate {
    const key = poolKey(origin, tls);
    let gate = this.#gates.get(key);
    if (gate === undefined) {
      gate = new BackendGate(origin, {
        maxInFlight: this.#options.connectionsPerBackend,
        maxQueued: this.#options.maxQueuedPerBackend ?? 1024,
        queueTimeoutMs: this.#options.queueTimeoutMs ?? 10_000,
      });
      this.#gates.set(key, gate);
    }
    return gate;
  }

  /** Backend origins with a pool right now. */
  get size(): number {
    return this.#pools.size;
  }

  /**
   * Closes the pools of every origin not among `endpoints` (the endpoints instances use now).
   * Providers that hand out a fresh port per boot would otherwise leave one pool per boot
   * ever seen. Closing is graceful: a forward still running on such a pool finishes.
   */
  retainOnly(endpoints: Iterable<string>): number {
    const keep = new Set<string>();
    for (const e of endpoints) keep.add(this.endpoint(e).origin);
    let closed = 0;
    for (const key of [...this.#pools.keys()]) {
      // A pool key is the origin, followed by the TLS setting for https: (poolKey).
      if (keep.has(key.split('\u0000', 1)[0] ?? key)) continue;
      this.#evictKey(key);
      closed++;
    }
    // The parse cache is rebuilt on demand; dropping it keeps it in step with the pools.
    if (closed > 0) this.#endpoints.clear();
    return closed;
  }

  /** Drops the pool of a backend that went away, so no stale keep-alive socket is reused. */
  evict(origin: string, tls: BackendTls = DEFAULT_BACKEND_TLS): void {
    this.#evictKey(poolKey(origin, tls));
  }

  #evictKey(key: string): void {
    const gate = this.#gates.get(key);
    // An idle gate holds nothing; a busy one stays until its requests release their slots.
    if (gate !== undefined && gate.inFlight === 0 && gate.queued === 0) this.#gates.delete(key);
    const pool = this.#pools.get(key);
    if (pool === undefined) return;
    this.#pools.delete(key);
    // close, not destroy: requests already queued on this pool were never sent; destroying
    // would fail them with UND_ERR_DESTROYED (a 502), while closing lets each one meet the
    // refused connection itself and go back to waiting for the restarted instance.
    pool.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.allSettled(pools.map((p) => p.close()));
  }

  /**
   * Sends `req` to `origin` + `path` with `headers`, streams the answer into `res`, and calls
   * `settled` once: 'unreachable' when the backend could not be reached and nothing was sent,
   * a SmartProxyError for other failures before the response head; after the head, a failure
   * cuts the client connection (the only honest signal left) and settles 'done'.
   *
   * Uses undici's dispatch API with one handler object per request rather than
   * request() + pipeline(): no response Readable, no pipeline (whose clean-up aborts an
   * AbortController, building a DOMException with a stack trace, on every request), no
   * AbortController of our own. Profiled: about a fifth of the warm path's CPU. A callback
   * rather than a promise: with a free connection slot, nothing here waits on one. `settled`
   * may be called from within undici's handler callbacks; it must not throw.
   */
  forward(req: IncomingMessage, res: ServerResponse, origin: string, path: string, headers: string[], tls: BackendTls | undefined, settled: ForwardSettled): void {
    const gate = this.gate(origin, tls);
    const slot = gate.tryAcquire();
    if (slot !== undefined) {
      this.#dispatch(req, res, origin, path, headers, tls, slot, settled);
      return;
    }
    gate.acquire((leave) => res.once('close', leave)).then((queued) => {
      // The client left while queued: nothing was sent.
      if (queued === undefined) {
        settled('done');
        return;
      }
      // What #dispatch throws is this request's failure, never an unhandled rejection.
      try {
        this.#dispatch(req, res, origin, path, headers, tls, queued, settled);
      } catch (err) {
        settled(asError(err));
      }
    }, (err: unknown) => settled(asError(err)));
  }

  #dispatch(req: IncomingMessage, res: ServerResponse, origin: string, path: string, headers: string[], tls: BackendTls | undefined, slot: ReleaseSlot, settled: ForwardSettled): void {
    const method = req.method ?? 'GET';
    const hasBody = req.headers['transfer-encoding'] !== undefined
      || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')
      // HTTP/2 has no chunked coding: a body without content-length is announced only by the
      // HEADERS frame not ending the stream (compat request: `stream.endAfterHeaders`).
      || (req.httpVersionMajor === 2 && (req as { stream?: { endAfterHeaders?: boolean } }).stream?.endAfterHeaders === false);
    const idleMs = this.#options.bodyIdleTimeoutMs ?? 0;
    // A body is read through an idle bound, so a stalled upload frees its backend connection.
    const body = !hasBody ? null : idleMs > 0 ? idleBoundedBody(req, idleMs) : req;
    const handler = new ForwardHandler(req, res, method, slot, settled, this.#options.onBrokenAnswer === undefined ? undefined : origin, this.#options.onBrokenAnswer);
    // undici's client writes any async iterable body (client-h1 writeIterable); its
    // dispatch types name only Readable.
    try {
      this.pool(origin, tls).dispatch({ method, path, headers, body: body as Dispatcher.DispatchOptions['body'] }, handler);
    } catch (err) {
      // A request undici refuses outright (invalid header bytes) must not keep its slot.
      handler.onResponseError(undefined, err as Error);
    }
  }
}

/** Backpressure and outcome of one forward (see UpstreamPools.forward). */
class ForwardHandler implements Dispatcher.DispatchHandler {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #method: string;
  /** The backend-gate slot, given back when the forward settles. */
  readonly #slot: ReleaseSlot;
  readonly #settled: ForwardSettled;
  #controller: Dispatcher.DispatchController | undefined;
  #headSent = false;
  /** The answer is whole at its head: 204, 304, or the answer to HEAD (RFC 9110 §6.4.1). */
  #bodyless = false;
  #clientGone = false;
  /** Settled: `settled` has been called (once). */
  #done = false;
  #settledOk = false;

  readonly #origin: string | undefined;
  readonly #onBroken: ((origin: string, err: Error) => void) | undefined;

  constructor(req: IncomingMessage, res: ServerResponse, method: string, slot: ReleaseSlot, settled: ForwardSettled,
    origin?: string, onBroken?: (origin: string, err: Error) => void) {
    this.#origin = origin;
    this.#onBroken = onBroken;
    this.#req = req;
    this.#res = res;
    this.#method = method;
    this.#slot = slot;
    this.#settled = settled;
    // `on`, not `once`: a response closes once, and once's wrapper costs on every request.
    // Taken off when the forward settles (#detach).
    res.on('close', this.#onClientClose);
  }

  readonly #onClientClose = (): void => {
    if (this.#res.writableFinished || this.#settledOk) return;
    this.#clientGone = true;
    this.#controller?.abort(new Error('client closed the connection'));
  };

  /** Built on the first backpressure, not per request: most responses never meet any. */
  #onDrain: (() => void) | undefined;

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#clientGone) controller.abort(new Error('client closed the connection'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // 1xx interim answers (100 Continue, 103 Early Hints) are not relayed; the final one follows.
    if (statusCode < 200) return;
    this.#headSent = true;
    this.#bodyless = statusCode === 204 || statusCode === 304 || this.#method === 'HEAD';
    const head = downstreamHeaders(headers);
    // A 204 has no content and no Content-Length (RFC 9110 §8.6); a backend that sends one
    // anyway must not make a client wait for bytes that never come.
    if (statusCode === 204) dropField(head, 'content-length');
    // The resource's CORS policy, when it has one, decides the CORS fields (cors.ts).
    stripBackendCors(this.#res, head);
    // A renewed sign-in session (set before forwarding): writeHead with the backend's own
    // Set-Cookie would drop it, so it joins the list.
    const own = this.#res.getHeader('set-cookie');
    if (own !== undefined) for (const c of Array.isArray(own) ? own : [String(own)]) head.push('set-cookie', c);
    this.#res.writeHead(statusCode, head);
    // A body of unknown length may be a stream (SSE, long poll): its head goes out now, as
    // the backend sent it, instead of waiting for the first chunk.
    if (headers['content-length'] === undefined) this.#res.flushHeaders();
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.once('drain', this.#onDrain ??= (): void => { this.#controller?.resume(); });
    }
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers?: IncomingHttpHeaders): void {
    // A backend's trailer fields (a checksum, a gRPC status) follow the body: over HTTP/1.1 in
    // the last chunk (Node sends them only when the answer is chunked), over HTTP/2 in a
    // HEADERS frame. Node refuses invalid bytes in them: then they are dropped, not the answer.
    const kept = downstreamTrailers(trailers);
    if (kept !== undefined) {
      try {
        this.#res.addTrailers(kept);
      } catch { /* invalid field bytes: the body is whole without them */ }
    }
    this.#res.end();
    this.#settledOk = true;
    this.#settle('done');
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, err: Error): void {
    if (this.#done) return;
    if (this.#headSent && this.#bodyless && !this.#clientGone) {
      // The client's answer was complete at its head. What broke is the backend's framing
      // after it (a 204 with a body or a length): undici drops that connection, and the
      // client gets its whole answer instead of a cut connection.
      this.#res.end();
      this.#settledOk = true;
      this.#settle('done');
    } else if (this.#headSent || this.#clientGone) {
      // Client left or backend broke mid-body: the client connection is the only signal left.
      if (!this.#clientGone && this.#origin !== undefined) this.#onBroken?.(this.#origin, err);
      if (!this.#res.destroyed) this.#res.destroy();
      this.#settle('done');
    } else {
      const unsent = unsentKind(err, this.#method, this.#req);
      if (unsent !== undefined) {
        this.#settle(unsent);
        return;
      }
      this.#done = true;
      this.#detach();
      this.#slot();
      // The proxy's own verdicts (a client body that went silent) pass as they are.
      this.#settled(err instanceof SmartProxyError ? err : toUpstreamError(err));
    }
  }

  #settle(outcome: ForwardOutcome): void {
    if (this.#done) return;
    this.#done = true;
    this.#detach();
    this.#slot();
    this.#settled(outcome);
  }

  /**
   * Takes the client-close listener off `res` once the forward has settled (it has nothing
   * left to abort). A released request's `res` is old (it waited through a boot): while the
   * listener list holds this handler, V8 counts the handler, its undici request and what the
   * answer allocated as live at every minor GC until a major one, and copies them.
   */
  #detach(): void {
    this.#res.off('close', this.#onClientClose);
  }
}

/**
 * Whether the error proves (or makes safe to assume) that the request may be sent again, and
 * why; undefined when it may not.
 */
function unsentKind(err: unknown, method: string, req: IncomingMessage): 'unreachable' | 'reset' | undefined {
  const code = (err as { code?: string }).code;
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'UND_ERR_CONNECT_TIMEOUT') return 'unreachable';
  // A reset may come after the request went out: replay only what is idempotent and whose
  // body was never read.
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE') {
    return IDEMPOTENT.has(method) && !req.readableDidRead ? 'reset' : undefined;
  }
  return undefined;
}

function toUpstreamError(err: unknown): SmartProxyError {
  if (err instanceof undiciErrors.HeadersTimeoutError) {
    return new SmartProxyError('SP_UPSTREAM_TIMEOUT', 'the backend did not send a response head in time', { cause: err });
  }
  // undici's parser errors carry no code; their message names what broke (never the
  // backend's bytes, which stay in the error's data and out of the answer).
  if (err instanceof undiciErrors.HTTPParserError) {
    const why = /\(([^()]{1,80})\)$/.exec(err.message)?.[1] ?? 'unparsable';
    return new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', `the backend's answer is not valid HTTP/1.1 (${why})`, { data: { cause: 'malformed-response' }, cause: err });
  }
  const code = (err as { code?: string }).code ?? 'unknown';
  return new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', `the backend failed to answer (${code})`, { data: { cause: code }, cause: err });
}

/** Removes every `name` (lower-case) from a flat [name, value, …] list, in place. */
function dropField(list: string[], name: string): void {
  let kept = 0;
  for (let i = 0; i < list.length; i += 2) {
    if (list[i] === name) continue;
    list[kept++] = list[i] as string;
    list[kept++] = list[i + 1] as string;
  }
  list.length = kept;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Plain origins key by themselves (the warm path builds no string); https ones add the TLS setting. */
function poolKey(origin: string, tls: BackendTls): string {
  return tls.key === '' ? origin : `${origin}\u0000${tls.key}`;
}
