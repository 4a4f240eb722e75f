/**
 * Who may wake how much: limits on instances starting at once and on instances starting or
 * running, in total, per user and per group (like JupyterHub's `concurrent_spawn_limit` and
 * `active_server_limit`). Waking is the expensive act, so the check sits exactly where a start
 * would be triggered: the resource manager calls `admit` synchronously just before it starts a
 * stopped instance, and starts it in the same tick, so no flood of concurrent requests can
 * slip between the check and the count.
 *
 * An instance counts for the user and the groups of the request that woke it (its "owner");
 * an instance started without a request (re-adopted after a restart, kept warm) counts for
 * the user and groups it was started for. Counts follow the manager's events: starting → counted as starting and running;
 * ready or stopping → running only; stopped or failed → not counted.
 */
import { SmartProxyError } from '../core/errors.ts';
import type { Clock } from '../core/ports.ts';
import type { Instance } from '../core/instance.ts';
import type { ManagerEvent } from '../core/manager-events.ts';
import type { StartRequester } from '../core/resource-runtime.ts';
import type { AuditActor, AuditSink } from './audit.ts';

export interface LimitScopes {
  readonly total?: number | undefined;
  readonly perUser?: number | undefined;
  readonly perGroup?: number | undefined;
}

export interface LimitSettings {
  readonly concurrentStarts: LimitScopes;
  readonly runningInstances: LimitScopes;
  readonly runningRetryAfterMs: number;
}

interface Tracked {
  readonly owner: StartRequester;
  starting: boolean;
  /**
   * The request that admitted the coming start (its audit actor), consumed by that start:
   * a later start of the same instance without a request (a restart) is the system's.
   */
  by: StartRequester | undefined;
}

class Counts {
  total = 0;
  readonly byUser = new Map<string, number>();
  readonly byGroup = new Map<string, number>();

  add(owner: StartRequester, delta: 1 | -1): void {
    this.total += delta;
    if (owner.user !== undefined) bump(this.byUser, owner.user, delta);
    for (const g of owner.groups) bump(this.byGroup, g, delta);
  }
}

function bump(map: Map<string, number>, key: string, delta: number): void {
  const n = (map.get(key) ?? 0) + delta;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

interface Exceeded {
  readonly limit: string;
  readonly max: number;
  readonly current: number;
  readonly subject: string;
}

export class StartLimiter {
  #settings: LimitSettings;
  readonly #clock: Clock;
  readonly #audit: AuditSink;
  readonly #startRetryAfterS: (resourceId: string) => number;
  readonly #tracked = new Map<Instance, Tracked>();
  /** Who asked for an instance that will start again once its stop completes. */
  readonly #pendingOwner = new WeakMap<Instance, StartRequester>();
  readonly starting = new Counts();
  readonly running = new Counts();

  constructor(settings: LimitSettings, deps: { clock: Clock; audit: AuditSink; startRetryAfterS?: (resourceId: string) => number }) {
    this.#settings = settings;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#startRetryAfterS = deps.startRetryAfterS ?? (() => 5);
  }

  /**
   * New limits (a configuration reload). The counts go on: instances already running or
   * starting count against the new limits, and none is stopped for being over them.
   */
  replaceSettings(settings: LimitSettings): void {
    this.#settings = settings;
  }

  /**
   * The resource manager's `admitStart`: undefined lets the start happen (and counts it);
   * an error refuses it. Must stay synchronous (see the file comment).
   */
  readonly admit = (inst: Instance, requester: StartRequester | undefined): SmartProxyError | undefined => {
    if (this.#tracked.has(inst)) {
      // Still counted (a stop in progress that the manager will follow with a start).
      if (requester !== undefined) this.#pendingOwner.set(inst, requester);
      return undefined;
    }
    const owner = requester ?? ownerOf(inst);
    const hit = this.#check(this.starting, this.#settings.concurrentStarts, 'concurrentStarts', owner)
      ?? this.#check(this.running, this.#settings.runningInstances, 'runningInstances', owner);
    if (hit !== undefined) {
      this.#audit.record({
        type: 'limit', at: this.#clock.now(), actor: actorOf(requester), resource: inst.resource.id, instance: inst.key,
        limit: hit.limit, max: hit.max, current: hit.current,
      });
      const starts = hit.limit.startsWith('concurrentStarts');
      return new SmartProxyError('SP_LIMIT_EXCEEDED', `limit reached: ${hit.limit} allows ${hit.max} ${starts ? 'instances starting at once' : 'instances running'}${hit.subject}; try again later`, {
        data: { resource: inst.resource.id, limit: hit.limit, max: hit.max },
        retryAfterS: starts ? this.#startRetryAfterS(inst.resource.id) : Math.max(1, Math.ceil(this.#settings.runningRetryAfterMs / 1000)),
      });
    }
    this.#track(inst, owner, requester);
    return undefined;
  };

  /** Keeps the counts in step with the instances; subscribe with `manager.onEvent`. */
  readonly onEvent = (event: ManagerEvent): void => {
    const inst = event.instance;
    if (event.type === 'start-requested') {
      const t = this.#tracked.get(inst);
      const by = t?.by;
      if (t !== undefined) t.by = undefined;
      this.#audit.record({
        type: 'start', at: event.at, actor: by === undefined ? SYSTEM_ACTOR : actorOf(by), resource: inst.resource.id, instance: inst.key,
        groups: t?.owner?.groups ?? inst.groups,
      });
      return;
    }
    if (event.type !== 'instance-changed') return;
    const t = this.#tracked.get(inst);
    switch (inst.status) {
      case 'starting':
        if (t === undefined) {
          const pending = this.#pendingOwner.get(inst);
          this.#track(inst, pending ?? ownerOf(inst), pending);
        }
        else if (!t.starting) {
          t.starting = true;
          this.starting.add(t.owner, 1);
        }
        this.#pendingOwner.delete(inst);
        return;
      case 'ready':
      case 'stopping':
        if (t?.starting === true) {
          t.starting = false;
          this.starting.add(t.owner, -1);
        }
        return;
      case 'stopped':
      case 'failed':
        if (t === undefined) return;
        if (t.starting) this.starting.add(t.owner, -1);
        this.running.add(t.owner, -1);
        this.#tracked.delete(inst);
        return;
    }
  };

  #track(inst: Instance, owner: StartRequester, by: StartRequester | undefined): void {
    this.#tracked.set(inst, { owner, starting: true, by });
    this.starting.add(owner, 1);
    this.running.add(owner, 1);
  }

  #check(counts: Counts, scopes: LimitScopes, name: string, requester: StartRequester): Exceeded | undefined {
    if (scopes.total !== undefined && counts.total >= scopes.total) {
      return { limit: `${name}.total`, max: scopes.total, current: counts.total, subject: '' };
    }
    if (scopes.perUser !== undefined && requester.user !== undefined) {
      const n = counts.byUser.get(requester.user) ?? 0;
      if (n >= scopes.perUser) return { limit: `${name}.perUser`, max: scopes.perUser, current: n, subject: ' per user' };
    }
    if (scopes.perGroup !== undefined) {
      for (const g of requester.groups) {
        const n = counts.byGroup.get(g) ?? 0;
        if (n >= scopes.perGroup) return { limit: `${name}.perGroup`, max: scopes.perGroup, current: n, subject: ` for group "${g}"` };
      }
    }
    return undefined;
  }
}

/** Who an instance is for when no request asked: the user and groups it was started for. */
function ownerOf(inst: Instance): StartRequester {
  return { user: inst.user, groups: inst.groups };
}

/** The actor of starts no request asked for (keep-warm, restarts, re-adoption). */
const SYSTEM_ACTOR: AuditActor = { user: undefined, via: 'system' };

/**
 * The requester's actor as audited. The actor's own user comes first: an operator's start is
 * made for the instance's user (the counts) but done by the operator (the audit).
 */
function actorOf(requester: StartRequester | undefined): AuditActor | undefined {
  if (requester === undefined) return undefined;
  const actor = requester.actor as { user?: string; via?: AuditActor['via']; remoteAddress?: string } | undefined;
  return { user: actor?.user ?? requester.user, via: actor?.via ?? 'unknown', remoteAddress: actor?.remoteAddress };
}
