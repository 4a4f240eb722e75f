/**
 * The data plane: `node:http` in front, undici to the backends. One request goes through
 * the steps in `handle`, in this order, and nothing with a side effect (a provider call, a
 * held slot, a body read) happens before route → identify → authorize have passed
 * (an unauthorized caller costs no start, no slot and no buffer).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { http } from './http-modules.ts';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import { systemClock } from '../core/clock.ts';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock, Logger, TimerHandle } from '../core/ports.ts';
import type { HeldRequest, HoldTarget, Instance, ResourceManager, StartRequester } from '../core/resource-manager.ts';
import { ClientGone, expectContinue, onClientFin, requestGone, sendContinue, waitOver, waitsBeforeForward } from './client-state.ts';
import { applyCors, isPreflight } from './cors.ts';
import { sendError } from './error-response.ts';
import { UpstreamPools, type ForwardOutcome, type UpstreamOptions } from './forward-http.ts';
import { WebSocketForwarder, isWebSocketUpgrade, type Admission } from './forward-ws.ts';
import { HeldBytesBudget } from './held-bytes.ts';
import { Lingering, type LingerOptions } from './linger.ts';
import { answerClientError, type ParserError } from './client-error.ts';
import { fieldProblem, TrustedProxies, upstreamHeaders } from './headers.ts';
import type { WaitPlan } from './prefer.ts';
import { isReservedPath } from './progress-sse.ts';
import { RequestRecord, type RequestObserver } from './observer.ts';
import { absoluteToOriginForm } from './absolute-form.ts';
import { joinUpstreamPath, parseTarget, type ParsedTarget } from './route.ts';
import { createTlsFront, type TlsFiles, type TlsFront } from './tls.ts';
import { WaitingRoom } from './waiting-room.ts';
import type { Identity, RoutedResource } from './resource-types.ts';

export type { Identity, RoutedResource } from './resource-types.ts';

/**
 * The identify step: turns a request into an identity, or an error (401). This issue's
 * default trusts the URL's groups, as the original did; the access layer replaces it with
 * verified identities.
 */
export type Identify = (req: IncomingMessage, route: ParsedTarget, resource: RoutedResource) => Identity | SmartProxyError | Promise<Identity | SmartProxyError>;

/**
 * Answers a request for a resource id that is not configured. The default is a plain 404;
 * the access layer answers exactly as it would for a resource the caller may not see, so
 * the two cannot be told apart.
 */
export type UnknownResource = (req: IncomingMessage, route: ParsedTarget) => SmartProxyError | Promise<SmartProxyError>;

/**
 * What the backend learns of the caller: headers to add (already safe to send), and the
 * folded names (see foldName) to drop from the client's request for this resource.
 */
export type BackendHeaders = (identity: Identity, acting: readonly string[], resource: RoutedResource) => {
  readonly extra: ReadonlyArray<readonly [string, string]>;
  readonly strip: ReadonlySet<string>;
  /** Cookies (by name) the backend must not see: the proxy's own sessions. */
  readonly dropCookies?: ((name: string) => boolean) | undefined;
};

/** The one "not found" answer, for unknown resources and for those the caller may not see. */
export function resourceNotFound(resourceId: string): SmartProxyError {
  return new SmartProxyError('SP_ROUTE_NOT_FOUND', `no resource "${resourceId}"`, { data: { resource: resourceId } });
}

/**
 * The authorize step: decides which groups the request acts with (the instance is chosen
 * by them), or refuses with an error (403). Runs before any side effect.
 */
export type Authorize = (identity: Identity, route: ParsedTarget, resource: RoutedResource) => readonly string[] | SmartProxyError;

export const urlGroupsIdentity: Identify = (_req, route) => ({ user: undefined, groups: route.groups });
export const allowActingGroups: Authorize = (identity) => identity.groups;

export interface ProxyServerOptions {
  readonly manager: ResourceManager;
  readonly resources: ReadonlyMap<string, RoutedResource>;
  readonly logger: Logger;
  readonly upstream: UpstreamOptions;
  readonly trustedProxies: readonly string[];
  readonly headersTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  readonly maxHeaderBytes: number;
  readonly identify?: Identify;
  readonly authorize?: Authorize;
  readonly unknownResource?: UnknownResource;
  readonly backendHeaders?: BackendHeaders;
  /** Folded header names never passed from clients to backends (identity headers). */
  readonly protectedHeaders?: readonly string[];
  /** Clock of the waiting page's elapsed times and ETAs (the manager's clock). */
  readonly clock?: Clock;
  /** Terminate TLS (HTTP/2 + HTTP/1.1 by ALPN) with these files; absent: plain HTTP/1.1. */
  readonly tls?: TlsFiles | undefined;
  /** The sign-in routes (OIDC) under their reserved prefix, served before anything else. */
  readonly signIn?: { handles(url: string | undefined): boolean; handle(req: IncomingMessage, res: ServerResponse): Promise<void> } | undefined;
  /** Global budget of announced body bytes of held requests (see held-bytes.ts). */
  readonly maxHeldBytes?: number;
  /** What a held body of unknown length counts against maxHeldBytes. */
  readonly heldBodyEstimateBytes?: number;
  /** Largest announced body of one held request; the share of one client address. */
  readonly maxHeldBytesPerRequest?: number;
  readonly maxHeldBytesPerClient?: number;
  /** Longest client silence while its body is forwarded (0 = none). */
  readonly bodyIdleTimeoutMs?: number;
  /** TLS and HTTP/2 bounds (tls.ts). */
  readonly tlsHandshakeTimeoutMs?: number;
  readonly http2SessionIdleTimeoutMs?: number;
  readonly http2MaxConcurrentStreams?: number;
  /** After an instance leaves ready, pools of endpoints no instance uses are closed this much later. */
  readonly poolSweepDelayMs?: number;
  /** Metrics and the access log (observer.ts); absent: no per-request record at all. */
  readonly observer?: RequestObserver | undefined;
  /** Response header naming the time a cold-started request waited (ms); absent: none. */
  readonly coldStartHeader?: string | undefined;
  /** Bounds of draining the unread body of a refused request (linger.ts). */
  readonly linger?: Partial<LingerOptions> | undefined;
}

type HoldPlan = Extract<WaitPlan, { kind: 'hold' }>;

/** Retries of the first forward after readiness when the connection is refused. */
const FRESH_RETRY_DELAYS_MS = [10, 30, 90];
/** How often one request may go back to waiting after its backend vanished. */
const MAX_REHOLDS = 2;

/** The end of a HeldForward's hold, into the pipeline (set by ProxyServer, which owns it). */
let releaseHeld: (server: ProxyServer, h: HeldForward, endpoint: string | undefined, err: Error | undefined) => void;

export class ProxyServer {
  readonly server: Server;
  readonly pools: UpstreamPools;
  readonly #manager: ResourceManager;
  readonly #resources: ReadonlyMap<string, RoutedResource>;
  readonly #log: Logger;
  readonly #trusted: TrustedProxies;
  readonly #identify: Identify;
  readonly #authorize: Authorize;
  readonly #unknownResource: UnknownResource | undefined;
  readonly #backendHeaders: BackendHeaders | undefined;
  readonly #protected: ReadonlySet<string>;
  readonly #sockets = new Set<Socket>();
  /** One close listener for every tracked socket (`this` is the socket), not one closure each. */
  readonly #forget: (this: Socket) => void;
  readonly #heldBytes: HeldBytesBudget;
  readonly #tls: TlsFront | undefined;
  readonly ws: WebSocketForwarder;
  readonly #waiting: WaitingRoom;
  readonly #observer: RequestObserver | undefined;
  readonly #coldStartHeader: string | undefined;
  readonly #signIn: ProxyServerOptions['signIn'];
  /** Refused requests' unread bodies, drained within bounds (linger.ts). */
  readonly lingering: Lingering;
  #draining = false;

  constructor(options: ProxyServerOptions) {
    this.#manager = options.manager;
    this.#resources = options.resources;
    this.#log = options.logger;
    this.#trusted = new TrustedProxies(options.trustedProxies);
    this.#identify = options.identify ?? urlGroupsIdentity;
    this.#authorize = options.authorize ?? allowActingGroups;
    this.#unknownResource = options.unknownResource;
    this.#backendHeaders = options.backendHeaders;
    this.#signIn = options.signIn;
    const sockets = this.#sockets;
    this.#forget = function (this: Socket): void {
      sockets.delete(this);
    };
    this.#protected = new Set(options.protectedHeaders ?? ['x-forwarded-user', 'x-forwarded-groups']);
    const log = options.logger;
    this.pools = new UpstreamPools({
      ...options.upstream,
      bodyIdleTimeoutMs: options.bodyIdleTimeoutMs ?? 60_000,
      // nginx logs the same ("upstream prematurely closed connection while reading upstream").
      onBrokenAnswer: (origin, err) => log.warn({ backend: origin, code: (err as { code?: string }).code ?? err.name, reason: err.message }, 'backend broke off its answer after the head; the client connection was cut'),
    });
    this.#sweepPoolsOnStop(options.manager, options.clock ?? systemClock, options.poolSweepDelayMs ?? 1_000);
    this.#observer = options.observer;
    this.#coldStartHeader = options.coldStartHeader;
    const observer = options.observer;
    this.lingering = new Lingering(options.linger, observer?.lingered === undefined ? undefined : (outcome, bytes) => observer.lingered?.(outcome, bytes), options.clock);
    this.#waiting = new WaitingRoom({ manager: options.manager, clock: options.clock ?? systemClock });
    this.#heldBytes = new HeldBytesBudget({
      maxHeldBytes: options.maxHeldBytes ?? Number.MAX_SAFE_INTEGER,
      heldBodyEstimateBytes: options.heldBodyEstimateBytes ?? 1024 * 1024,
      maxHeldBytesPerRequest: options.maxHeldBytesPerRequest,
      maxHeldBytesPerClient: options.maxHeldBytesPerClient,
    });
    const http1 = {
      // Held requests may wait for a whole boot: Node's own request timeout must not cut them.
      requestTimeout: 0,
      headersTimeout: options.headersTimeoutMs,
      // Node checks the head timeout only this often (30 s by default): a slowloris would keep
      // its connection up to twice headersTimeoutMs. A tenth of it bounds that at 1.1×.
      connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.round(options.headersTimeoutMs / 10))),
      keepAliveTimeout: options.keepAliveTimeoutMs,
      maxHeaderSize: options.maxHeaderBytes,
    };
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
      const observer = this.#observer;
      if (observer === undefined) {
        this.#serve(req, res, undefined);
        return;
      }
      // 'close' comes after the last byte or when the client left: either way, once.
      const record = new RequestRecord();
      // `on`, not `once`: a response closes once, and once's wrapper costs on every request.
      res.on('close', () => observer.finished(req, res, record));
      this.#serve(req, res, record);
    };
    this.#tls = options.tls === undefined ? undefined : createTlsFront({
      files: options.tls, http1, onRequest, logger: options.logger,
      handshakeTimeoutMs: options.tlsHandshakeTimeoutMs ?? 10_000,
      http2: { sessionIdleTimeoutMs: options.http2SessionIdleTimeoutMs ?? 30_000, maxConcurrentStreams: options.http2MaxConcurrentStreams ?? 128 },
    });
    this.server = this.#tls?.server ?? http.createServer(http1, onRequest);
    // `Expect: 100-continue` (HTTP/1.1 and HTTP/2): Node would answer 100 at once; the
    // pipeline answers it only when the body is about to be forwarded (client-state.ts).
    this.server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      expectContinue(res);
      onRequest(req, res);
    });
    // Any other expectation (RFC 9110 §10.1.1 defines only 100-continue): 417 before anything is
    // woken or forwarded, its body drained within bounds (Node's own answer keeps the
    // connection and reads any amount of body to reuse it).
    this.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
      const observer = this.#observer;
      if (observer !== undefined) {
        const record = new RequestRecord();
        res.on('close', () => observer.finished(req, res, record));
      }
      const expect = (req.headers.expect ?? '').replace(/[^\x20-\x7e]/g, '?').slice(0, 64);
      this.#fail(req, res, new SmartProxyError('SP_EXPECTATION_FAILED', `expectation "${expect}" is not supported: only 100-continue is`));
    });
    // WebSocket upgrades go through the same steps (forward-ws.ts); other Upgrade values are
    // ignored and the request is served as plain HTTP.
    this.ws = new WebSocketForwarder({
      admit: (req) => this.admit(req),
      forwardHeaders: (req, admission) => this.#forwardHeaders(req, admission),
      manager: this.#manager,
      logger: this.#log,
      connectTimeoutMs: options.upstream.connectTimeoutMs,
      handshakeTimeoutMs: options.upstream.headersTimeoutMs,
      observer: this.#observer,
      answerRaw: (socket, answer) => this.lingering.answerRaw(socket, answer),
    });
    // Set as a property, not a constructor option: the HTTP/2 secure server ignores the option
    // but its HTTP/1 side reads the property, like the plain server (Node >= 24.9).
    (this.server as { shouldUpgradeCallback?: (req: IncomingMessage) => boolean }).shouldUpgradeCallback = isWebSocketUpgrade;
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.ws.handleUpgrade(req, socket, head));
    // The plain HTTP server keeps its own list of connections (closeAllConnections, in
    // close()): a connection costs no listener or set entry here, which a connection held
    // through a cold start would keep for the whole boot. The TLS front has no such list:
    // its connections are tracked here, with one listener shared by all of them.
    if (this.#tls !== undefined) this.server.on('connection', (socket: Socket) => this.#track(socket));
    else {
      // A client's FIN does not end the connection under an answer already under way: a client
      // that half-closes after its request still reads it (client-state.ts onClientFin). Node's
      // default ends the connection at once, which cut even a warm request's answer.
      (this.server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;
      this.server.on('connection', (socket: Socket) => socket.on('end', onClientFin));
    }
    // CONNECT has no place at a reverse proxy; answer instead of silently dropping.
    this.server.on('connect', (_req: IncomingMessage, socket: Socket | ServerResponse) => {
      // Over HTTP/2 (tls.ts) a CONNECT stream comes as (request, response), not a raw socket.
      if ('writeHead' in socket) {
        socket.writeHead(405, { 'content-length': '0' }).end();
        return;
      }
      // Node's list lets go of a socket handed over here; close() still ends it. Whatever the
      // client sends after the head is drained within the linger bounds: the socket closes
      // at the latest at their end, and an uploading client reads the 405, not a reset.
      this.#track(socket);
      this.lingering.answerRaw(socket, 'HTTP/1.1 405 Method Not Allowed\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    });
    // What Node's parser refused: 400/414/431/408, never inside or ahead of another answer,
    // then drained (client-error.ts).
    this.server.on('clientError', (err: ParserError, socket: Socket) => {
      this.#track(socket);
      answerClientError(err, socket, this.lingering);
    });
  }

  /** Sockets that close() must end besides the plain HTTP server's own list. */
  #track(socket: Socket): void {
    if (this.#sockets.has(socket)) return;
    this.#sockets.add(socket);
    socket.on('close', this.#forget);
  }

  listen(port: number, host: string): Promise<{ port: number; host: string }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        if (addr === null || typeof addr === 'string') reject(new Error('no address'));
        else resolve({ port: addr.port, host: addr.address });
      });
    });
  }

  /** Stops accepting; new requests on open connections get 503. */
  startDraining(): void {
    this.#draining = true;
    this.server.close();
    this.server.closeIdleConnections();
    this.#tls?.drain();
    this.ws.closeAll();
  }

  /** The TLS front, when TLS is configured (certificate reloads). */
  get tls(): TlsFront | undefined {
    return this.#tls;
  }

  /** Announced body bytes of held requests right now. */
  get heldBytes(): number {
    return this.#heldBytes.heldBytes;
  }

  /** Ends every connection and closes the upstream pools. */
  async close(): Promise<void> {
    this.startDraining();
    this.#tls?.close();
    this.#waiting.close();
    (this.server as { closeAllConnections?: () => void }).closeAllConnections?.();
    for (const s of this.#sockets) s.destroy();
    await this.pools.close();
  }

  /** One undici pool per endpoint in use, not per endpoint ever seen (see UpstreamPools.retainOnly). */
  #sweepPoolsOnStop(manager: ResourceManager, clock: Clock, delayMs: number): void {
    let pending: TimerHandle | undefined;
    manager.onEvent((e) => {
      if (e.type !== 'instance-changed' || e.instance.status === 'ready' || pending !== undefined) return;
      pending = clock.setTimeout(() => {
        pending = undefined;
        const inUse: string[] = [];
        for (const i of manager.allInstances()) if (i.endpoint !== undefined) inUse.push(i.endpoint);
        this.pools.retainOnly(inUse);
      }, delayMs);
    });
  }

  /** Runs `handle`; whatever it throws or rejects with is answered by #fail. */
  #serve(req: IncomingMessage, res: ServerResponse, record: RequestRecord | undefined): void {
    let pending: Promise<void> | undefined;
    try {
      pending = this.handle(req, res, record);
    } catch (err) {
      this.#fail(req, res, err);
      return;
    }
    pending?.catch((err: unknown) => this.#fail(req, res, err));
  }

  /**
   * The steps of one request, in order. Throws (or rejects with) the error to answer. Returns
   * a promise only when a step really waits (sign-in routes, the reserved endpoints, a slow
   * identify); a warm request runs without one, its forward ending in callbacks (#forward).
   */
  handle(req: IncomingMessage, res: ServerResponse, record?: RequestRecord): Promise<void> | undefined {
    if (this.#draining) {
      res.shouldKeepAlive = false;
      throw new SmartProxyError('SP_SHUTTING_DOWN', undefined, { retryAfterS: 1 });
    }
    // A TRACE answered by the backend echoes the request as the backend got it: with the
    // identity headers (and any credential) the proxy added, to a caller who may be a page
    // script (cross-site tracing). Refused before anything is woken, as nginx does; without
    // Allow, as nginx, because which methods the backend takes is not the proxy's to say.
    if (req.method === 'TRACE' || req.method === 'TRACK') throw new SmartProxyError('SP_ROUTE_METHOD_NOT_FORWARDED', `${req.method} is not forwarded`);
    const absolute = absoluteToOriginForm(req);
    if (absolute !== undefined) throw new SmartProxyError('SP_ROUTE_BAD_TARGET', `bad request target: ${absolute}`, { data: { reason: absolute } });
    if (this.#signIn?.handles(req.url) === true) return this.#signIn.handle(req, res);
    // The proxy's own status and progress endpoints, behind the same access steps.
    if (isReservedPath(req.url)) {
      waitsBeforeForward(res);
      return this.#waiting.serveReserved(req, res, async (r) => {
        const { inst } = await this.#admitInstance(req, r);
        if (requestGone(req)) throw new ClientGone();
        return inst;
      });
    }
    // 1. route: strict target parsing, then the resource table.
    const route = parseTarget(req.url);
    // A page on another origin: the resource's CORS policy answers its preflight before any
    // access step (a preflight never carries credentials) and labels every answer (cors.ts).
    // The policy first: `req.headers` is built on first use, which a public warm request
    // otherwise never pays for.
    const cors = this.#resources.get(route.resourceId)?.cors;
    if (cors !== undefined) {
      const origin = req.headers.origin;
      if (origin !== undefined) {
        // A preflight is answered here, before its body (browsers send none) is read: a hostile
        // one's body is drained within bounds, as any refused request's.
        if (isPreflight(req)) this.lingering.refused(req, res);
        if (applyCors(req, res, cors, origin)) return undefined;
      }
    }
    // 2. identify, 3. authorize (before any side effect), 4. select the instance. Waited for
    // only when a step really waits (a slow hash, a signature check): not on the warm path.
    const admitted = this.#admitRoute(req, route);
    if (admitted instanceof Promise) {
      waitsBeforeForward(res);
      return admitted.then((admission) => {
        waitOver(res);
        this.#admitted(req, res, route, admission, record);
      });
    }
    this.#admitted(req, res, route, admitted, record);
    return undefined;
  }

  /** Steps 4-6 of `handle` for an admitted request. */
  #admitted(req: IncomingMessage, res: ServerResponse, route: ParsedTarget, admission: Admission, record: RequestRecord | undefined): void {
    // A client that left during identify is gone everywhere: no start, no hold, no forward.
    if (requestGone(req)) return;
    const { resource } = admission;
    if (record !== undefined) {
      record.resourceId = resource.runtime.id;
      record.user = admission.identity.user;
    }
    const cookies = admission.identity.responseCookies?.filter((c) => c !== '');
    if (cookies !== undefined && cookies.length > 0) res.setHeader('set-cookie', cookies);
    const inst = this.#manager.selectInstance(resource.runtime, admission.acting, admission.identity.user);
    this.#manager.touch(inst);
    // A ready instance is forwarded at once, with no other call. While the release ramp
    // still holds requests for a fresh backend, a newcomer queues behind them instead of
    // adding to the flood (still no call: two fields in memory).
    const endpoint = inst.openEndpoint;
    if (endpoint !== undefined) {
      if (record !== undefined) record.warm = true;
    } else {
      // 5. await ready, as this client asked (waiting-room.ts): the waiting page, 202 at
      // once, or a hold on the local readiness broadcast (never on a provider call). A
      // ready instance behind the ramp is a short hold, never a waiting page.
      // Who a start is for: built here, since a warm request starts nothing.
      const requester = requesterOf(admission);
      const plan = this.#waiting.plan(req, resource.waiting, resource.holdTimeoutMs);
      if (plan.kind !== 'hold' && inst.status !== 'ready') {
        // Answered without its body: drained within bounds, or the connection closes.
        this.lingering.refused(req, res);
        this.#waiting.answerAtOnce(req, res, plan.kind, inst, route, resource.waiting, requester);
        return;
      }
      this.#holdThenForward(req, res, inst, admission, plan.kind === 'hold' ? plan : undefined, requester, record);
      return;
    }
    // 6. forward, with crash repair when the backend turns out to be gone.
    this.#forward(req, res, inst, resource, route, this.#forwardHeaders(req, admission), endpoint);
  }

  /**
   * Step 5 for a request that must wait, then step 6. Held requests are many and wait long,
   * so nothing waits on a promise: `handle` has returned, and the hold's end (HoldQueue)
   * calls back into the pipeline through the request's one HeldForward. What can be
   * recomputed (the parsed route, the forwarded headers) is built once it is released.
   */
  #holdThenForward(req: IncomingMessage, res: ServerResponse, inst: Instance, admission: Admission, plan: HoldPlan | undefined,
    requester: StartRequester, record: RequestRecord | undefined): void {
    const { resource } = admission;
    if (requestGone(req)) return;
    const releaseBytes = this.#reserveHeldBytes(req, resource);
    waitsBeforeForward(res);
    if (plan !== undefined) this.#waiting.holdBegins(res, plan);
    const h = new HeldForward(this, req, res, inst, admission, plan, record, releaseBytes);
    const outcome = this.#manager.hold(inst, { timeoutMs: plan?.holdMs ?? resource.holdTimeoutMs, requester }, h);
    if (typeof outcome === 'string') h.holdEnded(outcome, undefined);
    else if (outcome instanceof SmartProxyError) h.holdEnded(undefined, outcome);
    else if (outcome.pending) h.heldBy(outcome);
  }

  static {
    releaseHeld = (server, h, endpoint, err) => server.#released(h, endpoint, err);
  }

  /**
   * The end of `h`'s hold: forward it, answer its error, or nothing when its client left.
   * Called by the core (the release ramp, the deadline timer) in a loop over held requests:
   * whatever goes wrong here is this request's failure and never leaves this function.
   */
  #released(h: HeldForward, endpoint: string | undefined, err: Error | undefined): void {
    const { req, res, plan, inst, resource } = h;
    try {
      waitOver(res);
      h.releaseBytes();
      const waitedMs = performance.now() - h.since;
      const gone = err instanceof ClientGone;
      this.#observer?.held(resource.runtime.id, waitedMs, err === undefined ? 'ready' : gone ? 'client_gone' : 'failed');
      if (gone) return;
      const route = parseTarget(req.url);
      if (err !== undefined || endpoint === undefined) {
        const answer = plan === undefined || err === undefined ? err : this.#waiting.holdFailed(req, res, plan, inst, route, err);
        if (answer !== undefined) this.#fail(req, res, answer);
        return;
      }
      if (h.cold) {
        const wokeMs = Math.round(waitedMs);
        if (h.record !== undefined) h.record.wokeMs = wokeMs;
        if (this.#coldStartHeader !== undefined && !res.headersSent) res.setHeader(this.#coldStartHeader, String(wokeMs));
      }
      const headers = this.#forwardHeaders(req, { route, resource, identity: h.identity, acting: h.acting });
      this.#forward(req, res, inst, resource, route, headers, endpoint);
    } catch (e) {
      this.#fail(req, res, e);
    }
  }

  /**
   * Starts what a user who just signed in is coming back to, through the same steps as their
   * request will take (route, authorize, select): the boot runs while the browser is still
   * on its way. Any refusal is left for that request to meet.
   */
  startFor(target: string, identity: Identity): void {
    try {
      const route = parseTarget(target);
      const resource = this.#resources.get(route.resourceId);
      if (resource === undefined) return;
      const acting = this.#authorize(identity, route, resource);
      if (acting instanceof SmartProxyError) return;
      const inst = this.#manager.selectInstance(resource.runtime, acting, identity.user);
      this.#manager.touch(inst);
      if (inst.status !== 'ready') this.#manager.requestStart(inst, { user: identity.user, groups: acting, actor: identity });
    } catch (err) {
      if (!(err instanceof SmartProxyError)) this.#log.warn({ err }, 'early start after sign-in failed');
    }
  }

  /**
   * Route, identify, authorize, with no side effect: the first steps of a WebSocket upgrade
   * (forward-ws.ts), which then checks its Origin before selecting the instance.
   */
  async admit(req: IncomingMessage): Promise<Admission> {
    if (this.#draining) throw new SmartProxyError('SP_SHUTTING_DOWN', undefined, { retryAfterS: 1 });
    const absolute = absoluteToOriginForm(req);
    if (absolute !== undefined) throw new SmartProxyError('SP_ROUTE_BAD_TARGET', `bad request target: ${absolute}`, { data: { reason: absolute } });
    return await this.#admitRoute(req, parseTarget(req.url));
  }

  /** Steps 2-4 for a routed target: the resource, who asks, and the instance they act on. */
  async #admitInstance(req: IncomingMessage, route: ParsedTarget): Promise<{ resource: RoutedResource; inst: Instance }> {
    const { resource, identity, acting } = await this.#admitRoute(req, route);
    return { resource, inst: this.#manager.selectInstance(resource.runtime, acting, identity.user) };
  }

  /**
   * Steps 2-3 for a routed target: the resource, who asks, and the groups they act with.
   * Synchronous when identify is (throws its refusals); a promise only when identify waits.
   */
  #admitRoute(req: IncomingMessage, route: ParsedTarget): Admission | Promise<Admission> {
    // Two Host fields name no one server; a transfer coding we cannot pass on would change the
    // body: refused before anything is woken for the request.
    const bad = fieldProblem(req.rawHeaders);
    if (bad !== undefined) throw new SmartProxyError(bad.code, bad.detail);
    const resource = this.#resources.get(route.resourceId);
    if (resource === undefined) return this.#refuseUnknown(req, route);
    const identity = this.#identify(req, route, resource);
    return identity instanceof Promise
      ? identity.then((i) => this.#authorized(route, resource, i))
      : this.#authorized(route, resource, identity);
  }

  async #refuseUnknown(req: IncomingMessage, route: ParsedTarget): Promise<never> {
    throw await (this.#unknownResource?.(req, route) ?? resourceNotFound(route.resourceId));
  }

  #authorized(route: ParsedTarget, resource: RoutedResource, identity: Identity | SmartProxyError): Admission {
    if (identity instanceof SmartProxyError) throw identity;
    const acting = this.#authorize(identity, route, resource);
    if (acting instanceof SmartProxyError) throw acting;
    return { route, resource, identity, acting };
  }

  /** The request's headers as forwarded, with what the backend may learn of the caller. */
  #forwardHeaders(req: IncomingMessage, admission: Admission): string[] {
    const backend = this.#backendHeaders?.(admission.identity, admission.acting, admission.resource);
    return upstreamHeaders(req.rawHeaders, {
      remoteAddress: req.socket.remoteAddress,
      encrypted: (req.socket as { encrypted?: boolean }).encrypted === true,
      trusted: this.#trusted.has(req.socket.remoteAddress),
      prefix: admission.route.prefix,
      protectedNames: backend?.strip ?? this.#protected,
      extra: backend?.extra,
      dropCookies: backend?.dropCookies,
    });
  }

  /** The held body stays unread (backpressure); its announced size counts against the budget. */
  #reserveHeldBytes(req: IncomingMessage, resource: RoutedResource): () => void {
    return this.#heldBytes.reserve(req, {
      resourceId: resource.runtime.id,
      retryAfterS: Math.max(1, Math.ceil((this.#manager.estimateBoot(resource.runtime.id)?.p50Ms ?? 5000) / 1000)),
      client: this.#trusted.clientAddress(req.socket.remoteAddress, req.rawHeaders),
    });
  }

  /** Waits for `inst` again (its backend was lost); resolves undefined if the client left meanwhile. */
  async #hold(req: IncomingMessage, res: ServerResponse, inst: Instance, resource: RoutedResource): Promise<string | undefined> {
    if (requestGone(req)) return undefined;
    const releaseBytes = this.#reserveHeldBytes(req, resource);
    const ac = new AbortController();
    const onClose = (): void => ac.abort(new ClientGone());
    res.once('close', onClose);
    const heldSince = this.#observer === undefined ? 0 : performance.now();
    try {
      const endpoint = await this.#manager.waitUntilReady(inst, { signal: ac.signal, timeoutMs: resource.holdTimeoutMs });
      this.#observer?.held(resource.runtime.id, performance.now() - heldSince, 'ready');
      return endpoint;
    } catch (err) {
      const gone = err instanceof ClientGone;
      this.#observer?.held(resource.runtime.id, performance.now() - heldSince, gone ? 'client_gone' : 'failed');
      if (gone) return undefined;
      throw err;
    } finally {
      res.off('close', onClose);
      releaseBytes();
    }
  }

  /**
   * Step 6: sends the request to `firstEndpoint` and streams the answer back. The first send
   * ends in a callback, so a warm request's forward creates no promise; a send that did not
   * get through (or failed before the response head) goes on in #resend. Throws only before
   * the send (the connection count is then already given back); later failures are answered
   * here.
   */
  #forward(req: IncomingMessage, res: ServerResponse, inst: Instance, resource: RoutedResource, route: ParsedTarget, headers: string[], firstEndpoint: string): void {
    this.#manager.connectionBegun(inst);
    try {
      // Checked before every send: after a hold the client may have left, and then nothing
      // of its request reaches a backend.
      if (requestGone(req)) {
        this.#manager.connectionEnded(inst);
        return;
      }
      // The body is read from here on: now is the time for the 100 the client waits for.
      sendContinue(res);
      const ep = this.pools.endpoint(firstEndpoint);
      this.pools.forward(req, res, ep.origin, joinUpstreamPath(ep.pathPrefix, route.path, route.query), headers, resource.backendTls, (result) => {
        if (result !== 'done') {
          // Off undici's callback, as a promise's continuation would be: the retry loop may
          // send again on the same pool, or answer the client.
          void Promise.resolve()
            .then(() => this.#resend(req, res, inst, resource, route, headers, firstEndpoint, result))
            .catch((e: unknown) => this.#fail(req, res, e));
          return;
        }
        try {
          try {
            this.#manager.forwardDone(inst);
          } finally {
            this.#manager.connectionEnded(inst);
          }
        } catch (e) {
          this.#fail(req, res, e);
        }
      });
    } catch (err) {
      this.#manager.connectionEnded(inst);
      throw err;
    }
  }

  /**
   * The rest of step 6 after a send that was not served (`first`): crash repair when the
   * backend turns out to be gone. Gives back the connection count #forward took.
   */
  async #resend(req: IncomingMessage, res: ServerResponse, inst: Instance, resource: RoutedResource, route: ParsedTarget, headers: string[],
    firstEndpoint: string, first: ForwardOutcome | Error): Promise<void> {
    let endpoint = firstEndpoint;
    let outcome = first;
    let reholds = 0;
    let freshRetries = 0;
    let resentAfterReset = false;
    try {
      for (;;) {
        // Failed before the response head: the client's answer (#fail).
        if (typeof outcome !== 'string') throw outcome;
        if (outcome === 'done') {
          this.#manager.forwardDone(inst);
          return;
        }
        if (outcome === 'reset' && !resentAfterReset) {
          // A reset may be one stale keep-alive socket, not a dead backend: send once more
          // (undici drops the reset socket) before restarting anything. A dead backend then
          // refuses, and the crash repair below takes over.
          resentAfterReset = true;
        } else {
          // Nothing reached the backend. Right after readiness the service may still be
          // binding its socket: retry briefly before calling it lost.
          const freshDelay = FRESH_RETRY_DELAYS_MS[freshRetries];
          if (inst.freshlyReady && freshDelay !== undefined) {
            freshRetries++;
            await delay(freshDelay);
          } else {
            this.pools.evict(this.pools.endpoint(endpoint).origin, resource.backendTls);
            this.#manager.reportUnreachable(inst, endpoint, 'connection refused or reset before the request was sent');
            if (reholds++ >= MAX_REHOLDS) {
              throw new SmartProxyError('SP_UPSTREAM_UNAVAILABLE', 'the backend keeps refusing connections after restarts', { data: { resource: resource.runtime.id } });
            }
            const next = await this.#hold(req, res, inst, resource);
            if (next === undefined) return;
            endpoint = next;
          }
        }
        // Checked before every send: after a retry delay or a re-hold the client may have
        // left, and then nothing of its request reaches a backend.
        if (requestGone(req)) return;
        sendContinue(res);
        const ep = this.pools.endpoint(endpoint);
        const path = joinUpstreamPath(ep.pathPrefix, route.path, route.query);
        outcome = await new Promise<ForwardOutcome | Error>((resolve) => this.pools.forward(req, res, ep.origin, path, headers, resource.backendTls, resolve));
      }
    } finally {
      this.#manager.connectionEnded(inst);
    }
  }

  #fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    if (!(err instanceof ClientGone) && (!(err instanceof SmartProxyError) || err.code === 'SP_INTERNAL')) {
      this.#log.error({ err, url: req.url, method: req.method }, 'request failed unexpectedly');
    }
    if (err instanceof ClientGone || requestGone(req)) {
      // Nobody left to answer.
      if (!res.headersSent) res.destroy();
      return;
    }
    // A request whose body we never read (refused before the body, as access refusals are):
    // after `Connection: close` the body is drained within bounds (linger.ts), so the client
    // reads this answer instead of a reset; one without a body keeps its connection. Decided
    // before the head goes out, or `Connection: close` could not be sent.
    if (!req.complete && !res.headersSent) {
      // A client refused for going silent mid-body has nothing to drain.
      if (err instanceof SmartProxyError && err.code === 'SP_CLIENT_BODY_TIMEOUT') res.shouldKeepAlive = false;
      else this.lingering.refused(req, res);
    }
    try {
      sendError(req, res, err);
    } catch (sendErr) {
      this.#log.error({ err: sendErr }, 'could not send error response');
      res.destroy();
    }
  }
}

/**
 * One held request in the data plane: what its release needs, in one object with its methods
 * on the prototype (no scope and no closure of its own but the client-close listener, a bound
 * method). Held requests are many and wait long: this is what each one keeps besides its
 * connection's own objects and the core's HeldRequest.
 */
class HeldForward implements HoldTarget {
  readonly #server: ProxyServer;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly inst: Instance;
  readonly resource: RoutedResource;
  readonly identity: Identity;
  readonly acting: readonly string[];
  readonly plan: HoldPlan | undefined;
  readonly record: RequestRecord | undefined;
  readonly releaseBytes: () => void;
  /** Cold: the instance was not serving when the request came (not merely the ramp). */
  readonly cold: boolean;
  /** `performance.now()` when the hold began. */
  readonly since: number;
  #held: HeldRequest | undefined;
  #onClose: (() => void) | undefined;

  constructor(server: ProxyServer, req: IncomingMessage, res: ServerResponse, inst: Instance, admission: Admission,
    plan: HoldPlan | undefined, record: RequestRecord | undefined, releaseBytes: () => void) {
    this.#server = server;
    this.req = req;
    this.res = res;
    this.inst = inst;
    this.resource = admission.resource;
    this.identity = admission.identity;
    this.acting = admission.acting;
    this.plan = plan;
    this.record = record;
    this.releaseBytes = releaseBytes;
    this.cold = inst.status !== 'ready';
    this.since = performance.now();
  }

  /** Held by `held` until it ends: a client that leaves meanwhile ends it at once. */
  heldBy(held: HeldRequest): void {
    this.#held = held;
    // `on`, not `once`: the listener goes when the hold ends, and once's wrapper would be
    // one more object per held request.
    this.#onClose = this.clientLeft.bind(this);
    this.res.on('close', this.#onClose);
  }

  /** The client left: its hold ends (HoldQueue drops it), the others are untouched. */
  clientLeft(): void {
    this.#held?.reject(new ClientGone());
  }

  holdEnded(endpoint: string | undefined, err: Error | undefined): void {
    if (this.#onClose !== undefined) this.res.off('close', this.#onClose);
    releaseHeld(this.#server, this, endpoint, err);
  }
}

/** Who a start made for this admission is counted for (start limits, audit). */
export function requesterOf(admission: Admission): StartRequester {
  return { user: admission.identity.user, groups: admission.acting, actor: admission.identity };
}

