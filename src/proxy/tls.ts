/**
 * TLS termination in front of the data plane: HTTP/2 and HTTP/1.1 on one port, chosen by
 * ALPN (`h2`, then `http/1.1`), with the certificate and key read from files and reloaded
 * when those files change, without a restart and without dropping open connections (new
 * handshakes use the new pair; established ones keep theirs). Backends stay HTTP/1.1.
 *
 * One request handler serves both protocols. Node's HTTP/2 compatibility API gives
 * `Http2ServerRequest`/`Http2ServerResponse`, which offer the subset of IncomingMessage /
 * ServerResponse that the pipeline uses (method, url, headers, rawHeaders, socket,
 * writeHead with a flat header list, end, destroy, 'close'). Where the two differ the
 * shared code handles it, each place commented: pseudo-headers (`:authority`, `:path`…)
 * appear in rawHeaders and are never forwarded (headers.ts), connection-specific headers are
 * illegal in HTTP/2 responses and are already dropped as hop-by-hop (headers.ts), and an
 * HTTP/2 request may carry a body without content-length (forward-http.ts, held-bytes.ts).
 */
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import { basename, dirname, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { SmartProxyError } from '../core/errors.ts';
import type { Logger } from '../core/ports.ts';

export interface TlsFiles {
  /** PEM certificate chain (leaf first). */
  readonly certFile: string;
  /** PEM private key of the leaf certificate. */
  readonly keyFile: string;
}

/** The HTTP/1.1 server options the plain server uses too. */
export interface Http1Options {
  readonly requestTimeout: number;
  readonly headersTimeout: number;
  readonly keepAliveTimeout: number;
  readonly maxHeaderSize: number;
}

export type ReloadOutcome = { readonly ok: true } | { readonly ok: false; readonly error: string };

export interface TlsFront {
  /**
   * The secure server, typed as `http.Server` for the rest of the data plane. With
   * `allowHTTP1` Node runs its HTTP/1 connection handling on this very server, so it has
   * the HTTP/1 options and events the plain server has ('upgrade', 'clientError', 'connect',
   * closeIdleConnections, shouldUpgradeCallback), plus its own for HTTP/2 sessions.
   */
  readonly server: Server;
  /** Reads the files again; installs the pair if it changed and is valid. */
  reload(): Promise<ReloadOutcome>;
  /** Called after every reload attempt triggered by a file change (tests, logs). */
  onReload(listener: (outcome: ReloadOutcome) => void): () => void;
  /** Sends GOAWAY to every HTTP/2 session: streams in flight finish, new ones go elsewhere. */
  drain(): void;
  /** Stops watching the files. */
  close(): void;
}

/** File events come in bursts (write, rename, chmod; a Kubernetes secret swaps a symlink). */
const RELOAD_DEBOUNCE_MS = 100;

function readPair(files: TlsFiles): { cert: Buffer; key: Buffer } {
  try {
    return { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) };
  } catch (err) {
    throw new SmartProxyError('SP_CONFIG_INVALID', `tls: cannot read the certificate or key: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Sends GOAWAY to a session that has had no open stream for `idleMs`. Node's own session
 * timeout counts any silence, and would cut held requests and quiet streams (SSE); this one
 * runs only while nothing is open.
 */
function closeWhenIdle(s: ServerHttp2Session, idleMs: number): void {
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    timer = setTimeout(() => {
      if (open === 0 && !s.closed && !s.destroyed) s.close();
    }, idleMs);
    timer.unref();
  };
  arm();
  s.on('stream', (stream: { once(event: 'close', l: () => void): void }) => {
    open++;
    clearTimeout(timer);
    stream.once('close', () => {
      if (--open === 0 && !s.closed && !s.destroyed) arm();
    });
  });
  s.once('close', () => clearTimeout(timer));
}

export function createTlsFront(options: {
  readonly files: TlsFiles;
  readonly http1: Http1Options;
  readonly onRequest: (req: IncomingMessage, res: ServerResponse) => void;
  readonly logger: Logger;
  /** A TLS handshake not finished in this long is dropped. */
  readonly handshakeTimeoutMs?: number;
  readonly http2?: {
    /** A session with no open stream for this long gets GOAWAY; 0 = never. */
    readonly sessionIdleTimeoutMs: number;
    /** SETTINGS_MAX_CONCURRENT_STREAMS advertised to each client. */
    readonly maxConcurrentStreams: number;
  };
}): TlsFront {
  const { files, logger: log } = options;
  let current = readPair(files);
  try {
    createSecureContext(current);
  } catch (err) {
    throw new SmartProxyError('SP_CONFIG_INVALID', `tls: the certificate and key do not form a usable pair: ${(err as Error).message}`, { cause: err });
  }
  const h2 = createSecureServer({
    ...current,
    allowHTTP1: true,
    // Preference order for ALPN: h2 first, HTTP/1.1 for clients (and WebSockets) that want it.
    ALPNProtocols: ['h2', 'http/1.1'],
    ...options.http1,
    ...(options.handshakeTimeoutMs === undefined ? {} : { handshakeTimeout: options.handshakeTimeoutMs }),
    settings: {
      maxHeaderListSize: options.http1.maxHeaderSize,
      ...(options.http2 === undefined ? {} : { maxConcurrentStreams: options.http2.maxConcurrentStreams }),
    },
  }, (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    // The compat objects stand in for IncomingMessage/ServerResponse (see the file comment).
    options.onRequest(req as IncomingMessage, res as unknown as ServerResponse);
  });

  const sessions = new Set<ServerHttp2Session>();
  const idleMs = options.http2?.sessionIdleTimeoutMs ?? 0;
  h2.on('session', (s: ServerHttp2Session) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
    if (idleMs > 0) closeWhenIdle(s, idleMs);
  });
  h2.on('sessionError', (err: Error) => log.debug({ err: err.message }, 'http2 session error'));
  h2.on('tlsClientError', (err: Error) => log.debug({ err: err.message }, 'tls handshake failed'));

  const listeners = new Set<(outcome: ReloadOutcome) => void>();
  const reload = async (): Promise<ReloadOutcome> => {
    let next: { cert: Buffer; key: Buffer };
    try {
      next = { cert: await readFile(files.certFile), key: await readFile(files.keyFile) };
    } catch (err) {
      return { ok: false, error: `cannot read: ${(err as Error).message}` };
    }
    if (next.cert.equals(current.cert) && next.key.equals(current.key)) return { ok: true };
    try {
      // Validates the pair first: a half-written update (new cert, old key) throws here and
      // the old pair stays in place until the next change completes it.
      createSecureContext(next);
      h2.setSecureContext(next);
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
    current = next;
    log.info({ certFile: files.certFile }, 'tls certificate reloaded');
    return { ok: true };
  };

  // Watch the directories, not the files: tools replace certificates by rename (a new inode
  // a file watch would not follow), and Kubernetes swaps a `..data` symlink beside them.
  // Any event in a watched directory triggers a (debounced) reload; reload() compares bytes,
  // so unrelated events cost two small reads.
  let timer: NodeJS.Timeout | undefined;
  const schedule = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      reload().then((outcome) => {
        if (!outcome.ok) log.warn({ certFile: files.certFile, keyFile: files.keyFile, error: outcome.error }, 'tls reload failed; keeping the current certificate');
        for (const l of listeners) l(outcome);
      }, (err: unknown) => log.error({ err }, 'tls reload threw'));
    }, RELOAD_DEBOUNCE_MS);
    timer.unref();
  };
  const watchers: FSWatcher[] = [];
  const wanted = new Set([basename(files.certFile), basename(files.keyFile)]);
  for (const dir of new Set([dirname(resolve(files.certFile)), dirname(resolve(files.keyFile))])) {
    try {
      const w = watch(dir, { persistent: false }, (_event, name) => {
        // name may be null on some platforms; '..data' is the Kubernetes secret swap.
        if (name === null || wanted.has(name) || name.startsWith('..')) schedule();
      });
      w.on('error', (err: Error) => log.warn({ dir, err: err.message }, 'tls: watching the certificate directory failed'));
      watchers.push(w);
    } catch (err) {
      log.warn({ dir, err: (err as Error).message }, 'tls: cannot watch the certificate directory; reloads need a restart');
    }
  }

  return {
    // See the comment on TlsFront.server.
    server: h2 as unknown as Server,
    reload,
    onReload(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    drain() {
      for (const s of sessions) if (!s.closed && !s.destroyed) s.close();
    },
    close() {
      clearTimeout(timer);
      for (const w of watchers) w.close();
    },
  };
}
