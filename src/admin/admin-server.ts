/**
 * The admin listener: its own node:http server (loopback by default), separate from the data
 * plane. JSON API under /api/v1 (docs/reference/admin-api.json), the live dashboard at `/`,
 * `/metrics`, `/healthz` and `/readyz`. Every route but the health checks needs an admin
 * (admin-auth.ts). It reads the control plane's objects and commands the manager; it never
 * touches the data plane's internals.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { z } from 'zod';
import type { AdminConfig } from '../config/admin-schema.ts';
import type { IdentityConfig } from '../config/access-schema.ts';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock, Logger, Store } from '../core/ports.ts';
import type { AuditActor } from '../access/audit.ts';
import type { Instance, ResourceManager, ResourceRuntime, StartRequester } from '../core/resource-manager.ts';
import { identityOfKey } from '../core/state-sync.ts';
import { answerClientError, type ParserError } from '../proxy/client-error.ts';
import { problemOf, sendError } from '../proxy/error-response.ts';
import { Lingering } from '../proxy/linger.ts';
import { ProgressHub } from '../proxy/progress-sse.ts';
import { AdminAuth, checkCsrf, CSRF_COOKIE, newCsrfToken, cookieOf, type AdminCaller } from './admin-auth.ts';
import type { AdminChange, AdminState } from './admin-state.ts';
import { dashboardPage } from './dashboard.ts';
import { adminOpenApiText } from './openapi.ts';
import { auditQuerySchema, drainBodySchema, instanceQuerySchema, startBodySchema, type InstanceView } from './schemas.ts';
import { auditView, instanceView, liveAuditView, redact, resourceView, stopRetryList } from './views.ts';

export type MetricsSource = () => Promise<{ contentType: string; body: string }>;
export type ReloadAction = () => Promise<{ ok: true; summary: unknown } | { ok: false; errors: string }>;

export interface AdminServerOptions {
  readonly admin: AdminConfig;
  readonly identities: readonly IdentityConfig[];
  readonly realm: string;
  readonly manager: ResourceManager;
  readonly state: AdminState;
  /** The resources now (a reload may replace them). */
  readonly resources: () => ReadonlyMap<string, ResourceRuntime>;
  /** Whether a resource id is in the configuration now (cheap; views mark instances of removed ones). */
  readonly isConfigured: (resourceId: string) => boolean;
  /** The effective configuration now; shown redacted. */
  readonly config: () => unknown;
  readonly store: Store;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics?: MetricsSource | undefined;
  readonly reload?: ReloadAction | undefined;
}

const API = '/api/v1';
/** A readiness check's question to the store is cut after this long. */
const STORE_CHECK_TIMEOUT_MS = 2_000;
/** A drain looks at the instance this often. */
/** Dashboard session cookie lifetime. */
const SESSION_MAX_AGE_S = 12 * 3600;

const INSTANCE_ROUTE = /^\/api\/v1\/resources\/([^/]+)\/instances\/([^/]+)\/(stop|drain|suspend|resume|retry-stop|abandon-stop|logs|events)$/;

export class AdminServer {
  readonly server: Server;
  readonly #o: AdminServerOptions;
  readonly #auth: AdminAuth;
  readonly #progress: ProgressHub;
  readonly #sockets = new Set<Socket>();
  readonly #streams = new Set<ServerResponse>();
  #draining = false;
  #storeChecking: Promise<{ ok: boolean; error: string | null }> | undefined;

  constructor(options: AdminServerOptions) {
    this.#o = options;
    this.#auth = new AdminAuth({
      identities: options.identities, realm: options.realm, admin: options.admin, clock: options.clock, logger: options.logger,
      onDenied: (reason, user, remote) => options.state.record({
        at: options.clock.now(), type: 'admin-denied', resourceId: '-', actor: user, reason: `${reason}${remote === undefined ? '' : ` (from ${remote})`}`,
      }),
    });
    this.#progress = new ProgressHub({ manager: options.manager, clock: options.clock, maxStreams: options.admin.maxEventStreams });
    this.server = createServer({ requestTimeout: 30_000, headersTimeout: 10_000, maxHeaderSize: 16 * 1024 }, (req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        if (!(err instanceof SmartProxyError)) options.logger.error({ err }, 'admin request failed');
        sendAdminError(req, res, err);
      });
    });
    this.server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
    // As on the data plane (client-error.ts): the right status, never inside another answer.
    const lingering = new Lingering();
    this.server.on('clientError', (err: ParserError, socket: Socket) => answerClientError(err, socket, lingering));
    // Without a listener Node closes a CONNECT's connection with no answer at all.
    this.server.on('connect', (_req: IncomingMessage, socket: Socket) => {
      lingering.answerRaw(socket, 'HTTP/1.1 405 Method Not Allowed\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    });
  }

  listen(port: number, host: string): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        if (addr === null || typeof addr === 'string') reject(new Error('no address'));
        else resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  /** Readiness goes false (load balancers take the replica out); everything else keeps answering. */
  startDraining(): void {
    this.#draining = true;
  }

  async close(): Promise<void> {
    this.#draining = true;
    this.#progress.close();
    for (const res of this.#streams) res.end();
    this.#streams.clear();
    this.#auth.close();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      for (const s of this.#sockets) s.destroy();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    res.setHeader('cache-control', 'no-store');
    res.setHeader('x-content-type-options', 'nosniff');

    // Health checks answer without credentials: load balancers and orchestrators have none.
    if (path === '/healthz' || path === '/readyz') {
      allow(method, ['GET', 'HEAD']);
      const health = await this.#health(path === '/readyz');
      sendJson(req, res, health.status === 'ok' ? 200 : 503, health);
      return;
    }

    const caller = await this.#auth.authenticate(req);
    if (caller instanceof SmartProxyError) throw caller;
    const unsafe = method !== 'GET' && method !== 'HEAD';
    if (unsafe && caller.ambient) {
      const refused = checkCsrf(req);
      if (refused !== undefined) {
        this.#o.state.record({ at: this.#o.clock.now(), type: 'admin-denied', resourceId: '-', actor: caller.actor, reason: `CSRF: ${refused.message}` });
        throw refused;
      }
    }

    if (path === '/' || path === '/dashboard') {
      allow(method, ['GET', 'HEAD']);
      this.#serveDashboard(req, res);
      return;
    }
    if (path === '/metrics') {
      allow(method, ['GET', 'HEAD']);
      await this.#serveMetrics(req, res);
      return;
    }
    if (path === `${API}/openapi.json`) {
      allow(method, ['GET', 'HEAD']);
      sendText(req, res, 200, 'application/json', adminOpenApiText());
      return;
    }
    if (path === `${API}/resources`) {
      allow(method, ['GET', 'HEAD']);
      const now = this.#o.clock.now();
      sendJson(req, res, 200, { items: [...this.#o.resources().values()].map((r) => resourceView(this.#o.manager, this.#o.state, r, now)) });
      return;
    }
    if (path === `${API}/instances`) {
      allow(method, ['GET', 'HEAD']);
      sendJson(req, res, 200, this.#listInstances(parseQuery(instanceQuerySchema, url)));
      return;
    }
    if (path === `${API}/stop-retries`) {
      allow(method, ['GET', 'HEAD']);
      sendJson(req, res, 200, stopRetryList(this.#o.manager, this.#o.isConfigured));
      return;
    }
    if (path === `${API}/audit`) {
      allow(method, ['GET', 'HEAD']);
      await this.#serveAudit(req, res, parseQuery(auditQuerySchema, url));
      return;
    }
    if (path === `${API}/events`) {
      allow(method, ['GET']);
      this.#serveChanges(req, res);
      return;
    }
    if (path === `${API}/config`) {
      allow(method, ['GET', 'HEAD']);
      sendJson(req, res, 200, redact(this.#o.config()));
      return;
    }
    if (path === `${API}/reload`) {
      allow(method, ['POST']);
      await this.#reload(req, res, caller);
      return;
    }
    const resourceMatch = /^\/api\/v1\/resources\/([^/]+)(\/start)?$/.exec(path);
    if (resourceMatch !== null) {
      const resource = this.#resource(decode(resourceMatch[1] as string));
      if (resourceMatch[2] === undefined) {
        allow(method, ['GET', 'HEAD']);
        sendJson(req, res, 200, resourceView(this.#o.manager, this.#o.state, resource, this.#o.clock.now()));
        return;
      }
      allow(method, ['POST']);
      const body = parseBody(startBodySchema, await readBody(req, this.#o.admin.maxBodyBytes));
      this.#start(req, res, caller, resource, body.instanceKey);
      return;
    }
    const m = INSTANCE_ROUTE.exec(path);
    if (m !== null) {
      const action = m[3] as string;
      const key = decode(m[2] as string);
      if (action === 'retry-stop' || action === 'abandon-stop') {
        // Found among the owed stops first: a resource removed by a reload may still owe one.
        const owed = this.#owedStopOf(decode(m[1] as string), key);
        if (owed !== undefined) {
          allow(method, ['POST']);
          await readBody(req, this.#o.admin.maxBodyBytes);
          this.#stopRetryAction(owed, caller, action);
          sendJson(req, res, 202, { accepted: true, instance: this.#view(owed) });
          return;
        }
      }
      const resource = this.#resource(decode(m[1] as string));
      if (action === 'logs' || action === 'events') {
        allow(method, action === 'logs' ? ['GET', 'HEAD'] : ['GET']);
        if (action === 'events') this.#progress.serveEvents(req, res, this.#instance(resource, key, true));
        else this.#serveLogs(req, res, resource, this.#instance(resource, key, false));
        return;
      }
      allow(method, ['POST']);
      const inst = this.#instance(resource, key, false);
      switch (action) {
        case 'stop':
          await readBody(req, this.#o.admin.maxBodyBytes);
          this.#audit(caller, 'admin-stop', inst, 'stopped by an operator');
          void this.#o.manager.stop(inst, `stopped by ${caller.actor}`, 'stop', caller.actor).catch(() => undefined);
          sendJson(req, res, 202, { accepted: true, instance: this.#view(inst) });
          return;
        case 'drain': {
          const body = parseBody(drainBodySchema, await readBody(req, this.#o.admin.maxBodyBytes));
          const draining = this.#drain(inst, caller, body.timeoutMs);
          this.#audit(caller, 'admin-drain', inst, draining ? `drain, then stop (at most ${body.timeoutMs} ms)` : `nothing to drain: ${inst.status}`);
          sendJson(req, res, 202, { accepted: true, instance: this.#view(inst) });
          return;
        }
        case 'retry-stop':
        case 'abandon-stop':
          await readBody(req, this.#o.admin.maxBodyBytes);
          this.#stopRetryAction(inst, caller, action);
          sendJson(req, res, 202, { accepted: true, instance: this.#view(inst) });
          return;
        case 'suspend':
        case 'resume': {
          // Only where the provider, as configured, can keep an instance's state.
          if (resource.provider.suspend === undefined) break;
          await readBody(req, this.#o.admin.maxBodyBytes);
          if (action === 'suspend') {
            this.#audit(caller, 'admin-suspend', inst, 'suspended by an operator');
            void this.#o.manager.stop(inst, `suspended by ${caller.actor}`, 'suspend', caller.actor).catch(() => undefined);
          } else {
            this.#resume(inst, caller);
          }
          sendJson(req, res, 202, { accepted: true, instance: this.#view(inst) });
          return;
        }
        default:
          break;
      }
      throw new SmartProxyError('SP_ADMIN_UNSUPPORTED', `the ${resource.provider.kind} provider of ${resource.id} cannot ${action} instances${action === 'suspend' || action === 'resume' ? ' (qemu can, with suspendOnStop)' : ''}`);
    }
    throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `nothing at ${path.slice(0, 200)} (see ${API}/openapi.json)`);
  }

  async #health(readiness: boolean): Promise<{ status: 'ok' | 'unavailable'; draining: boolean; store: { kind: string; reachable: boolean; error: string | null } }> {
    const check = await this.#checkStore();
    const ok = readiness ? !this.#draining && check.ok : true;
    return { status: ok ? 'ok' : 'unavailable', draining: this.#draining, store: { kind: this.#o.store.kind, reachable: check.ok, error: check.error } };
  }

  /** Asks the store one cheap question (concurrent checks share it), never longer than the timeout. */
  #checkStore(): Promise<{ ok: boolean; error: string | null }> {
    this.#storeChecking ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          this.#o.store.recentAudit(1),
          new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${STORE_CHECK_TIMEOUT_MS} ms`)), STORE_CHECK_TIMEOUT_MS); }),
        ]);
        return { ok: true, error: null };
      } catch (err) {
        return { ok: false, error: err instanceof Error ? err.message : String(err) };
      } finally {
        clearTimeout(timer);
        this.#storeChecking = undefined;
      }
    })();
    return this.#storeChecking;
  }

  #resource(id: string): ResourceRuntime {
    const r = this.#o.resources().get(id);
    if (r === undefined) throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `no resource "${id.slice(0, 200)}"`);
    return r;
  }

  /** The instance by key; with `create`, one the manager would make for that key (events of a not yet started one). */
  #instance(resource: ResourceRuntime, key: string, create: boolean): Instance {
    for (const i of this.#o.manager.instancesOf(resource.id)) if (i.key === key) return i;
    if (create) {
      const who = identityOfKey(resource.sharing, key);
      if (who !== undefined) {
        const inst = this.#o.manager.selectInstance(resource, who.groups, who.user);
        if (inst.key === key) return inst;
      }
    }
    throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `no instance "${key.slice(0, 200)}" of ${resource.id}`);
  }

  #view(inst: Instance): InstanceView {
    return instanceView(this.#o.manager, this.#o.state, inst, this.#o.clock.now(), !this.#o.isConfigured(inst.resource.id));
  }

  #audit(caller: AdminCaller, type: string, inst: Instance | undefined, reason: string, resourceId = inst?.resource.id ?? '-'): void {
    this.#o.state.record({ at: this.#o.clock.now(), type, resourceId, instanceKey: inst?.key, status: inst?.status, actor: caller.actor, reason });
  }

  #start(req: IncomingMessage, res: ServerResponse, caller: AdminCaller, resource: ResourceRuntime, key: string | undefined): void {
    const wanted = key ?? (resource.sharing === 'user' ? undefined : '*');
    if (wanted === undefined) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', `${resource.id} has an instance per user: name one with {"instanceKey": "user:<name>"}`);
    const who = identityOfKey(resource.sharing, wanted);
    if (who === undefined) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', `"${wanted.slice(0, 200)}" is not an instance key of a resource shared by ${resource.sharing}`);
    const groups = [...new Set(who.groups)].sort();
    const inst = this.#o.manager.selectInstance(resource, groups, who.user);
    const already = inst.status === 'ready' || inst.status === 'starting';
    if (!already) {
      const refused = this.#o.manager.requestStart(inst, operatorRequester(inst, caller));
      if (refused !== undefined) {
        this.#audit(caller, 'admin-start', inst, `refused: ${refused.message}`);
        throw refused;
      }
      this.#o.state.startedByAdmin(inst, caller.actor);
    }
    this.#audit(caller, 'admin-start', inst, already ? `already ${inst.status}` : 'started by an operator');
    sendJson(req, res, 202, { accepted: true, instance: this.#view(inst) });
  }

  #owedStopOf(resourceId: string, key: string): Instance | undefined {
    for (const inst of this.#o.manager.stopRetries.instances()) if (inst.resource.id === resourceId && inst.key === key) return inst;
    return undefined;
  }

  /**
   * An operator steers a stop owed for an instance out of service (core/leftover-stops.ts):
   * tries it now (a given-up one afresh), or lets it go (the operator takes care of the
   * machine). Audited either way, with the stop's state before the action.
   */
  #stopRetryAction(inst: Instance, caller: AdminCaller, action: 'retry-stop' | 'abandon-stop'): void {
    const retries = this.#o.manager.stopRetries;
    const before = retries.stateOf(inst);
    const what = before === undefined ? '' : ` (${before.state}, ${before.attempts} of ${before.maxAttempts} tries${before.lastError === undefined ? '' : `, last error: ${before.lastError}`})`;
    const outcome = action === 'retry-stop' ? retries.retryNow(inst) : retries.abandon(inst);
    const type = `admin-${action}`;
    switch (outcome) {
      case 'started':
        this.#audit(caller, type, inst, `stop tried again now${what}`);
        return;
      case 'abandoned':
        this.#audit(caller, type, inst, `owed stop let go${what}; the machine may still be running`);
        return;
      case 'running':
        this.#audit(caller, type, inst, `refused: a try is in flight${what}`);
        throw new SmartProxyError('SP_ADMIN_CONFLICT', `a try of the stop of ${inst.resource.id} ${inst.key} is in flight; ask again once it ended`, { retryAfterS: 5 });
      case 'none':
        throw new SmartProxyError('SP_ADMIN_CONFLICT', `no stop is owed for ${inst.resource.id} ${inst.key}`);
      case 'unsupported':
        throw new SmartProxyError('SP_ADMIN_UNSUPPORTED', 'with replicas a given-up stop is not tried again from here (it would bypass the cluster\'s stop leases): stop a failed instance with …/stop, or start it again and stop it');
    }
  }

  /** Resume is a start of that instance: the provider restores the state its suspend kept. */
  #resume(inst: Instance, caller: AdminCaller): void {
    const already = inst.status === 'ready' || inst.status === 'starting';
    if (!already) {
      const refused = this.#o.manager.requestStart(inst, operatorRequester(inst, caller));
      if (refused !== undefined) {
        this.#audit(caller, 'admin-resume', inst, `refused: ${refused.message}`);
        throw refused;
      }
      this.#o.state.startedByAdmin(inst, caller.actor);
    }
    this.#audit(caller, 'admin-resume', inst, already ? `already ${inst.status}` : 'resumed by an operator');
  }

  /**
   * The manager's drain: nothing new goes to the instance (new requests are held and served by
   * a fresh start after the stop), what is in flight finishes, then it stops.
   */
  #drain(inst: Instance, caller: AdminCaller, timeoutMs: number): boolean {
    return this.#o.manager.drain(inst, `drained by ${caller.actor}`, timeoutMs, caller.actor);
  }

  #listInstances(q: z.infer<typeof instanceQuerySchema>): { items: InstanceView[]; total: number; nextOffset: number | null } {
    const now = this.#o.clock.now();
    const resources = q.resource === undefined ? [...this.#o.resources().values()] : [this.#resource(q.resource)];
    const matching: Instance[] = [];
    for (const r of resources) {
      for (const i of this.#o.manager.instancesOf(r.id)) if (q.state === undefined || i.status === q.state) matching.push(i);
    }
    const page = matching.slice(q.offset, q.offset + q.limit);
    const next = q.offset + page.length;
    return { items: page.map((i) => instanceView(this.#o.manager, this.#o.state, i, now)), total: matching.length, nextOffset: next < matching.length ? next : null };
  }

  async #serveAudit(req: IncomingMessage, res: ServerResponse, q: z.infer<typeof auditQuerySchema>): Promise<void> {
    let events;
    try {
      events = await this.#o.store.queryAudit({
        resourceId: q.resource, type: q.type, actor: q.actor, instanceKey: q.instance, sinceMs: q.since, untilMs: q.until, beforeId: q.before, limit: q.limit,
      });
    } catch (err) {
      throw new SmartProxyError('SP_ADMIN_UNSUPPORTED', `the state store (${this.#o.store.kind}) could not be read: ${err instanceof Error ? err.message : String(err)}`, { retryAfterS: 5 });
    }
    if (res.destroyed) return;
    const last = events.at(-1);
    sendJson(req, res, 200, { items: events.map(auditView), nextBefore: events.length === q.limit && last !== undefined ? last.id : null });
  }

  #serveLogs(req: IncomingMessage, res: ServerResponse, resource: ResourceRuntime, inst: Instance): void {
    const provider = resource.provider;
    if (provider.output === undefined) throw new SmartProxyError('SP_ADMIN_UNSUPPORTED', `the ${provider.kind} provider keeps no output of its instances`);
    const out = provider.output(inst.ref);
    if (out === undefined) throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `no output is kept for ${resource.id} ${inst.key} (not started by this proxy, or gone)`);
    sendJson(req, res, 200, { text: out.text, droppedBytes: out.droppedBytes });
  }

  /** Every change as SSE; instance changes are coalesced per tick so a burst stays one write per instance. */
  #serveChanges(req: IncomingMessage, res: ServerResponse): void {
    if (this.#streams.size >= this.#o.admin.maxEventStreams) {
      throw new SmartProxyError('SP_HOLD_QUEUE_FULL', 'too many admin event streams are open', { data: { scope: 'admin-streams' }, retryAfterS: 5 });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    this.#streams.add(res);
    const pending = new Set<Instance>();
    let scheduled = false;
    const flush = (): void => {
      scheduled = false;
      if (res.destroyed || res.writableEnded) return;
      const now = this.#o.clock.now();
      let chunk = '';
      for (const inst of pending) {
        const view = instanceView(this.#o.manager, this.#o.state, inst, now, !this.#o.isConfigured(inst.resource.id));
        chunk += `event: instance\ndata: ${JSON.stringify(view)}\n\n`;
      }
      pending.clear();
      if (chunk.length > 0) res.write(chunk);
    };
    const off = this.#o.state.onChange((c: AdminChange) => {
      if (c.kind === 'audit') {
        if (!res.destroyed) res.write(`event: audit\ndata: ${JSON.stringify(liveAuditView(c.event))}\n\n`);
        return;
      }
      pending.add(c.instance);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
    // A comment every 15 s keeps idle intermediaries from cutting the stream.
    const ping = setInterval(() => { if (!res.destroyed) res.write(': ping\n\n'); }, 15_000);
    ping.unref();
    res.once('close', () => {
      off();
      clearInterval(ping);
      this.#streams.delete(res);
    });
    res.write('retry: 2000\n\n');
  }

  #serveDashboard(req: IncomingMessage, res: ServerResponse): void {
    // One token per browser session: reused while the cookie lives, so several tabs agree.
    const existing = cookieOf(req, CSRF_COOKIE);
    const token = existing !== undefined && /^[A-Za-z0-9_-]{32}$/.test(existing) ? existing : newCsrfToken();
    const { html, nonce } = dashboardPage(token);
    res.setHeader('set-cookie', `${CSRF_COOKIE}=${token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_MAX_AGE_S}`);
    // No network but this listener: scripts and styles only with this response's nonce.
    res.setHeader('content-security-policy', `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`);
    res.setHeader('referrer-policy', 'no-referrer');
    sendText(req, res, 200, 'text/html; charset=utf-8', html);
  }

  async #serveMetrics(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#o.metrics === undefined) {
      sendText(req, res, 503, 'text/plain; charset=utf-8', 'metrics are not available: this proxy was started without a metrics registry\n');
      return;
    }
    const m = await this.#o.metrics();
    if (res.destroyed) return;
    sendText(req, res, 200, m.contentType, m.body);
  }

  async #reload(req: IncomingMessage, res: ServerResponse, caller: AdminCaller): Promise<void> {
    await readBody(req, this.#o.admin.maxBodyBytes);
    if (this.#o.reload === undefined) throw new SmartProxyError('SP_ADMIN_UNSUPPORTED', 'reload is not available in this proxy');
    const out = await this.#o.reload();
    this.#audit(caller, 'admin-reload', undefined, out.ok ? 'configuration reloaded' : `refused: ${out.errors.slice(0, 2_000)}`);
    if (!out.ok) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', `the new configuration was refused; the old one is kept:\n${out.errors}`);
    sendJson(req, res, 200, { ok: true, summary: out.summary });
  }
}

/**
 * `sendError`, except that a 401 lists each challenge on its own `WWW-Authenticate` line:
 * browsers act on the first challenge of a line only, and the dashboard's users sign in
 * with Basic even when a bearer identity comes first in the chain.
 */
/**
 * An operator's start: counted for the instance's own user and groups (as a start without a
 * request is), audited as the operator's (`admin:<user>`), not as the proxy's own.
 */
function operatorRequester(inst: Instance, caller: AdminCaller): StartRequester {
  const actor: AuditActor = { user: caller.actor, via: 'operator' };
  return { user: inst.user, groups: inst.groups, actor };
}

function sendAdminError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const challenges = err instanceof SmartProxyError && err.code === 'SP_ACCESS_UNAUTHENTICATED' ? err.data.challenges : undefined;
  if (!Array.isArray(challenges) || challenges.length === 0 || res.headersSent || res.destroyed) {
    // RFC 9110 §15.5.6: a 405 lists the allowed methods.
    const allowed = err instanceof SmartProxyError && err.code === 'SP_ROUTE_METHOD_NOT_ALLOWED' ? err.data.allow : undefined;
    sendError(req, res, err, typeof allowed === 'string' ? { allow: allowed } : undefined);
    return;
  }
  const e = err as SmartProxyError;
  const body = JSON.stringify(problemOf(e, req.url?.split('?')[0]));
  // Basic first: the one challenge a browser can answer with a prompt.
  const ordered = [...challenges as string[]].sort((x, y) => Number(y.startsWith('Basic ')) - Number(x.startsWith('Basic ')));
  res.setHeader('www-authenticate', ordered);
  res.writeHead(401, { 'content-type': 'application/problem+json', 'content-length': String(Buffer.byteLength(body)) });
  res.end(req.method === 'HEAD' ? undefined : body);
}

function allow(method: string, methods: readonly string[]): void {
  if (!methods.includes(method)) {
    throw new SmartProxyError('SP_ROUTE_METHOD_NOT_ALLOWED', `use ${methods.join(' or ')}`, { data: { allow: methods.join(', ') } });
  }
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', 'bad percent-encoding in the path');
  }
}

function parseQuery<S extends z.ZodType>(schema: S, url: URL): z.infer<S> {
  const raw: Record<string, string> = {};
  for (const [k, v] of url.searchParams) {
    if (k in raw) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', `query parameter "${k.slice(0, 100)}" given twice`);
    raw[k] = v;
  }
  const out = schema.safeParse(raw);
  if (!out.success) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', issuesText(out.error));
  return out.data;
}

function parseBody<S extends z.ZodType>(schema: S, text: string): z.infer<S> {
  let value: unknown = {};
  if (text.trim().length > 0) {
    try {
      value = JSON.parse(text);
    } catch {
      throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', 'the body is not JSON');
    }
  }
  const out = schema.safeParse(value);
  if (!out.success) throw new SmartProxyError('SP_ADMIN_BAD_REQUEST', issuesText(out.error));
  return out.data;
}

function issuesText(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length === 0 ? '(body)' : i.path.join('.')}: ${i.message}`).join('; ');
}

/** Reads a small body, refusing more than `max` bytes (413-like 400) without buffering it. */
function readBody(req: IncomingMessage, max: number): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) return Promise.reject(new SmartProxyError('SP_ADMIN_BAD_REQUEST', `the body is larger than ${max} bytes`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new SmartProxyError('SP_ADMIN_BAD_REQUEST', `the body is larger than ${max} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
    req.once('close', () => reject(new Error('client went away')));
  });
}

function sendJson(req: IncomingMessage, res: ServerResponse, status: number, body: unknown): void {
  sendText(req, res, status, 'application/json', JSON.stringify(body));
}

function sendText(req: IncomingMessage, res: ServerResponse, status: number, contentType: string, body: string): void {
  if (res.destroyed || res.writableEnded) return;
  // Answered before the request body was read (refused as too large, say): the rest of that
  // body is still on the connection, so it must not carry another request (RFC 9112 §9.3).
  if (!req.complete) res.setHeader('connection', 'close');
  res.writeHead(status, { 'content-type': contentType, 'content-length': String(Buffer.byteLength(body)) });
  res.end(req.method === 'HEAD' ? undefined : body);
}
