/**
 * Per-client waiting for a resource that is not ready (docs/concepts/waiting.md): the
 * waiting page for a browser, 202 + status URL for `Prefer: respond-async`, a bounded hold
 * for everyone else, and the reserved status/progress endpoints. The data plane decides with
 * `planWait` (prefer.ts) and hands over here; this file owns the answers.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock } from '../core/ports.ts';
import type { Instance, ResourceManager, StartRequester } from '../core/resource-manager.ts';
import { withVary } from './cors.ts';
import { defaultWaitingSettings, planWait, type WaitingSettings, type WaitPlan } from './prefer.ts';
import { eventsPathFor, parseReservedPath, ProgressHub, sendStatus, statusPathFor, type ProgressSnapshot } from './progress-sse.ts';
import type { ParsedTarget } from './route.ts';
import { clientScript } from './waiting-client-script.ts';
import { builtinTheme, renderWaitingPage, type WaitingTheme } from './waiting-page.ts';

/** A resource's waiting settings as the data plane holds them (theme loaded at start-up). */
export interface ResourceWaiting extends WaitingSettings {
  /** The operator's theme; the built-in one when absent. */
  readonly theme?: WaitingTheme | undefined;
}

export interface WaitingRoomOptions {
  readonly manager: ResourceManager;
  readonly clock: Clock;
  /** Open progress streams at once; past it 503. */
  readonly maxProgressStreams?: number;
  /** How often a progress stream repeats the snapshot without a change. */
  readonly progressRefreshMs?: number;
}

/** Reload interval of the page without JavaScript: often enough to feel live, rarely enough to be cheap. */
const MIN_REFRESH_S = 2;
const MAX_REFRESH_S = 5;

export class WaitingRoom {
  readonly hub: ProgressHub;
  readonly #manager: ResourceManager;

  constructor(options: WaitingRoomOptions) {
    this.#manager = options.manager;
    this.hub = new ProgressHub({
      manager: options.manager, clock: options.clock,
      ...(options.maxProgressStreams === undefined ? {} : { maxStreams: options.maxProgressStreams }),
      ...(options.progressRefreshMs === undefined ? {} : { refreshMs: options.progressRefreshMs }),
    });
  }

  /** How `req` waits for `resource` (see prefer.ts). */
  plan(req: IncomingMessage, waiting: ResourceWaiting | undefined, holdTimeoutMs: number): WaitPlan {
    return planWait(req, waiting ?? defaultWaitingSettings, holdTimeoutMs);
  }

  /**
   * Answers at once, without holding: the waiting page (503) or 202 Accepted. Either way the
   * start is triggered first, so the page is never a white screen in front of a start that
   * has not begun. A resource cooling down after a failure gets its error instead.
   */
  answerAtOnce(req: IncomingMessage, res: ServerResponse, plan: 'page' | 'async', inst: Instance, route: ParsedTarget, waiting: ResourceWaiting | undefined, requester?: StartRequester): void {
    // The requester is who the start limits count this start for (src/access/limits.ts).
    const refused = this.#manager.requestStart(inst, requester);
    if (refused !== undefined) throw refused;
    const snap = this.hub.snapshot(inst);
    if (plan === 'async') this.#sendAccepted(req, res, route, snap);
    else this.#sendPage(req, res, route, snap, waiting?.theme ?? builtinTheme());
  }

  /** A hold as `plan` says begins (the data plane holds; see server.ts). */
  holdBegins(res: ServerResponse, plan: Extract<WaitPlan, { kind: 'hold' }>): void {
    // RFC 7240 §3: tell the client its preference shaped the answer (the 200 included).
    if (plan.applied !== undefined) res.setHeader('preference-applied', plan.applied);
  }

  /**
   * A hold as `plan` said ended in `err`: returns the error to answer with, or undefined once
   * answered here (202, when `Prefer: respond-async, wait=N` ran out of time).
   */
  holdFailed(req: IncomingMessage, res: ServerResponse, plan: Extract<WaitPlan, { kind: 'hold' }>, inst: Instance, route: ParsedTarget, err: Error): Error | undefined {
    // Only this client's own hold ran out: the instance is still starting. A boot that
    // timed out has failed, and that error goes out as it is.
    if (!(err instanceof SmartProxyError) || err.code !== 'SP_BOOT_TIMEOUT' || inst.status !== 'starting') return err;
    const snap = this.hub.snapshot(inst);
    if (plan.thenAsync) {
      this.#sendAccepted(req, res, route, snap);
      return undefined;
    }
    return new SmartProxyError('SP_BOOT_TIMEOUT', `not ready within the ${plan.holdMs} ms this request could be held`, {
      data: { ...err.data, waitedMs: plan.holdMs, elapsedMs: snap.elapsedMs, statusUrl: statusPathFor(route) },
      retryAfterS: snap.retryAfterS,
      cause: err,
    });
  }

  /**
   * Serves `/_smart_proxy/{status|events}/{resource_id}/{groups}`. `admit` runs the same
   * route → identify → authorize → select steps as the resource's own requests.
   */
  async serveReserved(req: IncomingMessage, res: ServerResponse, admit: (route: ParsedTarget) => Promise<Instance>): Promise<void> {
    const { kind, route } = parseReservedPath(req.url ?? '');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      // RFC 9110 §15.5.6: a 405 carries Allow (merged into the error response's head).
      res.setHeader('allow', 'GET, HEAD');
      throw new SmartProxyError('SP_ROUTE_METHOD_NOT_ALLOWED', `${kind} answers GET and HEAD only`, { data: { allow: 'GET, HEAD' } });
    }
    const inst = await admit(route);
    if (kind === 'status') sendStatus(req, res, this.hub.snapshot(inst));
    else this.hub.serveEvents(req, res, inst);
  }

  close(): void {
    this.hub.close();
  }

  #sendAccepted(req: IncomingMessage, res: ServerResponse, route: ParsedTarget, snap: ProgressSnapshot): void {
    const statusUrl = statusPathFor(route);
    const body = JSON.stringify({ ...snap, statusUrl });
    res.writeHead(202, {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      location: statusUrl,
      'retry-after': String(snap.retryAfterS),
      'preference-applied': res.getHeader('preference-applied') ?? 'respond-async',
      vary: withVary(res, 'Prefer'),
      'content-length': String(Buffer.byteLength(body)),
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  #sendPage(req: IncomingMessage, res: ServerResponse, route: ParsedTarget, snap: ProgressSnapshot, theme: WaitingTheme): void {
    const page = renderWaitingPage(theme, {
      snapshot: snap,
      path: req.url ?? '/',
      statusUrl: statusPathFor(route),
      eventsUrl: eventsPathFor(route),
      refreshS: Math.min(MAX_REFRESH_S, Math.max(MIN_REFRESH_S, snap.retryAfterS)),
    }, clientScript);
    res.writeHead(503, {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
      'retry-after': String(snap.retryAfterS),
      'content-security-policy': page.csp,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      vary: withVary(res, 'Accept, Prefer'),
      'content-length': String(Buffer.byteLength(page.html)),
    });
    res.end(req.method === 'HEAD' ? undefined : page.html);
  }
}
