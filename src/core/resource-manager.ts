import { SmartProxyError, isSmartProxyError, ProviderError } from './errors.ts';
import { transition, type InstanceStatus, type LifecycleEvent, type StartPhase } from './lifecycle.ts';
import type { Coordinator, StartLease } from './coordination.ts';
import type { Clock, InspectResult, InstanceRef, Logger, Prober, ProbeSpec, Provider, TimerHandle } from './ports.ts';
import { defaultCircuitSettings, isUnreachable, ProviderCircuit, type CircuitSettings } from './provider-circuit.ts';
import { BootHistory, type BootEstimate } from './boot-history.ts';
import { idleVerdict } from './idle-reaper.ts';
import type { KeepWarmPolicy, KeepWarmTarget } from './keep-warm.ts';
import { nextPollDelayMs } from './poll-schedule.ts';
import { ReleaseRamp } from './release-ramp.ts';

/** How instances of a resource are shared between users (see docs/concepts/access.md). */
export type SharingMode = 'shared' | 'groups' | 'user';

/** What the core needs to know of one configured resource. Built once from the config. */
export interface ResourceRuntime {
  readonly id: string;
  readonly provider: Provider;
  readonly sharing: SharingMode;
  /** From the start call to ready; past it the start fails with SP_BOOT_TIMEOUT. */
  readonly bootTimeoutMs: number;
  readonly probe: ProbeSpec;
  /** Pause between two probes once the provider says running. */
  readonly probeIntervalMs: number;
  /** Provider polling backs off from min to max while the provider says starting. */
  readonly pollIntervalMinMs: number;
  readonly pollIntervalMaxMs: number;
  /** Each provider call is cut after this long (and retried if time is left). */
  readonly providerCallTimeoutMs: number;
  /** After a failed start, requests get SP_RESOURCE_FAILED for this long. */
  readonly failureCooldownMs: number;
  /** Requests held for this resource at once (over all its instances). */
  readonly maxHeldRequests: number;
  /** Stop an instance after this long without activity; 0 keeps it running. */
  readonly idleStopMs: number;
  /** Held requests released at once onto a fresh backend; more follow as forwards finish. Default 64. */
  readonly releaseConcurrency?: number | undefined;
  /** How often the provider is asked whether a ready instance still exists; 0 or absent: never. */
  readonly healthCheckIntervalMs?: number | undefined;
  /** A floor on running instances, always and in time windows. */
  readonly keepWarm?: KeepWarmPolicy | undefined;
}

/** Who a start would be made for: the verified caller and the groups it acts with. */
export interface StartRequester {
  readonly user: string | undefined;
  readonly groups: readonly string[];
  /** Opaque to the core: the access layer's record of the caller, for its audit. */
  readonly actor?: unknown;
}

/**
 * Admission of a start (limits, src/access/limits.ts). Called synchronously just before a
 * request would start a stopped, failed or stopping instance, never for one that is ready or
 * already starting (joining a boot is free); the start follows in the same tick, so a count
 * kept by the callback cannot be raced. An error refuses the start and rejects the request.
 */
export type AdmitStart = (inst: Instance, requester: StartRequester | undefined) => SmartProxyError | undefined;

/** What a restarted proxy knows of an instance it may re-adopt (state store or provider list). */
export interface AdoptionRecord {
  readonly instanceKey: string;
  readonly groups: readonly string[];
  readonly user?: string | undefined;
  readonly handle?: string | undefined;
  /** Epoch ms; the idle timer goes on from here instead of starting over. */
  readonly lastActivityAt: number;
  readonly startRequestedAt?: number | undefined;
  readonly readyAt?: number | undefined;
}

const DEFAULT_RELEASE_CONCURRENCY = 64;
/** A ramp with no free slot for this long lets one more batch go (see release-ramp.ts). */
const RELEASE_STALL_MS = 2_000;
/** Consecutive failed starts double the cool-down, up to this factor (circuit breaker). */
const MAX_COOLDOWN_FACTOR = 16;

export interface ManagerOptions {
  readonly clock: Clock;
  readonly prober: Prober;
  readonly logger: Logger;
  /** Requests held at once over all resources. */
  readonly maxHeldRequestsTotal: number;
  readonly admitStart?: AdmitStart | undefined;
  /**
   * Many replicas: consulted only where a provider would be called (a start, an idle stop),
   * never on the warm path. Absent in a single process. See core/coordination.ts.
   */
  readonly coordinator?: Coordinator | undefined;
  /** The circuit breaker of each provider's API (see provider-circuit.ts). */
  readonly providerCircuit?: CircuitSettings | undefined;
  /**
   * A stopped (or failed and cooled) instance nobody uses is forgotten this long after it
   * settled, so that per-user and per-group-set instances do not accumulate forever.
   */
  readonly forgetStoppedAfterMs?: number | undefined;
}

/** Default of `forgetStoppedAfterMs`. */
export const DEFAULT_FORGET_STOPPED_AFTER_MS = 600_000;

/** Published on every change that a waiting person, the audit log or metrics care about. */
export type ManagerEvent =
  | { readonly type: 'instance-changed'; readonly instance: Instance; readonly at: number; readonly reason?: string | undefined }
  | { readonly type: 'start-requested'; readonly instance: Instance; readonly at: number }
  | { readonly type: 'boot-finished'; readonly instance: Instance; readonly at: number; readonly bootMs: number }
  | { readonly type: 'instance-adopted'; readonly instance: Instance; readonly at: number };

export type ManagerListener = (event: ManagerEvent) => void;

interface Waiter {
  readonly resolve: (endpoint: string) => void;
  readonly reject: (err: Error) => void;
}

/**
 * One instance of a resource: the unit that is started, probed, forwarded to and stopped.
 * The data plane reads `status` and `endpoint` directly: a ready instance is forwarded with
 * no call at all (the warm path makes no provider or store call).
 */
export class Instance {
  readonly resource: ResourceRuntime;
  readonly key: string;
  readonly groups: readonly string[];
  readonly user: string | undefined;
  status: InstanceStatus = 'stopped';
  phase: StartPhase | undefined;
  /** Base URL to forward to; set only while ready. */
  endpoint: string | undefined;
  handle: string | undefined;
  lastError: SmartProxyError | undefined;
  /** When the current failure cool-down ends (epoch ms). */
  failedUntil = 0;
  startRequestedAt = 0;
  readyAt = 0;
  lastActivityAt = 0;
  /** Failed starts in a row; the cool-down grows with it and resets on ready. */
  consecutiveFailures = 0;
  #activeConnections = 0;
  /** Called when a connection ends (the release ramp lets the next held request go). */
  onConnectionEnded: (() => void) | undefined;
  /** Bumped on every start and stop so a superseded loop notices and gives up. */
  generation = 0;
  /** Set on the first forward after ready: that forward retries a refused connection. */
  freshlyReady = false;
  /** A start was asked for (without a held request) while stopping: start once stopped. */
  startAfterStop = false;
  /** When it was created or last became stopped or failed (forgetting idle instances). */
  settledAt = 0;
  readonly waiters = new Set<Waiter>();

  constructor(resource: ResourceRuntime, key: string, groups: readonly string[], user: string | undefined) {
    this.resource = resource;
    this.key = key;
    this.groups = groups;
    this.user = user;
  }

  /**
   * Forwards in flight and open tunnels (WebSocket, SSE): never idle-stopped while > 0.
   * The data plane does `++` and `--`; an accessor so that an ending connection can wake
   * the release ramp without every caller knowing about it.
   */
  get activeConnections(): number {
    return this.#activeConnections;
  }

  set activeConnections(n: number) {
    const ended = n < this.#activeConnections;
    this.#activeConnections = n;
    if (ended) this.onConnectionEnded?.();
  }

  get ref(): InstanceRef {
    return { resourceId: this.resource.id, instanceKey: this.key, groups: this.groups, user: this.user, handle: this.handle };
  }
}

class Aborted extends Error {}

/**
 * The control plane: selects instances, starts each at most once at a time (single
 * flight), learns readiness by provider state then probe, and wakes held requests through
 * an in-memory broadcast. Held requests never call a provider; they wait on `waiters`.
 */
export class ResourceManager {
  readonly #clock: Clock;
  readonly #prober: Prober;
  readonly #log: Logger;
  readonly #maxHeldTotal: number;
  readonly #admitStart: AdmitStart | undefined;
  readonly #instances = new Map<string, Map<string, Instance>>();
  readonly #heldByResource = new Map<string, number>();
  readonly #listeners = new Set<ManagerListener>();
  readonly #history = new BootHistory();
  readonly #idleTimers = new Map<Instance, TimerHandle>();
  readonly #healthTimers = new Map<Instance, TimerHandle>();
  readonly #ramps = new Map<Instance, ReleaseRamp<Waiter>>();
  /** Stops in progress, so a second `stop()` returns the same promise. */
  readonly #stopping = new Map<Instance, Promise<void>>();
  /** Endpoints found unreachable, so the cluster's stale "ready" record is not believed. */
  readonly #lostEndpoints = new Map<Instance, string>();
  readonly #coordinator: Coordinator | undefined;
  readonly #circuits = new WeakMap<Provider, ProviderCircuit>();
  readonly #circuitSettings: CircuitSettings;
  readonly #forgetAfterMs: number;
  /** Per resource: sweep forgettable instances when the map reaches this size. */
  readonly #sweepAt = new Map<string, number>();
  #forgetTimer: TimerHandle | undefined;
  #heldTotal = 0;
  #closed = false;

  constructor(options: ManagerOptions) {
    this.#coordinator = options.coordinator;
    this.#circuitSettings = options.providerCircuit ?? defaultCircuitSettings;
    this.#forgetAfterMs = options.forgetStoppedAfterMs ?? DEFAULT_FORGET_STOPPED_AFTER_MS;
    this.#clock = options.clock;
    this.#prober = options.prober;
    this.#log = options.logger;
    this.#maxHeldTotal = options.maxHeldRequestsTotal;
    this.#admitStart = options.admitStart;
  }

  /** Requests held right now over all resources. */
  get heldTotal(): number {
    return this.#heldTotal;
  }

  onEvent(listener: ManagerListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Boot-time estimate learnt from this resource's past boots. */
  estimateBoot(resourceId: string): BootEstimate | undefined {
    return this.#history.estimate(resourceId);
  }

  recordBootSample(resourceId: string, bootMs: number): void {
    this.#history.add(resourceId, bootMs);
  }

  /** Every instance known for a resource (any status). */
  instancesOf(resourceId: string): Iterable<Instance> {
    return this.#instances.get(resourceId)?.values() ?? [];
  }

  /** Every known instance. */
  *allInstances(): Iterable<Instance> {
    for (const byKey of this.#instances.values()) yield* byKey.values();
  }

  /**
   * Picks the instance a request acting with `groups` (sorted, unique) as `user` goes to,
   * creating an unstarted one if none fits. In `groups` mode an instance started for a group
   * set is reused by any request whose groups include that set (the original's model); a
   * ready one is preferred, then one that is already starting, so no second start happens
   * while a fitting instance boots.
   */
  selectInstance(resource: ResourceRuntime, groups: readonly string[], user: string | undefined): Instance {
    let byKey = this.#instances.get(resource.id);
    if (byKey === undefined) {
      byKey = new Map();
      this.#instances.set(resource.id, byKey);
    }
    let key: string;
    let instGroups = groups;
    let instUser: string | undefined;
    switch (resource.sharing) {
      case 'shared':
        key = '*';
        instGroups = [];
        break;
      case 'user':
        key = `user:${user ?? ''}`;
        instUser = user;
        break;
      case 'groups':
        key = groups.length === 0 ? '*' : groups.join(',');
        break;
    }
    const exact = byKey.get(key);
    if (exact !== undefined && exact.status === 'ready') return exact;
    if (resource.sharing === 'groups') {
      const fit = pickSubsetInstance(byKey.values(), groups);
      if (fit !== undefined) return fit;
    }
    // An instance made under a resource's previous settings (before a configuration reload)
    // keeps them while it runs; once stopped it is replaced, so the next start uses the new ones.
    if (exact !== undefined && (exact.resource === resource || (exact.status !== 'stopped' && exact.status !== 'failed'))) return exact;
    // Growth happens only here: an amortised sweep keeps the map within twice what is in use.
    if (byKey.size >= (this.#sweepAt.get(resource.id) ?? 64)) this.#sweep(resource.id, byKey);
    const created = new Instance(resource, key, instGroups, instUser);
    created.settledAt = this.#clock.now();
    byKey.set(key, created);
    this.#armForget();
    return created;
  }

  /** Instances known right now, over all resources (tests and metrics: bounded memory). */
  get instanceCount(): number {
    let n = 0;
    for (const byKey of this.#instances.values()) n += byKey.size;
    return n;
  }

  /** The circuit of a provider's API (created closed on first use). */
  circuitOf(provider: Provider): ProviderCircuit {
    let c = this.#circuits.get(provider);
    if (c === undefined) {
      c = new ProviderCircuit(this.#clock, this.#circuitSettings);
      this.#circuits.set(provider, c);
    }
    return c;
  }

  /**
   * Re-adopts an instance that was running before a restart (state store or provider
   * `list`). It goes to `starting` at once, so requests arriving meanwhile join it instead of
   * starting another; then the provider is asked (inspect, never start): running → probe →
   * ready, with the idle timer going on from the recorded activity; gone → `stopped`
   * (or started afresh if requests are already waiting). Returns undefined when an instance
   * with that key is already known (nothing to adopt).
   */
  adopt(resource: ResourceRuntime, record: AdoptionRecord): Instance | undefined {
    let byKey = this.#instances.get(resource.id);
    if (byKey === undefined) {
      byKey = new Map();
      this.#instances.set(resource.id, byKey);
    }
    const known = byKey.get(record.instanceKey);
    if (known !== undefined && known.status !== 'stopped') return undefined;
    if (this.#closed) return undefined;
    const inst = known ?? new Instance(resource, record.instanceKey, record.groups, record.user);
    byKey.set(record.instanceKey, inst);
    inst.handle = record.handle;
    inst.lastActivityAt = record.lastActivityAt;
    void this.#runStart(inst, record);
    return inst;
  }

  /** Instances of a resource that are ready or starting (keep-warm counts these). */
  runningCount(resourceId: string): number {
    let n = 0;
    for (const i of this.instancesOf(resourceId)) if (i.status === 'ready' || i.status === 'starting') n++;
    return n;
  }

  /** The control plane as keep-warm sees it. */
  keepWarmTarget(resources: ReadonlyMap<string, ResourceRuntime>): KeepWarmTarget {
    return {
      runningCount: (id) => this.runningCount(id),
      startKeptWarm: (id, groups) => {
        const res = resources.get(id);
        if (res === undefined) return 'unknown resource';
        const inst = this.selectInstance(res, groups, undefined);
        if (inst.status === 'ready' || inst.status === 'starting') return undefined;
        return this.requestStart(inst)?.message;
      },
    };
  }

  /**
   * Marks use of an instance; O(1), no I/O. `atMs` may lie ahead: a front
   * proxy granted use until then without asking again (src/front/). Never moves a mark back.
   */
  touch(inst: Instance, atMs?: number): void {
    const at = atMs ?? this.#clock.now();
    if (at > inst.lastActivityAt) inst.lastActivityAt = at;
  }

  /**
   * Resolves with the endpoint once `inst` is ready, starting it if needed. Rejects with
   * SP_HOLD_QUEUE_FULL past the bounds (checked before anything is started), with
   * SP_RESOURCE_FAILED during a failure cool-down, with SP_BOOT_TIMEOUT after `timeoutMs`,
   * with the start's own error if it fails, or with `signal.reason` when the client leaves.
   */
  waitUntilReady(inst: Instance, options: { readonly signal?: AbortSignal | undefined; readonly timeoutMs: number; readonly requester?: StartRequester | undefined }): Promise<string> {
    // While the release ramp still holds requests, a newcomer queues behind them.
    if (inst.status === 'ready' && inst.endpoint !== undefined && inst.waiters.size === 0) return Promise.resolve(inst.endpoint);
    if (this.#closed) return Promise.reject(new SmartProxyError('SP_SHUTTING_DOWN'));
    const coolDown = this.#coolingDown(inst) ?? this.providerDown(inst);
    if (coolDown !== undefined) return Promise.reject(coolDown);
    const resourceId = inst.resource.id;
    const heldHere = this.#heldByResource.get(resourceId) ?? 0;
    if (heldHere >= inst.resource.maxHeldRequests || this.#heldTotal >= this.#maxHeldTotal) {
      const scope = heldHere >= inst.resource.maxHeldRequests ? 'resource' : 'total';
      return Promise.reject(new SmartProxyError('SP_HOLD_QUEUE_FULL', undefined, {
        data: { resource: resourceId, scope }, retryAfterS: this.#retryAfterS(inst),
      }));
    }
    const { signal, timeoutMs } = options;
    if (signal?.aborted === true) return Promise.reject(asError(signal.reason));
    // Last check before a start: the promise below starts the instance in this same tick.
    const refused = this.#admit(inst, options.requester);
    if (refused !== undefined) return Promise.reject(refused);

    return new Promise<string>((resolve, reject) => {
      const done = (): void => {
        inst.waiters.delete(waiter);
        timer.cancel();
        signal?.removeEventListener('abort', onAbort);
        this.#heldTotal--;
        this.#heldByResource.set(resourceId, (this.#heldByResource.get(resourceId) ?? 1) - 1);
      };
      const waiter: Waiter = {
        resolve: (endpoint) => { done(); resolve(endpoint); },
        reject: (err) => { done(); reject(err); },
      };
      const onAbort = (): void => waiter.reject(asError(signal?.reason));
      inst.waiters.add(waiter);
      this.#heldTotal++;
      this.#heldByResource.set(resourceId, heldHere + 1);
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer: TimerHandle = this.#clock.setTimeout(() => {
        waiter.reject(new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
          data: { resource: resourceId, waitedMs: timeoutMs }, retryAfterS: this.#retryAfterS(inst),
        }));
      }, timeoutMs);
      this.#ensureStarted(inst);
    });
  }

  /**
   * Starts `inst` without holding a request (keep-warm, `Prefer: respond-async`).
   * Returns the cool-down error instead of starting when the resource failed recently.
   */
  requestStart(inst: Instance, requester?: StartRequester): SmartProxyError | undefined {
    if (this.#closed) return new SmartProxyError('SP_SHUTTING_DOWN');
    const coolDown = this.#coolingDown(inst) ?? this.providerDown(inst);
    if (coolDown !== undefined) return coolDown;
    const refused = this.#admit(inst, requester);
    if (refused !== undefined) return refused;
    // Nobody is held to wake it after a stop in progress, so remember the wish.
    if (inst.status === 'stopping') inst.startAfterStop = true;
    this.#ensureStarted(inst);
    return undefined;
  }

  /**
   * The data plane could not reach a ready backend at `endpoint` before sending any byte
   * (refused or reset). The instance goes back to starting; requests wait for it again.
   * A stale report (the instance already moved on) is ignored.
   */
  reportUnreachable(inst: Instance, endpoint: string, reason: string): void {
    if (inst.status !== 'ready' || inst.endpoint !== endpoint) return;
    this.#log.warn({ resource: inst.resource.id, instance: inst.key, endpoint, reason }, 'backend unreachable; restarting');
    this.#move(inst, 'lost', reason);
    inst.endpoint = undefined;
    this.#clearTimers(inst);
    if (this.#coordinator !== undefined) this.#lostEndpoints.set(inst, endpoint);
    void this.#runStart(inst);
  }

  /**
   * Another replica stopped `inst` (cluster): forget it here without calling the provider.
   * A request that arrives later starts it again through the coordinator.
   */
  stoppedElsewhere(inst: Instance): void {
    if (inst.status !== 'ready') return;
    inst.generation++;
    this.#clearTimers(inst);
    inst.endpoint = undefined;
    inst.handle = undefined;
    this.#move(inst, 'vanished', 'stopped by another replica');
    if (inst.waiters.size > 0 && !this.#closed) this.#ensureStarted(inst);
  }

  /**
   * Stops `inst` (idle stop, shutdown, operator). Idempotent: a second call while stopping
   * returns the same stop. Works after `close()` too, so shutdown can stop what it started.
   */
  stop(inst: Instance, reason: string): Promise<void> {
    if (inst.status === 'stopped') return Promise.resolve();
    if (inst.status === 'stopping') return this.#stopping.get(inst) ?? Promise.resolve();
    const p = this.#runStop(inst, reason).finally(() => this.#stopping.delete(inst));
    this.#stopping.set(inst, p);
    return p;
  }

  async #runStop(inst: Instance, reason: string): Promise<void> {
    const gen = ++inst.generation;
    this.#move(inst, 'stop', reason);
    inst.endpoint = undefined;
    this.#clearTimers(inst);
    const res = inst.resource;
    const stopStartedAt = this.#clock.now();
    const deadline = stopStartedAt + res.bootTimeoutMs;
    try {
      // Stops run during shutdown too (after close()), so they may outlive the manager.
      await this.#callWithRetry(inst, gen, deadline, (signal) => res.provider.stop(inst.ref, signal), 'stop', true);
    } catch (err) {
      this.#log.error({ resource: res.id, instance: inst.key, err }, 'stop failed; forgetting the instance');
      this.#coordinator?.cancelStop?.(inst.ref, undefined);
      if (inst.generation !== gen) return;
      this.#move(inst, 'fail', `stop failed: ${errMessage(err)}`);
      inst.handle = undefined;
      if (inst.waiters.size > 0 && !this.#closed) this.#ensureStarted(inst);
      return;
    }
    if (inst.generation !== gen) return;
    this.#move(inst, 'stopped', reason);
    // Logged here, whatever the provider, so that every stop (idle, shutdown, operator) is in
    // the log and not only in the audit table.
    this.#log.info({ resource: res.id, instance: inst.key, reason, stopMs: this.#clock.now() - stopStartedAt }, 'instance stopped');
    this.#coordinator?.stopped(inst.ref);
    inst.handle = undefined;
    // A request that arrived while the instance was stopping waits for the stop, then wakes it.
    const wanted = inst.waiters.size > 0 || inst.startAfterStop;
    inst.startAfterStop = false;
    if (wanted && !this.#closed) this.#ensureStarted(inst);
  }

  /**
   * Stops taking new holds, rejects every held request, cancels timers and start loops.
   * `stop()` still works afterwards (shutdown may stop the instances it started).
   */
  close(): void {
    this.#closed = true;
    this.#forgetTimer?.cancel();
    for (const inst of this.allInstances()) {
      if (inst.status !== 'stopping') inst.generation++;
      this.#clearTimers(inst);
      for (const w of [...inst.waiters]) w.reject(new SmartProxyError('SP_SHUTTING_DOWN'));
    }
  }

  // -- internals ------------------------------------------------------------------------

  #emit(event: ManagerEvent): void {
    for (const l of this.#listeners) {
      try {
        l(event);
      } catch (err) {
        this.#log.error({ err }, 'manager listener threw');
      }
    }
  }

  #move(inst: Instance, event: LifecycleEvent, reason?: string): void {
    const next = transition(inst.status, event);
    if (next === undefined) {
      throw new Error(`invalid lifecycle move: ${inst.status} --${event}-->`);
    }
    inst.status = next;
    if (next !== 'starting') inst.phase = undefined;
    if (next === 'stopped' || next === 'failed') {
      inst.settledAt = this.#clock.now();
      this.#armForget();
    }
    this.#emit({ type: 'instance-changed', instance: inst, at: this.#clock.now(), reason });
  }

  #setPhase(inst: Instance, phase: StartPhase): void {
    if (inst.phase === phase) return;
    inst.phase = phase;
    this.#emit({ type: 'instance-changed', instance: inst, at: this.#clock.now() });
  }

  /** Consults `admitStart` when this request would start the instance (see AdmitStart). */
  #admit(inst: Instance, requester: StartRequester | undefined): SmartProxyError | undefined {
    if (this.#admitStart === undefined) return undefined;
    if (inst.status === 'ready' || inst.status === 'starting') return undefined;
    return this.#admitStart(inst, requester);
  }

  #coolingDown(inst: Instance): SmartProxyError | undefined {
    if (inst.status !== 'failed') return undefined;
    // Not this instance's failure but its provider's: the circuit decides (#providerDown).
    if (inst.lastError?.code === 'SP_PROVIDER_UNREACHABLE') return undefined;
    const left = inst.failedUntil - this.#clock.now();
    if (left <= 0) return undefined;
    return new SmartProxyError('SP_RESOURCE_FAILED', undefined, {
      data: { resource: inst.resource.id, cause: inst.lastError?.message, causeCode: inst.lastError?.code },
      retryAfterS: Math.ceil(left / 1000),
    });
  }

  #retryAfterS(inst: Instance): number {
    const est = this.#history.estimate(inst.resource.id);
    return Math.max(1, Math.ceil((est?.p50Ms ?? 5000) / 1000));
  }

  #ensureStarted(inst: Instance): void {
    switch (inst.status) {
      case 'starting':
      case 'stopping': // the stop's end re-checks waiters and starts again
        return;
      case 'ready':
        // Waiters joined during the last microtask of becoming ready.
        this.#releaseWaiters(inst);
        return;
      case 'failed':
      case 'stopped':
        void this.#runStart(inst);
        return;
    }
  }

  /**
   * The single flight: exactly one of these runs per instance and generation. With
   * `adopting`, the instance was running before a restart: the provider is asked, not told
   * to start, and the recorded activity is kept.
   */
  async #runStart(inst: Instance, adopting?: AdoptionRecord): Promise<void> {
    const res = inst.resource;
    if (inst.status !== 'starting') this.#move(inst, 'start', adopting === undefined ? undefined : 'adopting after restart');
    const gen = ++inst.generation;
    const t0 = this.#clock.now();
    const deadline = t0 + res.bootTimeoutMs;
    inst.startRequestedAt = adopting?.startRequestedAt ?? t0;
    inst.lastError = undefined;
    let lease: StartLease | undefined;
    let endpointElsewhere: string | undefined;
    // Whether a machine may exist because of this flight: false while every start call
    // failed to connect (nothing was created, so there is nothing to clean up).
    let mayHaveCreated = adopting !== undefined;
    const startCall = (signal: AbortSignal): Promise<{ handle?: string | undefined }> => res.provider.start(inst.ref, signal).then((r) => {
      mayHaveCreated = true;
      return r;
    }, (err: unknown) => {
      if (!isUnreachable(err)) mayHaveCreated = true;
      throw err;
    });
    try {
      if (adopting === undefined) {
        this.#setPhase(inst, 'requested');
        this.#emit({ type: 'start-requested', instance: inst, at: t0 });
        this.#log.info({ resource: res.id, instance: inst.key, groups: inst.groups, user: inst.user }, 'start requested');
        // Cluster seam: another replica may be starting it (then we wait for its readiness
        // and only probe here), or may have died while starting it (then ask the provider
        // before starting: the machine may already be booting).
        let claim = this.#coordinator === undefined ? undefined : await this.#claim(inst, gen, deadline);
        // A "ready" endpoint that does not answer from here is stale (stopped or crashed
        // behind the cluster's back): ask again, ignoring it, and lead if nobody else does.
        while (claim?.kind === 'ready' && !(await this.#probeElsewhere(inst, gen, deadline, claim.endpoint))) {
          this.#log.warn({ resource: res.id, instance: inst.key, endpoint: claim.endpoint }, 'cluster: the endpoint another replica reported does not answer here');
          this.#lostEndpoints.set(inst, claim.endpoint);
          claim = await this.#claim(inst, gen, deadline);
        }
        if (claim?.kind === 'ready') {
          endpointElsewhere = claim.endpoint;
          if (claim.handle !== undefined) inst.handle = claim.handle;
        } else {
          lease = claim?.lease;
          const found = lease?.takeover === true
            ? await this.#callWithRetry(inst, gen, deadline, (signal) => res.provider.inspect(inst.ref, signal), 'inspect')
            : undefined;
          if (found !== undefined && found.handle !== undefined) inst.handle = found.handle;
          if (found !== undefined && found.state !== 'stopped') mayHaveCreated = true;
          if (found === undefined || found.state === 'stopped' || found.state === 'failed') {
            const started = await this.#callWithRetry(inst, gen, deadline, startCall, 'start');
            if (started.handle !== undefined) inst.handle = started.handle;
          } else {
            this.#log.info({ resource: res.id, instance: inst.key, state: found.state }, 'took over the start of another replica; not starting again');
          }
          lease?.started(inst.handle);
        }
      } else {
        this.#setPhase(inst, 'booting');
        const found = await this.#callWithRetry(inst, gen, deadline, (signal) => res.provider.inspect(inst.ref, signal), 'inspect');
        if (found.state === 'stopped' || found.state === 'stopping') {
          if (inst.waiters.size === 0) {
            this.#move(inst, 'vanished', `provider says ${found.state}`);
            this.#log.info({ resource: res.id, instance: inst.key, state: found.state }, 'not re-adopted: the provider no longer runs it');
            return;
          }
          // Requests already wait for it: an ordinary start, in a new flight.
          void this.#runStart(inst);
          return;
        }
      }
      this.#setPhase(inst, 'booting');
      const endpoint = endpointElsewhere ?? await this.#awaitReady(inst, gen, deadline);
      this.#lostEndpoints.delete(inst);
      if (lease !== undefined) void lease.ready(endpoint, inst.handle);
      inst.endpoint = endpoint;
      inst.readyAt = this.#clock.now();
      inst.consecutiveFailures = 0;
      if (adopting === undefined) {
        inst.lastActivityAt = inst.readyAt;
        inst.freshlyReady = true;
        const bootMs = inst.readyAt - t0;
        this.#history.add(res.id, bootMs);
        this.#move(inst, 'ready');
        this.#emit({ type: 'boot-finished', instance: inst, at: inst.readyAt, bootMs });
        this.#log.info({ resource: res.id, instance: inst.key, endpoint, bootMs }, 'instance ready');
      } else {
        inst.readyAt = adopting.readyAt ?? inst.readyAt;
        this.#move(inst, 'ready', 'adopted after restart');
        this.#emit({ type: 'instance-adopted', instance: inst, at: this.#clock.now() });
        this.#log.info({ resource: res.id, instance: inst.key, endpoint, lastActivityAt: inst.lastActivityAt }, 'instance re-adopted');
      }
      this.#releaseWaiters(inst);
      this.#scheduleIdle(inst);
      this.#scheduleHealth(inst);
    } catch (err) {
      if (err instanceof Aborted || inst.generation !== gen) {
        // Not a failure of the start (shutdown, a stop): another replica may take over.
        if (lease !== undefined) void lease.release();
        return;
      }
      if (isSmartProxyError(err) && err.code === 'SP_PROVIDER_UNREACHABLE') {
        // The provider's failure, not this instance's: no cool-down of its own, no cleanup
        // stop (the API cannot be reached); the circuit answers requests until it half-opens.
        if (lease !== undefined) void lease.release();
        this.#failUnreachable(inst, err);
        return;
      }
      if (lease !== undefined) void lease.failed(errMessage(err));
      if (isSmartProxyError(err) && (err.code === 'SP_CLUSTER_UNAVAILABLE' || err.code === 'SP_RESOURCE_FAILED')) {
        // Nothing was started here: no local cool-down (a cluster one is the cluster's), the
        // next request asks the cluster again.
        inst.lastError = err;
        inst.failedUntil = 0;
        this.#move(inst, 'fail', err.message);
        for (const w of [...inst.waiters]) w.reject(err);
        return;
      }
      const failure = toStartFailure(err, res.id, this.#clock.now() - t0);
      inst.lastError = failure;
      inst.consecutiveFailures++;
      const factor = Math.min(MAX_COOLDOWN_FACTOR, 2 ** (inst.consecutiveFailures - 1));
      inst.failedUntil = this.#clock.now() + res.failureCooldownMs * factor;
      this.#move(inst, 'fail', failure.message);
      this.#log.warn({ resource: res.id, instance: inst.key, code: failure.code, reason: failure.message, consecutiveFailures: inst.consecutiveFailures }, 'start failed');
      for (const w of [...inst.waiters]) w.reject(failure);
      if (!mayHaveCreated) {
        this.#log.debug({ resource: res.id, instance: inst.key }, 'no start reached the provider; nothing to clean up');
        return;
      }
      // Best effort: a machine that never became ready must not linger and cost money.
      const stopTimeout = deadlineSignal(this.#clock, res.providerCallTimeoutMs);
      res.provider.stop(inst.ref, stopTimeout.signal).catch((stopErr: unknown) => {
        this.#log.warn({ resource: res.id, instance: inst.key, err: errMessage(stopErr) }, 'cleanup stop after a failed start failed; the machine may be left running');
      }).finally(stopTimeout.done);
    }
  }

  /** Asks the coordinator for the start, bounded by the boot deadline. */
  async #claim(inst: Instance, gen: number, deadline: number): Promise<Awaited<ReturnType<Coordinator['claimStart']>>> {
    const coordinator = this.#coordinator as Coordinator;
    const { signal, done } = deadlineSignal(this.#clock, Math.max(1, deadline - this.#clock.now()));
    try {
      const options = { notEndpoint: this.#lostEndpoints.get(inst), failureCooldownMs: inst.resource.failureCooldownMs };
      return await raceAbort(coordinator.claimStart(inst.ref, signal, options), signal);
    } finally {
      done();
      this.#checkLive(inst, gen, deadline);
    }
  }

  /** Another replica reported `endpoint` ready: probe it from here (up to 3 tries) before forwarding. */
  async #probeElsewhere(inst: Instance, gen: number, deadline: number, endpoint: string): Promise<boolean> {
    const res = inst.resource;
    for (let attempt = 1; ; attempt++) {
      this.#checkLive(inst, gen, deadline);
      this.#setPhase(inst, 'probing');
      const outcome = await this.#probeOnce(endpoint, res, deadline);
      this.#checkLive(inst, gen, deadline);
      if (outcome.ok) return true;
      if (attempt >= 3) return false;
      await this.#sleep(res.probeIntervalMs, inst, gen, deadline);
    }
  }

  /** Polls the provider with backoff until running, then probes until the probe passes. */
  async #awaitReady(inst: Instance, gen: number, deadline: number): Promise<string> {
    const res = inst.resource;
    let pollMs = res.pollIntervalMinMs;
    for (;;) {
      this.#checkLive(inst, gen, deadline);
      const found = await this.#callWithRetry(inst, gen, deadline, (signal) => res.provider.inspect(inst.ref, signal), 'inspect');
      if (found.handle !== undefined) inst.handle = found.handle;
      if (found.state === 'failed') {
        throw new SmartProxyError('SP_START_FAILED', `provider reports the instance failed: ${found.reason ?? 'no reason given'}`, {
          data: { resource: res.id, reason: found.reason },
        });
      }
      if (found.state === 'running') {
        if (found.endpoint === undefined) {
          throw new SmartProxyError('SP_START_FAILED', 'provider reports running but gave no endpoint', { data: { resource: res.id } });
        }
        this.#setPhase(inst, 'probing');
        const outcome = await this.#probeOnce(found.endpoint, res, deadline);
        this.#checkLive(inst, gen, deadline);
        if (outcome.ok) return found.endpoint;
        this.#log.debug({ resource: res.id, instance: inst.key, reason: outcome.reason }, 'probe not yet passing');
        await this.#sleep(res.probeIntervalMs, inst, gen, deadline);
        continue;
      }
      if (found.state === 'stopped' && inst.phase === 'booting' && this.#clock.now() - inst.startRequestedAt > res.pollIntervalMaxMs * 4) {
        // An accepted start that the provider forgot (crashed at once, or removed): start again.
        await this.#callWithRetry(inst, gen, deadline, (signal) => res.provider.start(inst.ref, signal), 'start');
      }
      const elapsedMs = this.#clock.now() - inst.startRequestedAt;
      await this.#sleep(nextPollDelayMs(elapsedMs, pollMs, res.pollIntervalMinMs, res.pollIntervalMaxMs, this.#history.estimate(res.id)), inst, gen, deadline);
      pollMs = Math.min(res.pollIntervalMaxMs, Math.ceil(pollMs * 1.5));
    }
  }

  /** One probe, bounded by the probe timeout and the boot deadline; its timer ends with it. */
  async #probeOnce(endpoint: string, res: ResourceRuntime, deadline: number): Promise<Awaited<ReturnType<Prober['probe']>>> {
    const remaining = deadline - this.#clock.now();
    const { signal, done } = deadlineSignal(this.#clock, Math.min(res.probe.timeoutMs, Math.max(1, remaining)));
    try {
      return await this.#prober.probe(endpoint, res.probe, signal);
    } finally {
      done();
    }
  }

  /**
   * Calls the provider with a per-call timeout; retries retryable errors with backoff and
   * jitter. Every call goes through the provider's circuit: starts and inspects are refused
   * at once while it is open (stops still try: a running machine costs money).
   */
  async #callWithRetry<T>(inst: Instance, gen: number, deadline: number, call: (signal: AbortSignal) => Promise<T>, what: string, afterClose = false): Promise<T> {
    const res = inst.resource;
    const circuit = this.circuitOf(res.provider);
    const gated = what !== 'stop';
    let backoffMs = 100;
    for (let attempt = 1; ; attempt++) {
      this.#checkLive(inst, gen, deadline, afterClose);
      const refusedMs = gated ? circuit.acquire() : undefined;
      if (refusedMs !== undefined) throw this.#unreachableError(inst, circuit, refusedMs);
      const budget = Math.min(res.providerCallTimeoutMs, deadline - this.#clock.now());
      const { signal, done } = deadlineSignal(this.#clock, budget);
      try {
        // A provider that ignores its signal must not hang the flight: the race ends it.
        const value = await raceAbort(call(signal), signal);
        circuit.reached();
        return value;
      } catch (err) {
        this.#recordCall(res.provider, circuit, err, signal.aborted);
        this.#checkLive(inst, gen, deadline, afterClose);
        const stillDown = gated ? circuit.refusedForMs() : undefined;
        if (stillDown !== undefined) throw this.#unreachableError(inst, circuit, stillDown);
        const retryable = signal.aborted || (err instanceof ProviderError && err.retryable);
        if (!retryable) throw err;
        this.#log.warn({ resource: res.id, instance: inst.key, what, attempt, err: errMessage(err) }, 'provider call failed; retrying');
        const jittered = backoffMs / 2 + Math.random() * backoffMs / 2;
        await this.#sleep(jittered, inst, gen, deadline, afterClose);
        backoffMs = Math.min(2000, backoffMs * 2);
      } finally {
        done();
      }
    }
  }

  /** Tells the circuit how a failed call went; opening it fails every start of that provider. */
  #recordCall(provider: Provider, circuit: ProviderCircuit, err: unknown, timedOut: boolean): void {
    // A call that hung until its timeout says nothing about reachability (provider-circuit.ts).
    if (timedOut) return;
    if (!isUnreachable(err)) {
      circuit.reached();
      return;
    }
    if (circuit.unreachable(errMessage(err))) this.#onCircuitOpen(provider, circuit);
  }

  /**
   * The circuit of `provider` just opened: requests held for its starts are answered now (not
   * at the end of their boot timeout), and those starts end (their next call would be refused).
   */
  #onCircuitOpen(provider: Provider, circuit: ProviderCircuit): void {
    const retryInMs = Math.max(0, circuit.openUntil - this.#clock.now());
    this.#log.warn({ provider: provider.kind, failures: circuit.failures, lastFailure: circuit.lastFailure, retryInMs }, 'provider API unreachable: circuit open, starts are refused until a trial call gets through');
    for (const inst of this.allInstances()) {
      if (inst.resource.provider !== provider || inst.status !== 'starting') continue;
      inst.generation++; // the flight ends at its next check (and gives a cluster lease up)
      this.#failUnreachable(inst, this.#unreachableError(inst, circuit, retryInMs));
    }
  }

  #failUnreachable(inst: Instance, err: SmartProxyError): void {
    if (inst.status !== 'starting') return;
    inst.lastError = err;
    // Shown as the status's Retry-After; #coolingDown leaves the decision to the circuit.
    inst.failedUntil = this.circuitOf(inst.resource.provider).openUntil;
    this.#move(inst, 'fail', err.message);
    for (const w of [...inst.waiters]) w.reject(err);
  }

  /**
   * SP_PROVIDER_UNREACHABLE when `inst` is not ready and its provider's circuit is open: a
   * start would be refused now (status pages say so too).
   */
  providerDown(inst: Instance): SmartProxyError | undefined {
    if (inst.status === 'ready') return undefined;
    const circuit = this.#circuits.get(inst.resource.provider);
    const refusedMs = circuit?.refusedForMs();
    return circuit === undefined || refusedMs === undefined ? undefined : this.#unreachableError(inst, circuit, refusedMs);
  }

  #unreachableError(inst: Instance, circuit: ProviderCircuit, retryInMs: number): SmartProxyError {
    const retryAfterS = Math.max(1, Math.ceil(retryInMs / 1000));
    const kind = inst.resource.provider.kind;
    return new SmartProxyError('SP_PROVIDER_UNREACHABLE',
      `the ${kind} provider's API cannot be reached (${circuit.failures} connection failures in a row); not trying again for ${retryAfterS} s`, {
        data: { resource: inst.resource.id, provider: kind, circuit: circuit.state }, retryAfterS,
      });
  }

  #checkLive(inst: Instance, gen: number, deadline: number, afterClose = false): void {
    if (inst.generation !== gen || (this.#closed && !afterClose)) throw new Aborted();
    if (this.#clock.now() >= deadline) {
      throw new SmartProxyError('SP_BOOT_TIMEOUT', undefined, {
        data: { resource: inst.resource.id, bootTimeoutMs: inst.resource.bootTimeoutMs }, retryAfterS: this.#retryAfterS(inst),
      });
    }
  }

  #sleep(ms: number, inst: Instance, gen: number, deadline: number, afterClose = false): Promise<void> {
    const wait = Math.max(0, Math.min(ms, deadline - this.#clock.now()));
    return new Promise<void>((resolve) => {
      this.#clock.setTimeout(() => resolve(), wait);
    }).then(() => this.#checkLive(inst, gen, deadline, afterClose));
  }

  /** Lets held requests go through the release ramp (bounded concurrency, oldest first). */
  #releaseWaiters(inst: Instance): void {
    if (inst.endpoint === undefined || inst.waiters.size === 0) return;
    let ramp = this.#ramps.get(inst);
    if (ramp === undefined) {
      ramp = new ReleaseRamp<Waiter>(this.#clock, inst.resource.releaseConcurrency ?? DEFAULT_RELEASE_CONCURRENCY, RELEASE_STALL_MS, {
        waiting: () => inst.waiters,
        waitingCount: () => inst.waiters.size,
        inFlight: () => inst.activeConnections,
        canRelease: () => inst.status === 'ready' && inst.endpoint !== undefined && !this.#closed,
        release: (w) => { if (inst.endpoint !== undefined) w.resolve(inst.endpoint); },
      });
      this.#ramps.set(inst, ramp);
      const r = ramp;
      inst.onConnectionEnded = () => { if (inst.waiters.size > 0) r.pump(); };
    }
    ramp.pump();
  }

  #scheduleIdle(inst: Instance): void {
    const idleMs = inst.resource.idleStopMs;
    if (idleMs <= 0) return;
    this.#clearIdle(inst);
    const check = (): void => {
      this.#idleTimers.delete(inst);
      if (inst.status !== 'ready' || this.#closed) return;
      const now = this.#clock.now();
      const keepWarm = inst.resource.keepWarm;
      const verdict = idleVerdict({
        nowMs: now, idleStopMs: idleMs, lastActivityAt: inst.lastActivityAt,
        activeConnections: inst.activeConnections, heldRequests: inst.waiters.size,
        keptWarm: keepWarm !== undefined && this.#readyCount(inst.resource.id) <= keepWarm.minInstancesAt(now),
        keepWarmChangesAt: keepWarm?.nextChangeAt(now),
      });
      if (verdict.stop && this.#coordinator !== undefined) {
        this.#decideStopInCluster(inst, verdict.idleForMs, check);
        return;
      }
      if (verdict.stop) {
        void this.stop(inst, `idle for ${verdict.idleForMs} ms`);
        return;
      }
      this.#idleTimers.set(inst, this.#clock.setTimeout(check, verdict.recheckInMs));
    };
    // An adopted instance goes on from its recorded activity, not from now.
    const firstCheckMs = Math.max(1, Math.min(idleMs, inst.lastActivityAt + idleMs - this.#clock.now()));
    this.#idleTimers.set(inst, this.#clock.setTimeout(check, firstCheckMs));
  }

  /** Cluster: idle here; one replica (by lease) stops it, and only if idle everywhere. */
  #decideStopInCluster(inst: Instance, idleForMs: number, recheck: () => void): void {
    const gen = inst.generation;
    const local = () => ({ idleStopMs: inst.resource.idleStopMs, lastActivityAt: inst.lastActivityAt, activeConnections: inst.activeConnections, endpoint: inst.endpoint });
    const coordinator = this.#coordinator as Coordinator;
    coordinator.decideStop(inst.ref, local).then((decision) => {
      if (inst.status !== 'ready' || inst.generation !== gen || this.#closed) {
        if (decision === 'stop') coordinator.cancelStop?.(inst.ref, inst.status === 'ready' ? inst.endpoint : undefined);
        return;
      }
      // Local activity is read again after the Redis round trips: a request that arrived
      // meanwhile wins over the decision (no stop under a fresh request).
      const usedMeanwhile = inst.activeConnections > 0 || inst.waiters.size > 0
        || this.#clock.now() - inst.lastActivityAt < inst.resource.idleStopMs;
      if (decision === 'stop' && usedMeanwhile) {
        coordinator.cancelStop?.(inst.ref, inst.endpoint);
        this.#idleTimers.set(inst, this.#clock.setTimeout(recheck, Math.max(1, inst.lastActivityAt + inst.resource.idleStopMs - this.#clock.now())));
        return;
      }
      if (decision === 'stop') void this.stop(inst, `idle for ${idleForMs} ms on every replica`);
      else if (decision === 'gone') this.stoppedElsewhere(inst);
      else this.#idleTimers.set(inst, this.#clock.setTimeout(recheck, Math.max(1_000, Math.ceil(inst.resource.idleStopMs / 4))));
    }, (err: unknown) => {
      this.#log.warn({ resource: inst.resource.id, instance: inst.key, err: errMessage(err) }, 'idle stop: cluster not reachable; keeping the instance');
      if (inst.status === 'ready' && inst.generation === gen && !this.#closed) {
        this.#idleTimers.set(inst, this.#clock.setTimeout(recheck, Math.max(1_000, Math.ceil(inst.resource.idleStopMs / 4))));
      }
    });
  }

  #readyCount(resourceId: string): number {
    let n = 0;
    for (const i of this.instancesOf(resourceId)) if (i.status === 'ready') n++;
    return n;
  }

  /**
   * Asks the provider now and then whether a ready instance still exists (a VM removed
   * behind the proxy's back sends no refused connection until someone asks). One call at a
   * time per instance, bounded by the provider call timeout; an error is no verdict.
   */
  #scheduleHealth(inst: Instance): void {
    const everyMs = inst.resource.healthCheckIntervalMs ?? 0;
    if (everyMs <= 0) return;
    this.#healthTimers.get(inst)?.cancel();
    const gen = inst.generation;
    this.#healthTimers.set(inst, this.#clock.setTimeout(() => {
      this.#healthTimers.delete(inst);
      void this.#healthCheck(inst, gen).finally(() => {
        if (inst.status === 'ready' && inst.generation === gen && !this.#closed) this.#scheduleHealth(inst);
      });
    }, everyMs));
  }

  async #healthCheck(inst: Instance, gen: number): Promise<void> {
    if (inst.status !== 'ready' || inst.generation !== gen || this.#closed) return;
    const res = inst.resource;
    const circuit = this.circuitOf(res.provider);
    // While the API is known to be down, asking again tells nothing new.
    if (circuit.acquire() !== undefined) return;
    const { signal, done } = deadlineSignal(this.#clock, res.providerCallTimeoutMs);
    let found: InspectResult;
    try {
      found = await raceAbort(res.provider.inspect(inst.ref, signal), signal);
      circuit.reached();
    } catch (err) {
      this.#recordCall(res.provider, circuit, err, signal.aborted);
      // No verdict on the instance, but an operator must see a cloud that does not answer.
      this.#log.warn({ resource: res.id, instance: inst.key, err: errMessage(err) }, 'health check: provider did not answer');
      return;
    } finally {
      done();
    }
    if (inst.status !== 'ready' || inst.generation !== gen || this.#closed) return;
    const endpointMoved = found.state === 'running' && found.endpoint !== undefined && found.endpoint !== inst.endpoint;
    if (found.state === 'running' && !endpointMoved) return;
    if (endpointMoved) {
      // Still running, elsewhere: find it again (start is idempotent; nothing new is created).
      const reason = `provider moved the endpoint to ${found.endpoint ?? ''}`;
      this.#log.warn({ resource: res.id, instance: inst.key, reason }, 'health check: endpoint moved; re-checking the instance');
      this.#move(inst, 'lost', reason);
      inst.endpoint = undefined;
      this.#clearTimers(inst);
      void this.#runStart(inst);
      return;
    }
    // Gone behind the proxy's back: it is stopped now. Nothing starts without a reason: a
    // held request or a keep-warm floor starts one again (as the system), never the health
    // check on behalf of whoever used it last.
    const reason = `provider reports ${found.state}`;
    this.#log.warn({ resource: res.id, instance: inst.key, reason }, 'health check: instance gone; marked stopped');
    this.#clearTimers(inst);
    inst.generation++;
    inst.endpoint = undefined;
    inst.handle = undefined;
    this.#move(inst, 'vanished', reason);
    if (inst.waiters.size > 0) {
      this.#ensureStarted(inst);
      return;
    }
    const keepWarm = res.keepWarm;
    const now = this.#clock.now();
    if (keepWarm !== undefined && this.runningCount(res.id) < keepWarm.minInstancesAt(now)) {
      const target = this.selectInstance(res, keepWarm.spec.groups, undefined);
      const refused = target.status === 'ready' || target.status === 'starting' ? undefined : this.requestStart(target);
      if (refused === undefined) this.#log.info({ resource: res.id, instance: target.key }, 'keep-warm: starting again after an instance was found gone');
      else this.#log.warn({ resource: res.id, reason: refused.message }, 'keep-warm: could not start again after an instance was found gone');
    }
  }

  #clearIdle(inst: Instance): void {
    this.#idleTimers.get(inst)?.cancel();
    this.#idleTimers.delete(inst);
  }

  /** Arms the one timer that forgets settled instances (see `forgetStoppedAfterMs`). */
  #armForget(): void {
    if (this.#forgetTimer !== undefined || this.#closed || this.#forgetAfterMs <= 0) return;
    this.#forgetTimer = this.#clock.setTimeout(() => {
      this.#forgetTimer = undefined;
      let left = 0;
      for (const [id, byKey] of this.#instances) left += this.#sweep(id, byKey);
      if (left > 0) this.#armForget();
    }, this.#forgetAfterMs);
  }

  /**
   * Forgets instances that settled (stopped, or failed and cooled) at least
   * `forgetStoppedAfterMs` ago and that nothing uses or waits for; a later request simply
   * creates the instance again. Returns how many settled instances are left to forget later.
   */
  #sweep(resourceId: string, byKey: Map<string, Instance>): number {
    const now = this.#clock.now();
    let left = 0;
    for (const [key, inst] of byKey) {
      const settled = (inst.status === 'stopped' || (inst.status === 'failed' && now >= inst.failedUntil))
        && inst.waiters.size === 0 && inst.activeConnections === 0 && !inst.startAfterStop && !this.#stopping.has(inst);
      if (!settled) continue;
      if (now - inst.settledAt < this.#forgetAfterMs) {
        left++;
        continue;
      }
      byKey.delete(key);
      inst.generation++;
      this.#clearTimers(inst);
      this.#ramps.delete(inst);
      this.#lostEndpoints.delete(inst);
    }
    if (byKey.size === 0) {
      this.#instances.delete(resourceId);
      this.#sweepAt.delete(resourceId);
    } else {
      this.#sweepAt.set(resourceId, Math.max(64, byKey.size * 2));
    }
    return left;
  }

  /** Idle, health and ramp timers of an instance that leaves `ready`. */
  #clearTimers(inst: Instance): void {
    this.#clearIdle(inst);
    this.#healthTimers.get(inst)?.cancel();
    this.#healthTimers.delete(inst);
    this.#ramps.get(inst)?.cancel();
  }
}

/**
 * In `groups` mode: the best instance whose groups are a subset of the request's groups:
 * ready first, then starting (joining its boot instead of starting another machine).
 */
function pickSubsetInstance(instances: Iterable<Instance>, groups: readonly string[]): Instance | undefined {
  let starting: Instance | undefined;
  for (const inst of instances) {
    if (inst.status !== 'ready' && inst.status !== 'starting') continue;
    if (!isSubset(inst.groups, groups)) continue;
    if (inst.status === 'ready') return inst;
    starting ??= inst;
  }
  return starting;
}

/** Both sorted ascending: is every element of `sub` in `sup`? */
export function isSubset(sub: readonly string[], sup: readonly string[]): boolean {
  let j = 0;
  for (const s of sub) {
    while (j < sup.length && (sup[j] as string) < s) j++;
    if (sup[j] !== s) return false;
    j++;
  }
  return true;
}

/** An AbortSignal that aborts after `ms` on the given clock (so tests can drive it). */
export function timeoutSignal(clock: Clock, ms: number): AbortSignal {
  return deadlineSignal(clock, ms).signal;
}

/**
 * Like `timeoutSignal`, with `done()` to call once the guarded call settled: it cancels the
 * timer, so that a call that took 5 ms does not leave a timer (and through it the controller
 * and its listeners) alive for the whole timeout. Thousands of calls a minute add up.
 */
export function deadlineSignal(clock: Clock, ms: number): { readonly signal: AbortSignal; readonly done: () => void } {
  const ac = new AbortController();
  const timer = clock.setTimeout(() => ac.abort(new SmartProxyError('SP_PROVIDER_ERROR', `timed out after ${ms} ms`)), ms);
  return { signal: ac.signal, done: () => timer.cancel() };
}

function toStartFailure(err: unknown, resourceId: string, elapsedMs: number): SmartProxyError {
  if (isSmartProxyError(err) && (err.code === 'SP_BOOT_TIMEOUT' || err.code === 'SP_START_FAILED')) return err;
  return new SmartProxyError('SP_START_FAILED', `start failed after ${elapsedMs} ms: ${errMessage(err)}`, {
    data: { resource: resourceId }, cause: err,
  });
}

/** Settles with `p`, or rejects as soon as `signal` aborts, whichever comes first. */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(asError(signal.reason));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(asError(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(asError(err)); },
    );
  });
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
