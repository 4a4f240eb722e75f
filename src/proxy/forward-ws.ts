/**
 * WebSocket forwarding (RFC 6455) through the same pipeline as every request:
 * handshake check → route → identify → authorize → Origin allow-list → select instance →
 * hold (bounded by the hold timeout) → upstream handshake → tunnel.
 *
 * The proxy does not speak WebSocket frames: once the backend has answered 101 it splices
 * the two TCP streams, so pings, pongs, close codes and extensions (permessage-deflate)
 * pass through untouched, and backpressure is TCP's own (`pipe` pauses the faster side).
 * The tunnel opens only after the backend's 101; any other answer is passed back to the
 * client as an ordinary response and the connection is closed. Errors on either socket
 * destroy both; nothing here may throw into the event loop.
 *
 * WebSocket over HTTP/2 (RFC 8441, extended CONNECT) is not offered: the HTTP/2 server does
 * not announce SETTINGS_ENABLE_CONNECT_PROTOCOL, so browsers open WebSockets over an
 * HTTP/1.1 connection (ALPN `http/1.1`), which reaches this code.
 */
import type { IncomingMessage } from 'node:http';
import { http, https } from './http-modules.ts';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { SmartProxyError } from '../core/errors.ts';
import type { Logger } from '../core/ports.ts';
import type { Instance, ResourceManager, StartRequester } from '../core/resource-manager.ts';
import { normalizeOrigin } from './cors.ts';
import { DEFAULT_BACKEND_TLS, tlsConnectOptions, type BackendTls } from './backend-tls.ts';
import { errorResponseBytes, problemOf, toSmartProxyError } from './error-response.ts';
import { downstreamHeaders } from './headers.ts';
import { UpgradeRecord, type RequestObserver } from './observer.ts';
import { joinUpstreamPath, type ParsedTarget } from './route.ts';
import type { Identity, RoutedResource } from './resource-types.ts';

/** What the pipeline's first steps (route → identify → authorize) established for a request. */
export interface Admission {
  readonly route: ParsedTarget;
  readonly resource: RoutedResource;
  readonly identity: Identity;
  /** The groups the request acts with (they choose the instance). */
  readonly acting: readonly string[];
}

/** The parts of the HTTP pipeline that upgrades share with ordinary requests. */
export interface UpgradePipeline {
  /** Route, identify, authorize; throws SmartProxyError. No side effect. */
  admit(req: IncomingMessage): Promise<Admission>;
  /** The request's headers as forwarded (hop-by-hop removed, X-Forwarded-* and the verified identity set). */
  forwardHeaders(req: IncomingMessage, admission: Admission): string[];
  readonly manager: ResourceManager;
  readonly logger: Logger;
  readonly connectTimeoutMs: number;
  /** Longest wait for the backend's answer to the upgrade request. */
  readonly handshakeTimeoutMs: number;
  /** Metrics and the access log; absent: no record is kept. */
  readonly observer?: RequestObserver | undefined;
  /**
   * Writes a refusal to the raw socket, then drains what the client still sends within the
   * linger bounds (linger.ts answerRaw); absent: the socket is ended and destroyed 5 s later.
   */
  readonly answerRaw?: ((socket: Socket, answer: string) => void) | undefined;
}

/** What one upgrade's answer carries besides the backend's: the record, a renewed session. */
interface UpgradeContext {
  readonly record: UpgradeRecord | undefined;
  /** Set-Cookie values from identify (a renewed sign-in session: sliding expiry). */
  cookies: readonly string[] | undefined;
  /** The client socket's bytesWritten at the end of the answer's head. */
  outBase: number;
}

/** Retries of the first handshake after readiness when the connection is refused (as forward-http). */
const FRESH_RETRY_DELAYS_MS = [10, 30, 90];
/** After one side of a tunnel closed, the other gets this long to flush before it is destroyed. */
const CLOSE_GRACE_MS = 5_000;
/** 16 random bytes, base64 (RFC 6455 §4.1). */
const WS_KEY_RE = /^[A-Za-z0-9+/]{22}==$/;

function tokens(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value.join(',') : value).split(',').map((t) => t.trim().toLowerCase());
}

/**
 * Does this request ask for a WebSocket? Only those reach the upgrade handler; any other
 * `Upgrade` (h2c, TLS) is ignored as RFC 9110 §7.8 allows, and the request is served as
 * ordinary HTTP (the header is hop-by-hop and not forwarded).
 */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return tokens(req.headers.upgrade).includes('websocket');
}

/** The RFC 6455 §4.2.1 checks a proxy can make without answering the handshake itself. */
export function handshakeProblem(req: IncomingMessage): SmartProxyError | undefined {
  const reason = req.method !== 'GET' ? `method ${req.method ?? '?'} (must be GET)`
    : req.httpVersion !== '1.1' ? `HTTP/${req.httpVersion} (must be HTTP/1.1)`
    : !tokens(req.headers.connection).includes('upgrade') ? 'Connection does not list "upgrade"'
    : req.headers['sec-websocket-version'] !== '13' ? 'Sec-WebSocket-Version is not 13'
    : !WS_KEY_RE.test(req.headers['sec-websocket-key'] ?? '') ? 'Sec-WebSocket-Key is missing or not 16 bytes in base64'
    : undefined;
  return reason === undefined ? undefined : new SmartProxyError('SP_WS_BAD_UPGRADE', `bad WebSocket handshake: ${reason}`, { data: { reason } });
}

/**
 * The allow-list guards browsers against cross-site WebSocket hijacking: a browser always
 * sends `Origin` and a page cannot forge it. A handshake without `Origin` comes from a
 * non-browser client, which could send any Origin anyway, so it is let through (identity
 * and groups still apply). No list configured: every origin is allowed.
 */
export function originAllowed(origin: string | undefined, allowed: readonly string[] | undefined): boolean {
  if (allowed === undefined || origin === undefined) return true;
  const o = normalizeOrigin(origin);
  return allowed.some((a) => a === '*' || normalizeOrigin(a) === o);
}

type HandshakeOutcome = 'opened' | 'unreachable' | 'gone';

class ClientGone extends Error {
  constructor() {
    super('client closed the connection');
  }
}

export class WebSocketForwarder {
  readonly #p: UpgradePipeline;
  readonly #tunnels = new Set<{ readonly client: Socket; readonly upstream: Socket }>();
  /** Per client socket of an upgrade in progress or tunnelled. */
  readonly #contexts = new WeakMap<Socket, UpgradeContext>();

  constructor(pipelineSteps: UpgradePipeline) {
    this.#p = pipelineSteps;
  }

  /** Tunnels open right now. */
  get openTunnels(): number {
    return this.#tunnels.size;
  }

  /**
   * Ends every tunnel (FIN both ways). A WebSocket has no natural end, so on shutdown
   * waiting for tunnels to finish would only hold the drain until its timeout; clients see
   * the connection close and reconnect (to another replica, or after the restart).
   */
  closeAll(): void {
    for (const t of this.#tunnels) {
      t.client.destroySoon();
      t.upstream.destroySoon();
    }
  }

  /** The server's `upgrade` listener. Never throws; every failure is answered or closes the socket. */
  handleUpgrade(req: IncomingMessage, duplex: Duplex, head: Buffer): void {
    // 'upgrade' hands over a net.Socket (or a TLSSocket behind TLS).
    const socket = duplex as Socket;
    // Before anything else: a reset must never become an unhandled 'error'.
    socket.on('error', (err) => {
      this.#p.logger.debug({ err: err.message, url: req.url }, 'websocket client socket error');
      socket.destroy();
    });
    const observer = this.#p.observer;
    const record = observer === undefined ? undefined : new UpgradeRecord();
    const context: UpgradeContext = { record, cookies: undefined, outBase: 0 };
    this.#contexts.set(socket, context);
    if (observer !== undefined && record !== undefined) {
      // What the socket had read so far is the handshake request, plus `head` (already frames).
      const readBefore = socket.bytesRead - head.length;
      // The client's connection closing ends the upgrade, whichever way it went: answered,
      // tunnelled (its lifetime is the duration), or left before any answer.
      socket.once('close', () => {
        record.bytesIn = Math.max(0, socket.bytesRead - readBefore);
        record.bytesOut = record.status === undefined ? 0 : Math.max(0, socket.bytesWritten - context.outBase);
        observer.upgraded(req, record);
      });
    }
    this.#run(req, socket, head).catch((err: unknown) => this.#refuse(req, socket, err));
  }

  async #run(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const bad = handshakeProblem(req);
    if (bad !== undefined) throw bad;
    const admission = await this.#p.admit(req);
    // A client that left during identify is gone: no start, no handshake to a backend.
    if (socket.destroyed) return;
    const { route, resource, identity, acting } = admission;
    const context = this.#contexts.get(socket);
    if (context !== undefined) {
      context.cookies = identity.responseCookies?.filter((c) => c !== '');
      if (context.record !== undefined) {
        context.record.resourceId = resource.runtime.id;
        context.record.user = identity.user;
      }
    }
    if (!originAllowed(req.headers.origin, resource.websocket?.allowedOrigins)) {
      throw new SmartProxyError('SP_WS_ORIGIN_DENIED', `origin "${req.headers.origin?.slice(0, 200) ?? ''}" may not open WebSockets to this resource`, {
        data: { resource: resource.runtime.id },
      });
    }
    const manager = this.#p.manager;
    const inst = manager.selectInstance(resource.runtime, acting, identity.user);
    manager.touch(inst);
    const headers = this.#p.forwardHeaders(req, admission);
    // Upgrade and Connection are hop-by-hop and were dropped; this hop asks for the same.
    headers.push('connection', 'Upgrade', 'upgrade', 'websocket');
    // As in handle(): behind the release ramp a newcomer queues instead of adding to the flood.
    let endpoint = inst.openEndpoint;
    // Who the start limits count a start for (src/access/limits.ts).
    if (endpoint !== undefined && context?.record !== undefined) context.record.warm = true;
    const coldSince = endpoint === undefined && inst.status !== 'ready' ? performance.now() : -1;
    endpoint ??= await this.#hold(socket, inst, resource, { user: identity.user, groups: acting, actor: identity });
    if (coldSince >= 0 && context?.record !== undefined) context.record.wokeMs = Math.round(performance.now() - coldSince);
    // The client may have left while the hold resolved: nothing of it reaches the backend.
    if (endpoint === undefined || socket.destroyed) return;
    await this.#connect(req, socket, head, inst, route, headers, endpoint, resource.backendTls);
  }

  /** Waits for `inst` like any held request; undefined if the client left meanwhile. */
  async #hold(socket: Socket, inst: Instance, resource: RoutedResource, requester?: StartRequester): Promise<string | undefined> {
    if (socket.destroyed) return undefined;
    const ac = new AbortController();
    const onClose = (): void => ac.abort(new ClientGone());
    socket.once('close', onClose);
    try {
      return await this.#p.manager.waitUntilReady(inst, { signal: ac.signal, timeoutMs: resource.holdTimeoutMs, requester });
    } catch (err) {
      if (err instanceof ClientGone) return undefined;
      throw err;
    } finally {
      socket.off('close', onClose);
    }
  }

  async #connect(req: IncomingMessage, socket: Socket, head: Buffer, inst: Instance, route: ParsedTarget, headers: string[], firstEndpoint: string, tls?: BackendTls): Promise<void> {
    const manager = this.#p.manager;
    // An open tunnel is activity: the idle reaper leaves the instance alone while it lasts.
    manager.connectionBegun(inst);
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      manager.connectionEnded(inst);
      manager.touch(inst);
    };
    let owned = false;
    try {
      let freshRetries = 0;
      for (;;) {
        const outcome = await this.#handshake(socket, head, firstEndpoint, route, headers, end, tls);
        if (outcome === 'opened') {
          owned = true;
          manager.forwardDone(inst);
          return;
        }
        if (outcome === 'gone') return;
        const freshDelay = FRESH_RETRY_DELAYS_MS[freshRetries];
        if (inst.freshlyReady && freshDelay !== undefined) {
          freshRetries++;
          await delay(freshDelay);
          if (socket.destroyed) return;
          continue;
        }
        manager.reportUnreachable(inst, firstEndpoint, 'connection refused for a WebSocket handshake');
        throw new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', 'the backend refused the WebSocket connection', { data: { resource: inst.resource.id } });
      }
    } finally {
      // Once a tunnel or a passed-back response owns the sockets, their close calls end().
      if (!owned) end();
    }
  }

  /** Sends the upgrade request upstream; on 101 builds the tunnel, on anything else passes it back. */
  #handshake(socket: Socket, head: Buffer, endpoint: string, route: ParsedTarget, headers: string[], end: () => void, tls: BackendTls = DEFAULT_BACKEND_TLS): Promise<HandshakeOutcome> {
    return new Promise((resolve, reject) => {
      let url: URL;
      try {
        url = new URL(endpoint);
      } catch {
        reject(new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', 'the backend endpoint is not a URL'));
        return;
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        reject(new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', `WebSocket forwarding needs an http(s):// backend, not ${url.protocol}`));
        return;
      }
      const secure = url.protocol === 'https:';
      const options = {
        host: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
        port: url.port === '' ? (secure ? 443 : 80) : Number(url.port),
        method: 'GET',
        path: joinUpstreamPath(url.pathname === '/' ? '' : url.pathname, route.path, route.query),
        headers,
        // A fresh connection per tunnel: an upgraded socket never goes back to a pool.
        agent: false as const,
      };
      // wss to an https: backend, with the resource's CA, SNI and verification settings.
      const upReq = secure ? https.request({ ...options, ...tlsConnectOptions(tls, url.hostname) }) : http.request(options);
      let connectTimer: NodeJS.Timeout | undefined;
      const onClientClose = (): void => {
        upReq.destroy();
      };
      const cleanup = (): void => {
        clearTimeout(connectTimer);
        socket.off('close', onClientClose);
        upReq.setTimeout(0);
      };
      socket.once('close', onClientClose);
      upReq.once('socket', (s: Socket) => {
        if (!s.connecting) return;
        connectTimer = setTimeout(() => {
          const err = Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' });
          upReq.destroy(err);
        }, this.#p.connectTimeoutMs);
        s.once('connect', () => clearTimeout(connectTimer));
      });
      upReq.setTimeout(this.#p.handshakeTimeoutMs, () => {
        upReq.destroy(new SmartProxyError('SP_UPSTREAM_TIMEOUT', 'the backend did not answer the WebSocket handshake in time'));
      });
      upReq.once('upgrade', (upRes: IncomingMessage, upSocket: Duplex, upHead: Buffer) => {
        cleanup();
        if (socket.destroyed) {
          upSocket.destroy();
          resolve('gone');
          return;
        }
        this.#tunnel(socket, upSocket as Socket, upRes, head, upHead, end);
        resolve('opened');
      });
      upReq.once('response', (upRes: IncomingMessage) => {
        cleanup();
        if (socket.destroyed) {
          upRes.destroy();
          resolve('gone');
          return;
        }
        this.#passBack(socket, upRes, end);
        resolve('opened');
      });
      upReq.once('error', (err: NodeJS.ErrnoException) => {
        cleanup();
        if (socket.destroyed) {
          resolve('gone');
          return;
        }
        if (err instanceof SmartProxyError) {
          reject(err);
          return;
        }
        // Only a failed connect proves nothing reached the backend.
        const code = err.code ?? '';
        if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH') {
          resolve('unreachable');
          return;
        }
        reject(new SmartProxyError(code === 'ETIMEDOUT' ? 'SP_UPSTREAM_TIMEOUT' : 'SP_UPSTREAM_UNAVAILABLE',
          `the backend failed the WebSocket handshake (${code || err.message})`, { data: { cause: code } }));
      });
      upReq.end();
    });
  }

  /** Splices client and backend after the backend's 101. */
  #tunnel(client: Socket, upstream: Socket, upRes: IncomingMessage, clientHead: Buffer, upHead: Buffer, end: () => void): void {
    const tunnel = { client, upstream };
    this.#tunnels.add(tunnel);
    // The backend's 101 as it sent it (Sec-WebSocket-Accept/-Protocol/-Extensions included);
    // only framing headers that mean nothing on a 101 are dropped.
    let responseHead = 'HTTP/1.1 101 Switching Protocols\r\n';
    const raw = upRes.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = (raw[i] as string).toLowerCase();
      if (name === 'transfer-encoding' || name === 'content-length' || name === 'keep-alive' || name === 'proxy-connection') continue;
      responseHead += `${raw[i] as string}: ${raw[i + 1] as string}\r\n`;
    }
    responseHead += this.#cookieLines(client);
    this.#answered(client, 101, `${responseHead}\r\n`);
    client.write(`${responseHead}\r\n`);
    if (upHead.length > 0) client.write(upHead);
    if (clientHead.length > 0) upstream.write(clientHead);
    client.setTimeout(0);
    upstream.setTimeout(0);
    client.setNoDelay(true);
    upstream.setNoDelay(true);

    const destroyBoth = (): void => {
      client.destroy();
      upstream.destroy();
    };
    upstream.on('error', (err) => {
      this.#p.logger.debug({ err: err.message }, 'websocket backend socket error');
      destroyBoth();
    });
    client.on('error', destroyBoth);
    let closed = 0;
    const onClose = (other: Socket) => (): void => {
      // A clean close on one side: let the other flush what it has (a close frame), then go.
      other.destroySoon();
      setTimeout(() => other.destroy(), CLOSE_GRACE_MS).unref();
      if (++closed === 2) {
        this.#tunnels.delete(tunnel);
        end();
      }
    };
    client.once('close', onClose(upstream));
    upstream.once('close', onClose(client));
    // Backpressure both ways: pipe pauses the source while the destination's buffer is full.
    upstream.pipe(client);
    client.pipe(upstream);
  }

  /** A non-101 answer goes back as an ordinary response; the connection closes after it. */
  #passBack(client: Socket, upRes: IncomingMessage, end: () => void): void {
    const status = upRes.statusCode ?? 502;
    const message = (upRes.statusMessage ?? '').replace(/[^\t\x20-\x7e]/g, '');
    const flat = downstreamHeaders(upRes.headers);
    let responseHead = `HTTP/1.1 ${status} ${message}\r\n`;
    for (let i = 0; i < flat.length; i += 2) responseHead += `${flat[i] as string}: ${flat[i + 1] as string}\r\n`;
    responseHead += this.#cookieLines(client);
    // Without a content-length the body is delimited by the close (RFC 9112 §6.3).
    responseHead += 'connection: close\r\n\r\n';
    this.#answered(client, status, responseHead);
    client.write(responseHead);
    pipeline(upRes, client, () => {
      upRes.destroy();
      client.destroySoon();
      end();
    });
  }

  /**
   * Set-Cookie lines for the answer: a sign-in session renewed by identify (sliding expiry)
   * reaches the browser on the 101 as on any response (RFC 6455 §4.1 lets the handshake's
   * answer set cookies). Values come from the session code, never from the client.
   */
  #cookieLines(client: Socket): string {
    const cookies = this.#contexts.get(client)?.cookies;
    if (cookies === undefined) return '';
    let lines = '';
    for (const c of cookies) lines += `set-cookie: ${c}\r\n`;
    return lines;
  }

  /** Notes the status answered and where the answer's body starts (bytes to the client count from there). */
  #answered(client: Socket, status: number, head: string): void {
    const context = this.#contexts.get(client);
    const record = context?.record;
    if (context === undefined || record === undefined || record.status !== undefined) return;
    record.status = status;
    record.answeredAt = performance.now();
    context.outBase = client.bytesWritten + Buffer.byteLength(head);
  }

  /** Answers a refused upgrade on the raw socket, then closes it. */
  #refuse(req: IncomingMessage, socket: Socket, err: unknown): void {
    if (!(err instanceof SmartProxyError) || err.code === 'SP_INTERNAL') {
      this.#p.logger.error({ err, url: req.url }, 'websocket upgrade failed unexpectedly');
    }
    if (socket.destroyed) return;
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const answer = errorResponseBytes(req, err);
    this.#answered(socket, problemOf(toSmartProxyError(err)).status, answer.slice(0, answer.indexOf('\r\n\r\n') + 4));
    // A client may send more after its handshake (frames, or the body of a POST that asked to
    // upgrade): unread, it would turn the close into a reset that can overtake the refusal.
    if (this.#p.answerRaw !== undefined) {
      this.#p.answerRaw(socket, answer);
      return;
    }
    socket.end(answer);
    // Do not wait for the client to close its side.
    setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
  }
}
