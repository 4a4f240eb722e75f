/**
 * One instance of a resource, and the only way its state changes.
 *
 * `Instance` is what everyone outside the core sees: getters, no setters. Its state lives in
 * a private record that only an `InstanceControl` can write, and a control is handed out once,
 * with the instance, to whoever creates it (the registry, for the manager). Every status change
 * is one of the control's transitions, each an edge of the table in lifecycle.ts: an edge that
 * is not in the table throws, so the table is the code and not a description of it. The data
 * that belongs to a status moves with it: an endpoint exists exactly while ready, a handle is
 * dropped when the provider confirmed the stop.
 */
import type { SmartProxyError } from './errors.ts';
import { transition, type InstanceStatus, type LifecycleEvent, type StartPhase } from './lifecycle.ts';
import type { InstanceRef } from './ports.ts';
import type { ResourceRuntime } from './resource-runtime.ts';

/** A held request, woken with the endpoint or rejected. */
export interface Waiter {
  readonly resolve: (endpoint: string) => void;
  readonly reject: (err: Error) => void;
}

interface InstanceState {
  status: InstanceStatus;
  phase: StartPhase | undefined;
  endpoint: string | undefined;
  handle: string | undefined;
  lastError: SmartProxyError | undefined;
  failedUntil: number;
  startRequestedAt: number;
  readyAt: number;
  lastActivityAt: number;
  consecutiveFailures: number;
  activeConnections: number;
  generation: number;
  freshlyReady: boolean;
  startAfterStop: boolean;
  /** An operator drains it: nothing new is forwarded to it; it stops once idle. */
  draining: boolean;
  settledAt: number;
  readonly waiters: Set<Waiter>;
}

/** Reads the private state of an instance; set once by the class, visible in this module only. */
let stateOf: (inst: Instance) => InstanceState;

/**
 * One instance of a resource: the unit that is started, probed, forwarded to and stopped.
 * The data plane reads `status` and `endpoint`: a ready instance is forwarded with no call at
 * all (the warm path makes no provider or store call). It reports connections through the
 * manager's ConnectionPort, never by writing here.
 */
export class Instance {
  readonly resource: ResourceRuntime;
  readonly key: string;
  readonly groups: readonly string[];
  readonly user: string | undefined;
  readonly #s: InstanceState = {
    status: 'stopped', phase: undefined, endpoint: undefined, handle: undefined, lastError: undefined,
    failedUntil: 0, startRequestedAt: 0, readyAt: 0, lastActivityAt: 0, consecutiveFailures: 0,
    activeConnections: 0, generation: 0, freshlyReady: false, startAfterStop: false, draining: false, settledAt: 0,
    waiters: new Set(),
  };

  static {
    stateOf = (inst) => inst.#s;
  }

  constructor(resource: ResourceRuntime, key: string, groups: readonly string[], user: string | undefined) {
    this.resource = resource;
    this.key = key;
    this.groups = groups;
    this.user = user;
  }

  get status(): InstanceStatus { return this.#s.status; }
  /** Progress inside `starting`; undefined in every other status. */
  get phase(): StartPhase | undefined { return this.#s.phase; }
  /** Base URL to forward to; set exactly while ready. */
  get endpoint(): string | undefined { return this.#s.endpoint; }
  get handle(): string | undefined { return this.#s.handle; }
  get lastError(): SmartProxyError | undefined { return this.#s.lastError; }
  /** When the current failure cool-down ends (epoch ms). */
  get failedUntil(): number { return this.#s.failedUntil; }
  get startRequestedAt(): number { return this.#s.startRequestedAt; }
  get readyAt(): number { return this.#s.readyAt; }
  get lastActivityAt(): number { return this.#s.lastActivityAt; }
  /** Failed starts in a row; the cool-down grows with it and resets on ready. */
  get consecutiveFailures(): number { return this.#s.consecutiveFailures; }
  /** Forwards in flight and open tunnels (WebSocket, SSE): never idle-stopped while > 0. */
  get activeConnections(): number { return this.#s.activeConnections; }
  /** Bumped on every start and stop so a superseded loop notices and gives up. */
  get generation(): number { return this.#s.generation; }
  /** True until the first forward after ready is done: that forward retries a refused connection. */
  get freshlyReady(): boolean { return this.#s.freshlyReady; }
  /** A start was asked for (without a held request) while stopping: start once stopped. */
  get startAfterStop(): boolean { return this.#s.startAfterStop; }
  get draining(): boolean { return this.#s.draining; }
  /**
   * Where a new request may go at once (the warm path): ready, nobody held ahead of it (the
   * release ramp goes first), not draining. Undefined: it must wait (waitUntilReady).
   */
  get openEndpoint(): string | undefined {
    const s = this.#s;
    return s.status === 'ready' && s.waiters.size === 0 && !s.draining ? s.endpoint : undefined;
  }
  /** When it was created or last became stopped or failed (forgetting idle instances). */
  get settledAt(): number { return this.#s.settledAt; }
  /** Requests held for this instance, in arrival order. */
  get waiters(): ReadonlySet<Waiter> { return this.#s.waiters; }

  get ref(): InstanceRef {
    return { resourceId: this.resource.id, instanceKey: this.key, groups: this.groups, user: this.user, handle: this.handle };
  }
}

/**
 * Called after every status change, with the instance already in its new status. `actor`:
 * the operator who asked for the change (an admin stop), undefined when the proxy decided.
 */
export type MoveListener = (inst: Instance, event: LifecycleEvent, reason: string | undefined, actor: string | undefined) => void;

/** What a failed start leaves on the instance. */
export interface FailureRecord {
  readonly error: SmartProxyError;
  /** End of the cool-down (epoch ms); 0: none of its own. */
  readonly failedUntil: number;
  /** Counts towards the growing cool-down (a start that failed here, not elsewhere). */
  readonly counted: boolean;
}

/**
 * The writer of one instance's state. Transitions are named after the lifecycle events and
 * go through `transition()`; the few plain fields (handle, activity, counters) have narrow
 * setters that cannot change the status.
 */
export class InstanceControl {
  readonly instance: Instance;
  readonly #s: InstanceState;
  readonly #now: () => number;
  readonly #onMove: MoveListener;

  constructor(instance: Instance, now: () => number, onMove: MoveListener) {
    this.instance = instance;
    this.#s = stateOf(instance);
    this.#now = now;
    this.#onMove = onMove;
    this.#s.settledAt = now();
  }

  /** The held requests, for the hold queue (the only unit that adds or removes them). */
  get waiters(): Set<Waiter> { return this.#s.waiters; }

  // -- transitions (lifecycle.ts) -------------------------------------------------------

  /** stopped/failed → starting. */
  start(reason?: string): void {
    this.#move('start', reason);
  }

  /** A start flight begins (the instance is starting): supersedes older loops; returns its generation. */
  beginFlight(startRequestedAt: number): number {
    if (this.#s.status !== 'starting') throw new Error(`a start flight outside starting (${this.#s.status})`);
    this.#s.startRequestedAt = startRequestedAt;
    this.#s.lastError = undefined;
    return ++this.#s.generation;
  }

  /** → ready at `endpoint`. `fresh`: a boot just finished (not a re-adoption). */
  ready(endpoint: string, readyAt: number, fresh: boolean, reason?: string): void {
    this.#s.endpoint = endpoint;
    this.#s.readyAt = readyAt;
    this.#s.consecutiveFailures = 0;
    if (fresh) {
      // A boot counts as activity: the idle period starts at readiness.
      this.#s.lastActivityAt = readyAt;
      this.#s.freshlyReady = true;
    }
    this.#move('ready', reason);
  }

  /** starting → failed, with what the failure leaves behind. */
  fail(failure: FailureRecord): void {
    this.#s.lastError = failure.error;
    if (failure.counted) this.#s.consecutiveFailures++;
    this.#s.failedUntil = failure.failedUntil;
    this.#move('fail', failure.error.message);
  }

  /** ready/starting → starting: the backend stopped answering; a new flight finds it again. */
  lost(reason: string): void {
    this.#move('lost', reason);
  }

  /** → stopping; `actor`: the operator who asked for it, if one did. */
  beginStop(reason: string, actor?: string): void {
    this.#move('stop', reason, actor);
  }

  /** stopping → stopped: the provider confirmed. */
  stopped(reason: string, actor?: string): void {
    this.#s.handle = undefined;
    this.#move('stopped', reason, actor);
  }

  /**
   * stopping → stopped: the stop failed. The handle is kept: the machine may still run, and
   * the next start (or stop) must find that one rather than make another.
   */
  stopFailed(reason: string, actor?: string): void {
    this.#move('fail', reason, actor);
  }

  /** → stopped: the provider no longer knows it. `dropHandle`: forget the provider's handle too. */
  vanished(reason: string, dropHandle: boolean): void {
    if (dropHandle) this.#s.handle = undefined;
    this.#move('vanished', reason);
  }

  /** Finer progress inside `starting`; returns false when it did not change. */
  setPhase(phase: StartPhase): boolean {
    if (this.#s.status !== 'starting') throw new Error(`start phase ${phase} outside starting (${this.#s.status})`);
    if (this.#s.phase === phase) return false;
    this.#s.phase = phase;
    return true;
  }

  // -- plain fields ---------------------------------------------------------------------

  /** Supersedes every loop of the current generation; returns the new one. */
  supersede(): number {
    return ++this.#s.generation;
  }

  setHandle(handle: string | undefined): void {
    this.#s.handle = handle;
  }

  /** Marks use; never moves the mark back. */
  touch(at: number): void {
    if (at > this.#s.lastActivityAt) this.#s.lastActivityAt = at;
  }

  /** Sets the activity mark as recorded (re-adoption: the idle timer goes on from there). */
  restoreActivity(at: number): void {
    this.#s.lastActivityAt = at;
  }

  /** A re-adopted instance keeps the start and ready times it had before the restart. */
  restoreTimes(startRequestedAt: number | undefined, readyAt: number | undefined): void {
    if (startRequestedAt !== undefined) this.#s.startRequestedAt = startRequestedAt;
    if (readyAt !== undefined) this.#s.readyAt = readyAt;
  }

  connectionBegun(): void {
    this.#s.activeConnections++;
  }

  /** Returns false for an end without a beginning (a bug elsewhere; the count stays ≥ 0). */
  connectionEnded(): boolean {
    if (this.#s.activeConnections <= 0) return false;
    this.#s.activeConnections--;
    return true;
  }

  firstForwardDone(): void {
    this.#s.freshlyReady = false;
  }

  setStartAfterStop(wanted: boolean): void {
    this.#s.startAfterStop = wanted;
  }

  /** Marks the instance as draining (ready or starting only); the mark ends when it stops. */
  beginDrain(): boolean {
    if (this.#s.status !== 'ready' && this.#s.status !== 'starting') return false;
    this.#s.draining = true;
    return true;
  }

  #move(event: LifecycleEvent, reason: string | undefined, actor?: string): void {
    const s = this.#s;
    const next = transition(s.status, event);
    if (next === undefined) throw new Error(`invalid lifecycle move: ${s.status} --${event}-->`);
    s.status = next;
    if (next !== 'starting') s.phase = undefined;
    if (next !== 'ready') s.endpoint = undefined;
    if (next === 'stopped' || next === 'failed') s.settledAt = this.#now();
    // A drain ends with the stop (or failure) it was waiting for; a new start serves anew.
    if (next !== 'ready' && next !== 'starting') s.draining = false;
    this.#onMove(this.instance, event, reason, actor);
  }
}
