/**
 * Forwards one HTTP request to a backend through a keep-alive undici Pool per backend
 * origin, streaming bodies both ways (never buffered whole; backpressure via pipeline).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Pool, errors as undiciErrors } from 'undici';
import { SmartProxyError } from '../core/errors.ts';
import { downstreamHeaders } from './headers.ts';

export interface UpstreamOptions {
  readonly connectTimeoutMs: number;
  readonly headersTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly connectionsPerBackend: number;
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
  /** Nothing of the request reached the backend (refused, or reset before sending): safe to retry. */
  | 'unreachable';

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** One undici Pool per backend origin, created on first use, closed on shutdown. */
export class UpstreamPools {
  readonly #pools = new Map<string, Pool>();
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

  pool(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (pool === undefined || pool.destroyed || pool.closed) {
      pool = new Pool(origin, {
        connections: this.#options.connectionsPerBackend,
        connectTimeout: this.#options.connectTimeoutMs,
        headersTimeout: this.#options.headersTimeoutMs,
        bodyTimeout: this.#options.bodyTimeoutMs,
        keepAliveTimeout: 4_000,
      });
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  /** Drops the pool of a backend that went away, so no stale keep-alive socket is reused. */
  evict(origin: string): void {
    const pool = this.#pools.get(origin);
    if (pool === undefined) return;
    this.#pools.delete(origin);
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
   * Sends `req` to `origin` + `path` with `headers` and streams the answer into `res`.
   * Resolves 'unreachable' when the backend could not be reached and nothing was sent;
   * throws SmartProxyError for other failures before the response head; after the head,
   * a failure cuts the client connection (the only honest signal left).
   */
  async forward(req: IncomingMessage, res: ServerResponse, origin: string, path: string, headers: string[]): Promise<ForwardOutcome> {
    const method = req.method ?? 'GET';
    const hasBody = req.headers['transfer-encoding'] !== undefined
      || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')
      // HTTP/2 has no chunked coding: a body without content-length is announced only by the
      // HEADERS frame not ending the stream (compat request: `stream.endAfterHeaders`).
      || (req.httpVersionMajor === 2 && (req as { stream?: { endAfterHeaders?: boolean } }).stream?.endAfterHeaders === false);
    const ac = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) ac.abort();
    };
    res.once('close', onClose);
    let upstream: Awaited<ReturnType<Pool['request']>>;
    try {
      upstream = await this.pool(origin).request({
        method,
        path,
        headers,
        body: hasBody ? req : null,
        signal: ac.signal,
      });
    } catch (err) {
      res.off('close', onClose);
      if (ac.signal.aborted) return 'done';
      if (isUnsent(err, method, req)) return 'unreachable';
      throw toUpstreamError(err);
    }
    try {
      res.writeHead(upstream.statusCode, downstreamHeaders(upstream.headers));
      // A body of unknown length may be a stream (SSE, long poll): its head goes out now, as
      // the backend sent it, instead of waiting for the first chunk.
      if (upstream.headers['content-length'] === undefined) res.flushHeaders();
      await pipeline(upstream.body, res);
    } catch {
      // Client left or backend broke mid-body: both ends are torn down by pipeline.
      if (!res.destroyed) res.destroy();
    } finally {
      res.off('close', onClose);
    }
    return 'done';
  }
}

/** True when the error proves (or makes safe to assume) that no byte reached the backend. */
function isUnsent(err: unknown, method: string, req: IncomingMessage): boolean {
  const code = (err as { code?: string }).code;
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'UND_ERR_CONNECT_TIMEOUT') return true;
  // A reset may come after the request went out: replay only what is idempotent and whose
  // body was never read.
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE') {
    return IDEMPOTENT.has(method) && !req.readableDidRead;
  }
  return false;
}

function toUpstreamError(err: unknown): SmartProxyError {
  if (err instanceof undiciErrors.HeadersTimeoutError) {
    return new SmartProxyError('SP_UPSTREAM_TIMEOUT', 'the backend did not send a response head in time', { cause: err });
  }
  const code = (err as { code?: string }).code ?? 'unknown';
  return new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', `the backend failed to answer (${code})`, { data: { cause: code }, cause: err });
}
