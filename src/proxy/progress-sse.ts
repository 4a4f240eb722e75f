/**
 * Progress of a starting instance, served by the proxy itself under a reserved prefix that
 * can never be a resource's URL (resources live under `/smart_proxy/`):
 *
 * - `GET /_smart_proxy/status/{resource_id}/{groups}`: a JSON status document (the
 *   `Location` of a `Prefer: respond-async` 202).
 * - `GET /_smart_proxy/events/{resource_id}/{groups}`: the same document as Server-Sent
 *   Events, one `progress` event per change, then `ready` or `failed` and the end.
 *
 * `{resource_id}/{groups}` is the same pair as in the resource's own URL, and the request goes
 * through the same route → identify → authorize → select steps, so a caller sees only the
 * instance its own requests would be served by. These endpoints never start anything.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SmartProxyError } from '../core/errors.ts';
import type { InstanceStatus, StartPhase } from '../core/lifecycle.ts';
import type { Clock, TimerHandle } from '../core/ports.ts';
import type { Instance, ManagerEvent, ResourceManager } from '../core/resource-manager.ts';
import { BASE_PATH, parseTarget, type ParsedTarget } from './route.ts';

export const RESERVED_PREFIX = '/_smart_proxy';
/** Built once: isReservedPath runs on every request. */
const RESERVED_DIR = `${RESERVED_PREFIX}/`;
const STATUS_PREFIX = `${RESERVED_PREFIX}/status/`;
const EVENTS_PREFIX = `${RESERVED_PREFIX}/events/`;

/** What a waiting person (or client) is told about an instance. */
export type ProgressStep = 'stopped' | 'requested' | 'booting' | 'probing' | 'ready' | 'failed' | 'stopping';

export interface ProgressEta {
  /** Past boots this estimate is learnt from. */
  readonly samples: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  /** p50 minus the time already spent; 0 once past it. */
  readonly remainingMs: number;
}

export interface ProgressSnapshot {
  readonly resource: string;
  readonly state: InstanceStatus;
  readonly phase: StartPhase | null;
  readonly step: ProgressStep;
  /** Since the start was requested (the whole boot, once ready); null when not started. */
  readonly elapsedMs: number | null;
  /** From this resource's own past boots; null until there is history. */
  readonly eta: ProgressEta | null;
  /** Why the last start failed, or why a start would be refused now (the provider's API is down). */
  readonly reason: string | null;
  /** The error code behind `reason` (SP_PROVIDER_UNREACHABLE, SP_START_FAILED, …). */
  readonly code: string | null;
  /** Seconds after which asking again makes sense (also sent as `Retry-After`). */
  readonly retryAfterS: number;
}

/** Without any history, clients are told to come back after this long. */
const NO_ESTIMATE_RETRY_S = 5;
const MAX_RETRY_AFTER_S = 3600;

export function snapshotOf(manager: ResourceManager, inst: Instance, now: number): ProgressSnapshot {
  const est = manager.estimateBoot(inst.resource.id);
  const started = inst.startRequestedAt > 0 && inst.status !== 'stopped';
  let elapsedMs: number | null = null;
  if (started) elapsedMs = Math.max(0, (inst.status === 'ready' ? inst.readyAt : now) - inst.startRequestedAt);
  const eta: ProgressEta | null = est === undefined ? null : {
    samples: est.samples, p50Ms: est.p50Ms, p90Ms: est.p90Ms,
    remainingMs: inst.status === 'ready' ? 0 : Math.max(0, est.p50Ms - (elapsedMs ?? 0)),
  };
  let retryAfterS = eta === null ? NO_ESTIMATE_RETRY_S : Math.ceil(eta.remainingMs / 1000);
  if (inst.status === 'failed') retryAfterS = Math.ceil(Math.max(0, inst.failedUntil - now) / 1000);
  const down = inst.status === 'starting' ? undefined : manager.providerDown(inst);
  if (down?.retryAfterS !== undefined) retryAfterS = down.retryAfterS;
  const failure = inst.status === 'failed' ? inst.lastError : undefined;
  return {
    resource: inst.resource.id,
    state: inst.status,
    phase: inst.phase ?? null,
    step: stepOf(inst),
    elapsedMs,
    eta,
    reason: down?.message ?? (inst.status === 'failed' ? failure?.message ?? 'the start failed' : null),
    code: down?.code ?? failure?.code ?? null,
    retryAfterS: Math.min(MAX_RETRY_AFTER_S, Math.max(1, retryAfterS)),
  };
}

function stepOf(inst: Instance): ProgressStep {
  if (inst.status === 'starting') return inst.phase ?? 'requested';
  return inst.status;
}

/** `/_smart_proxy/status/as1/g1,g2` for a request routed to `/smart_proxy/as1/g1,g2/…`. */
export function statusPathFor(route: ParsedTarget): string {
  return `${RESERVED_PREFIX}/status${route.prefix.slice(BASE_PATH.length)}`;
}

export function eventsPathFor(route: ParsedTarget): string {
  return `${RESERVED_PREFIX}/events${route.prefix.slice(BASE_PATH.length)}`;
}

export function isReservedPath(url: string | undefined): boolean {
  return url !== undefined && url.startsWith(RESERVED_DIR);
}

/**
 * Parses a reserved URL into its kind and the resource route it speaks about. The
 * `{resource_id}/{groups}` pair goes through the resource URL parser, so it is validated by
 * exactly the same rules. Anything else under the prefix is a 404.
 */
export function parseReservedPath(url: string): { kind: 'status' | 'events'; route: ParsedTarget } {
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const kind = path.startsWith(STATUS_PREFIX) ? 'status' : path.startsWith(EVENTS_PREFIX) ? 'events' : undefined;
  if (kind === undefined) throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `nothing at ${path.slice(0, 200)}`);
  const rest = path.slice((kind === 'status' ? STATUS_PREFIX : EVENTS_PREFIX).length);
  const segments = rest.split('/');
  if (segments.length !== 2 || segments.some((s) => s.length === 0)) {
    throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `expected ${RESERVED_PREFIX}/${kind}/{resource_id}/{groups}`);
  }
  return { kind, route: parseTarget(`${BASE_PATH}/${rest}/`) };
}

/** Answers the JSON status document. */
export function sendStatus(req: IncomingMessage, res: ServerResponse, snap: ProgressSnapshot): void {
  const body = JSON.stringify(snap);
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': String(Buffer.byteLength(body)),
  };
  if (snap.state !== 'ready') headers['retry-after'] = String(snap.retryAfterS);
  res.writeHead(200, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
}

type Subscriber = () => void;

export interface ProgressHubOptions {
  readonly manager: ResourceManager;
  readonly clock: Clock;
  /** Open event streams at once over all resources; past it 503. */
  readonly maxStreams?: number;
  /** A fresh snapshot is sent this often even without a change (liveness, clock sync). */
  readonly refreshMs?: number;
}

/**
 * Fans the manager's events out to the open event streams: one manager listener in all,
 * streams indexed by instance, so a change costs O(streams of that instance).
 */
export class ProgressHub {
  readonly #manager: ResourceManager;
  readonly #clock: Clock;
  readonly #maxStreams: number;
  readonly #refreshMs: number;
  readonly #byInstance = new Map<Instance, Set<Subscriber>>();
  readonly #open = new Set<ServerResponse>();
  readonly #unsubscribe: () => void;

  constructor(options: ProgressHubOptions) {
    this.#manager = options.manager;
    this.#clock = options.clock;
    this.#maxStreams = options.maxStreams ?? 10_000;
    this.#refreshMs = options.refreshMs ?? 5_000;
    this.#unsubscribe = this.#manager.onEvent((event: ManagerEvent) => {
      if (event.type !== 'instance-changed') return;
      const subs = this.#byInstance.get(event.instance);
      if (subs === undefined) return;
      for (const s of [...subs]) s();
    });
  }

  get openStreams(): number {
    return this.#open.size;
  }

  snapshot(inst: Instance): ProgressSnapshot {
    return snapshotOf(this.#manager, inst, this.#clock.now());
  }

  /**
   * Streams `inst`'s progress as SSE (https://html.spec.whatwg.org/multipage/server-sent-events.html):
   * a `progress` event now, on every change and every `refreshMs`; `ready` or `failed` ends it.
   */
  serveEvents(req: IncomingMessage, res: ServerResponse, inst: Instance): void {
    if (this.#open.size >= this.#maxStreams) {
      throw new SmartProxyError('SP_HOLD_QUEUE_FULL', 'too many progress streams are open', {
        data: { scope: 'progress-streams' }, retryAfterS: 5,
      });
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      // Tells nginx-like fronts not to buffer the stream.
      'x-accel-buffering': 'no',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    this.#open.add(res);
    let timer: TimerHandle | undefined;
    let subs = this.#byInstance.get(inst);
    if (subs === undefined) {
      subs = new Set();
      this.#byInstance.set(inst, subs);
    }
    let cleaned = false;
    const cleanup = (): void => {
      if (cleaned) return;
      cleaned = true;
      timer?.cancel();
      this.#open.delete(res);
      subs.delete(send);
      // Only the set this stream joined: a later stream may have made a new one.
      if (subs.size === 0 && this.#byInstance.get(inst) === subs) this.#byInstance.delete(inst);
    };
    const send: Subscriber = () => {
      if (res.writableEnded || res.destroyed) return;
      const snap = this.snapshot(inst);
      const event = snap.state === 'ready' ? 'ready' : snap.state === 'failed' ? 'failed' : 'progress';
      res.write(`event: ${event}\ndata: ${JSON.stringify(snap)}\n\n`);
      if (event !== 'progress') {
        cleanup();
        res.end();
      }
    };
    const tick = (): void => {
      send();
      if (this.#open.has(res)) timer = this.#clock.setTimeout(tick, this.#refreshMs);
    };
    subs.add(send);
    res.once('close', cleanup);
    // `retry` tells EventSource how soon to reconnect after a dropped connection.
    res.write('retry: 2000\n\n');
    tick();
  }

  /** Ends every open stream (shutdown). */
  close(): void {
    this.#unsubscribe();
    for (const res of [...this.#open]) res.end();
    this.#open.clear();
    this.#byInstance.clear();
  }
}
