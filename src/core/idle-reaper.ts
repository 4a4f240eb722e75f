/**
 * The idle decision for one ready instance, kept pure so every rule is tested on its own.
 * The resource manager owns the timers and calls this at each check.
 *
 * Rules, in order:
 * 1. Never stop under a user: an open connection (forward in flight, WebSocket, SSE, long
 *    response) or a held request keeps the instance.
 * 2. Keep-warm: never stop below the resource's floor at this moment.
 * 3. Stop once `idleStopMs` have passed since the last activity (a request, or a connection
 *    closing). The last activity survives a proxy restart (state store), so the timer goes
 *    on instead of starting over.
 */

export interface IdleInput {
  readonly nowMs: number;
  readonly idleStopMs: number;
  readonly lastActivityAt: number;
  readonly activeConnections: number;
  readonly heldRequests: number;
  /** True when stopping this instance would take the resource below its keep-warm floor. */
  readonly keptWarm: boolean;
  /** When the keep-warm floor may change next (epoch ms), if ever. */
  readonly keepWarmChangesAt?: number | undefined;
}

export type IdleVerdict =
  | { readonly stop: true; readonly idleForMs: number }
  | { readonly stop: false; readonly recheckInMs: number; readonly why: 'in-use' | 'kept-warm' | 'recent-activity' };

export function idleVerdict(i: IdleInput): IdleVerdict {
  const idleForMs = i.nowMs - i.lastActivityAt;
  if (i.activeConnections > 0 || i.heldRequests > 0) {
    // The closing connection marks activity, so the earliest stop is a full period away.
    return { stop: false, recheckInMs: i.idleStopMs, why: 'in-use' };
  }
  if (i.keptWarm) {
    const untilChange = i.keepWarmChangesAt === undefined ? i.idleStopMs : i.keepWarmChangesAt - i.nowMs;
    return { stop: false, recheckInMs: Math.max(1, Math.min(i.idleStopMs, untilChange)), why: 'kept-warm' };
  }
  if (idleForMs >= i.idleStopMs) return { stop: true, idleForMs };
  return { stop: false, recheckInMs: Math.max(1, i.idleStopMs - idleForMs), why: 'recent-activity' };
}
