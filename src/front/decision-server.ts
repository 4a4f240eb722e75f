/**
 * The decision listener of front-proxy mode. A front proxy (nginx `auth_request`, HAProxy's
 * Lua helper) asks here, with the client's headers, whether it may forward a request itself;
 * it caches an allow for `grantTtlMs`, so a warm resource costs Smart Proxy nothing per request.
 *
 * The answer is one of two, so a front proxy needs no logic of its own:
 * - 200 "direct": the caller is allowed and the instance is ready. Headers name the backend
 *   and carry the identity headers exactly as the data plane would set them.
 * - 401 "via Smart Proxy": anything else (cold, starting, refused, unknown, malformed). The
 *   front proxy then sends the request to the data plane, which answers it as it would
 *   without a front proxy: holds it, shows the waiting page, or refuses it with its body.
 *
 * Deciding here has no side effect besides an activity mark: a start is the data plane's
 * job, with the same limits as always. The mark is dated at the end of the grant, because
 * the front proxy may keep serving on it until then without asking again.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock, Logger } from '../core/ports.ts';
import type { ResourceManager } from '../core/resource-manager.ts';
import type { Admission } from '../proxy/forward-ws.ts';
import type { BackendHeaders } from '../proxy/server.ts';
import { FRONT_HEADERS } from './protocol.ts';
import type { UpstreamNames } from './upstreams.ts';

export interface DecisionServerOptions {
  readonly manager: ResourceManager;
  /** Route, identify, authorize (the data plane's own steps, ProxyServer.admit). */
  readonly admit: (req: IncomingMessage) => Promise<Admission>;
  readonly backendHeaders: BackendHeaders | undefined;
  /** Names of the backend identity headers (access.backendHeaders). */
  readonly identityHeaderNames: { readonly user: string; readonly groups: string };
  readonly upstreams: UpstreamNames;
  readonly grantTtlMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Called with each resource granted (the busy checker watches only those). */
  readonly onGrant?: (resourceId: string) => void;
  /**
   * Bound on the connect that checks a backend before it is granted (upstream.connectTimeoutMs);
   * 0 skips the check.
   */
  readonly reachableTimeoutMs?: number;
}

/** Control headers the front proxy adds; never passed to the access steps as client headers. */
const CONTROL = new Set([FRONT_HEADERS.uri, FRONT_HEADERS.method, FRONT_HEADERS.client].map((h) => h.toLowerCase()));

export class DecisionServer {
  readonly server: Server;
  readonly #o: DecisionServerOptions;
  readonly #ttlS: number;
  readonly #sockets = new Set<Socket>();
  #closed = false;
  /** Decisions answered, by kind (tests and the benchmark count calls with these). */
  readonly counts = { direct: 0, viaProxy: 0 };

  constructor(options: DecisionServerOptions) {
    this.#o = options;
    this.#ttlS = Math.max(1, Math.ceil(options.grantTtlMs / 1000));
    this.server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        options.logger.error({ err }, 'front decision failed');
        this.#viaProxy(res, 'internal error');
      });
    });
    this.server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
  }

  listen(port: number, host: string): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address();
        if (a === null || typeof a === 'string') reject(new Error('no address'));
        else resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** From now on every answer is "via Smart Proxy" (which answers 503 while draining). */
  startDraining(): void {
    this.#closed = true;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.#sockets) s.destroy();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const uri = single(req, FRONT_HEADERS.uri);
    if (this.#closed || uri === undefined) {
      this.#viaProxy(res, uri === undefined ? `no ${FRONT_HEADERS.uri}` : 'draining');
      return;
    }
    let admission: Admission;
    try {
      admission = await this.#o.admit(asClientRequest(req, uri));
    } catch (err) {
      // Refusals and malformed targets are the data plane's to answer (with their bodies,
      // challenges and audit records); anything unexpected is logged.
      if (!(err instanceof SmartProxyError)) throw err;
      this.#viaProxy(res, err.code);
      return;
    }
    if (res.destroyed) return;
    const { resource, identity, acting } = admission;
    const { manager } = this.#o;
    const inst = manager.selectInstance(resource.runtime, acting, identity.user);
    // Exactly the data plane's warm test: ready, and nobody queued behind the release ramp.
    const endpoint = inst.openEndpoint;
    const target = endpoint === undefined ? undefined : this.#o.upstreams.target(endpoint);
    if (target === undefined) {
      this.#viaProxy(res, endpoint === undefined ? inst.status : 'endpoint not forwardable');
      return;
    }
    // A grant is the front proxy's licence to use this address for a whole TTL without
    // asking: one TCP connect first (at most once per TTL per route and credential). A backend
    // that died behind Smart Proxy's back is then sent via the data plane, which notices it
    // and wakes the resource again, whatever the method; a front proxy that cannot resend a
    // failed request itself (HAProxy's POST) fails for at most one grant.
    if ((this.#o.reachableTimeoutMs ?? 0) > 0) {
      const why = await unreachable(target.address, this.#o.reachableTimeoutMs!);
      if (why !== undefined) {
        this.#viaProxy(res, `backend unreachable: ${why}`);
        return;
      }
      if (res.destroyed) return;
      // The instance may have moved on during the connect (stopped, restarted elsewhere).
      if (inst.status !== 'ready' || inst.endpoint !== endpoint) {
        this.#viaProxy(res, inst.status);
        return;
      }
    }
    let ttlS = this.#ttlS;
    const expiresAtMs = jwtExpiry(identity, req.headers.authorization);
    if (expiresAtMs !== undefined) {
      const leftS = Math.floor((expiresAtMs - this.#o.clock.now()) / 1000);
      if (leftS < 1) {
        this.#viaProxy(res, 'credential expires within a second');
        return;
      }
      ttlS = Math.min(ttlS, leftS);
    }
    manager.touch(inst, this.#o.clock.now() + ttlS * 1000);
    this.#o.onGrant?.(resource.runtime.id);
    const backend = this.#o.backendHeaders?.(identity, acting, resource);
    let user = '';
    let groups = '';
    const names = this.#o.identityHeaderNames;
    // The data plane hands its identity header names over in lower case (a name is
    // case-insensitive, RFC 9110 §5.1): compared folded, whatever case the config spells.
    const userName = names.user.toLowerCase();
    const groupsName = names.groups.toLowerCase();
    for (const [name, value] of backend?.extra ?? []) {
      const folded = name.toLowerCase();
      if (folded === userName) user = value;
      else if (folded === groupsName) groups = value;
    }
    this.counts.direct++;
    // The allow is cached by the front proxy and re-read on every warm request: only what it
    // uses, nothing empty (an absent header reads as empty), no Date, and an explicit
    // Connection so that Node adds no Keep-Alive line. X-Forwarded-Prefix is the route
    // itself, which the front proxy already has.
    const headers: Record<string, string> = {
      [FRONT_HEADERS.upstream]: target.upstream,
      [FRONT_HEADERS.address]: target.address,
      'content-length': '0',
    };
    // A shorter life than the grant TTL (a JWT about to expire), in seconds: nginx caches by
    // it, HAProxy's helper reads it. Without it both keep the allow for the grant TTL.
    if (ttlS < this.#ttlS) headers['x-accel-expires'] = String(ttlS);
    if (target.basePath !== '') headers[FRONT_HEADERS.basePath] = target.basePath;
    if (user !== '') headers[FRONT_HEADERS.user] = user;
    if (groups !== '') headers[FRONT_HEADERS.groups] = groups;
    if (backend?.strip.has('authorization') === false) headers[FRONT_HEADERS.passCredentials] = '1';
    if (res.shouldKeepAlive) headers.connection = 'keep-alive';
    res.sendDate = false;
    res.writeHead(200, headers);
    res.end();
  }

  #viaProxy(res: ServerResponse, reason: string): void {
    this.counts.viaProxy++;
    if (res.headersSent || res.destroyed) return;
    res.writeHead(401, {
      [FRONT_HEADERS.reason]: reason.replace(/[^\x20-\x7e]/g, '?').slice(0, 100),
      // Never cached: the next request asks again, so a resource that became ready is
      // served directly as soon as it is.
      'x-accel-expires': '0',
      'cache-control': 'no-store',
      'content-length': '0',
    });
    res.end();
  }
}

function single(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name.toLowerCase()];
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

/**
 * The client's request as the access steps read it: its target, method, headers and
 * address, as the front proxy reports them. The control headers are not the client's, and
 * the front proxy overwrites any a client sent.
 */
function asClientRequest(req: IncomingMessage, uri: string): IncomingMessage {
  const rawHeaders: string[] = [];
  const headers: Record<string, string | string[] | undefined> = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (CONTROL.has(lower)) continue;
    rawHeaders.push(name, req.rawHeaders[i + 1] as string);
    if (lower in headers) continue;
    headers[lower] = req.headers[lower];
  }
  const client = single(req, FRONT_HEADERS.client);
  const socket = { remoteAddress: client, encrypted: false };
  return Object.assign(Object.create(req) as IncomingMessage, {
    url: uri,
    method: single(req, FRONT_HEADERS.method) ?? 'GET',
    rawHeaders,
    headers,
    socket,
  });
}

/** A verified JWT's `exp` (ms), so a grant never outlives the token it was made for. */
function jwtExpiry(identity: Admission['identity'], authorization: string | undefined): number | undefined {
  if ((identity as { via?: string }).via !== 'jwt' || authorization === undefined) return undefined;
  const payload = /^bearer\s+[^.]+\.([^.]+)\./i.exec(authorization)?.[1];
  if (payload === undefined) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** Why `host:port` does not accept a TCP connection within `timeoutMs`, or undefined if it does. */
function unreachable(address: string, timeoutMs: number): Promise<string | undefined> {
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(colon + 1));
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (why: string | undefined): void => {
      socket.destroy();
      resolve(why);
    };
    socket.setTimeout(timeoutMs, () => done(`no connection within ${timeoutMs} ms`));
    socket.once('connect', () => done(undefined));
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}
