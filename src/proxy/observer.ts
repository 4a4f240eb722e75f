/**
 * What the data plane tells observers (metrics, the access log) about each request. The
 * server fills one small record per request and hands it over when the response ends; with
 * no observer configured it creates nothing at all.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { LingerOutcome } from './linger.ts';

/** One request as far as the data plane got with it. */
export class RequestRecord {
  /** `performance.now()` when the request arrived. */
  readonly startedAt: number = performance.now();
  /** The configured resource it routed to; undefined when it never got that far. */
  resourceId: string | undefined = undefined;
  /** The verified user, for the access log only (never a metric label). */
  user: string | undefined = undefined;
  /** Forwarded at once to a ready instance (the warm path). */
  warm = false;
  /** Time it waited for a start, in ms; undefined when it did not wait. */
  wokeMs: number | undefined = undefined;
}

/**
 * One WebSocket upgrade, from its handshake request to the end of its tunnel. An upgrade has
 * no ServerResponse, so the forwarder writes down what the access log and the metrics need.
 */
export class UpgradeRecord extends RequestRecord {
  /** What the client was answered: 101 (tunnel), the backend's non-101 or the proxy's error status; undefined: it left before any answer. */
  status: number | undefined = undefined;
  /** `performance.now()` when that answer was written. */
  answeredAt: number | undefined = undefined;
  /** Bytes the client sent after its handshake request (WebSocket frames through the tunnel). */
  bytesIn = 0;
  /** Bytes sent to the client after the answer's head (frames, or the body of a non-101 answer). */
  bytesOut = 0;
}

/** How a hold ended (the hold-time histogram's `outcome`). */
export type HoldOutcome = 'ready' | 'failed' | 'client_gone';

export interface RequestObserver {
  /** Once per request, when its response has ended or its connection closed. */
  finished(req: IncomingMessage, res: ServerResponse, record: RequestRecord): void;
  /** Once per hold (a request waiting for an instance), when it ends. */
  held(resourceId: string, heldMs: number, outcome: HoldOutcome): void;
  /** Once per WebSocket upgrade, when its connection to the client has closed (the tunnel's end). */
  upgraded(req: IncomingMessage, record: UpgradeRecord): void;
  /** Once per refused request whose unread body was drained (or cut) after its answer (linger.ts). */
  lingered?(outcome: LingerOutcome, discardedBytes: number): void;
}

/** Several observers as one; undefined when there is none, so the server skips all work. */
export function combineObservers(list: ReadonlyArray<RequestObserver | undefined>): RequestObserver | undefined {
  const present = list.filter((o): o is RequestObserver => o !== undefined);
  if (present.length <= 1) return present[0];
  return {
    finished: (req, res, record) => { for (const o of present) o.finished(req, res, record); },
    held: (resourceId, heldMs, outcome) => { for (const o of present) o.held(resourceId, heldMs, outcome); },
    upgraded: (req, record) => { for (const o of present) o.upgraded(req, record); },
    lingered: (outcome, bytes) => { for (const o of present) o.lingered?.(outcome, bytes); },
  };
}
