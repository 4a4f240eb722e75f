/**
 * The control plane's front door. It composes small units, each with one reason to change:
 *
 * - InstanceRegistry (instance-registry.ts): which instances exist, selection, forgetting.
 * - Instance / InstanceControl (instance.ts): one instance's state, changed only through the
 *   transitions of the lifecycle table (lifecycle.ts).
 * - StartFlight (start-flight.ts): one start: claim, start, await ready, settle.
 * - Coordinator (coordination.ts): who may start or stop; `LocalCoordinator` in one process.
 * - HoldQueue (hold-queue.ts): held requests and the release ramp.
 * - IdleStopper (idle-stopper.ts) and HealthWatcher (health-watcher.ts): armed on ready,
 *   cleared on leaving it.
 * - StopFlight (stop-flight.ts): one stop; LeftoverStops (leftover-stops.ts): stops owed
 *   after a failed start or a failed stop; ProviderCalls (provider-calls.ts): every provider
 *   call, its timeout, retries and circuit.
 *
 * The data plane reads instances and reports through the ConnectionPort; it writes nothing.
 */
import { Admission } from './admission.ts';
import { BootHistory, type BootEstimate } from './boot-history.ts';
import { LocalCoordinator, type Coordinator } from './coordination.ts';
import { SmartProxyError } from './errors.ts';
import { HealthWatcher } from './health-watcher.ts';
import { holdAsPromise, HoldQueue, type HeldRequest, type HoldEnd, type HoldOptions } from './hold-queue.ts';
import type { Instance, InstanceControl } from './instance.ts';
import { InstanceRegistry } from './instance-registry.ts';
import { IdleStopper } from './idle-stopper.ts';
import { LeftoverStops, type StopRetries } from './leftover-stops.ts';
import { keepWarmTargetOf } from './keep-warm-target.ts';
import type { LifecycleEvent, StartPhase } from './lifecycle.ts';
import type { ConnectionPort, ManagerEvent, ManagerListener } from './manager-events.ts';
import { DEFAULT_FORGET_STOPPED_AFTER_MS, type ManagerOptions } from './manager-options.ts';
import type { Clock, Logger, Provider } from './ports.ts';
import { asError, ProviderCalls } from './provider-calls.ts';
import type { ProviderCircuit } from './provider-circuit.ts';
import type { AdoptionRecord, ResourceRuntime, StartRequester } from './resource-runtime.ts';
import { Recovery } from './recovery.ts';
import { StartFlight, type FlightContext } from './start-flight.ts';
import { StopFlight, type StopMode } from './stop-flight.ts';
import { Drains } from './drains.ts';

export { Instance, type Waiter } from './instance.ts';
export type { HeldRequest, HoldEnd, HoldOptions, HoldSettled, HoldTarget } from './hold-queue.ts';
export { isSubset } from './instance-registry.ts';
export type { AdmitStart, ConnectionPort, ManagerEvent, ManagerListener } from './manager-events.ts';
export { DEFAULT_FORGET_STOPPED_AFTER_MS, type ManagerOptions } from './manager-options.ts';
export { deadlineSignal, timeoutSignal } from './provider-calls.ts';
export type { AdoptionRecord, ResourceRuntime, SharingMode, StartRequester } from './resource-runtime.ts';

/**
 * Selects instances, starts each at most once at a time (single flight), learns readiness by
 * provider state then probe, and wakes held requests through an in-memory broadcast.
 */
export class ResourceManager implements ConnectionPort {
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #coordinator: Coordinator;
  readonly #listeners = new Set<ManagerListener>();
  readonly #history = new BootHistory();
  readonly #lostEndpoints = new Map<Instance, string>();
  readonly #registry: InstanceRegistry;
  readonly #calls: ProviderCalls;
  readonly #admission: Admission;
  readonly #holds: HoldQueue;
  readonly #recovery: Recovery;
  readonly #idle: IdleStopper;
  readonly #health: HealthWatcher;
  readonly #stops: StopFlight;
  readonly #leftovers: LeftoverStops;
  readonly #drains: Drains;
  readonly #flight: FlightContext;
  #closed = false;

  constructor(options: ManagerOptions) {
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#coordinator = options.coordinator ?? new LocalCoordinator();
    const clock = this.#clock;
    const logger = this.#log;
    const closed = (): boolean => this.#closed;
    const retryAfterS = (inst: Instance): number => this.#admission.retryAfterS(inst);
    this.#registry = new InstanceRegistry({
      clock, forgetAfterMs: options.forgetStoppedAfterMs ?? DEFAULT_FORGET_STOPPED_AFTER_MS,
      onMove: (inst, event, reason, actor) => this.#moved(inst, event, reason, actor),
      busy: (inst) => this.#stops.inProgress(inst) || this.#leftovers.busy(inst),
      onForget: (inst) => { this.#leftReady(inst); this.#holds.forget(inst); this.#lostEndpoints.delete(inst); },
    });
    this.#calls = new ProviderCalls({ clock, logger, circuit: options.providerCircuit, closed, retryAfterS, onCircuitOpen: (p, c) => this.#recovery.circuitOpen(p, c) });
    this.#admission = new Admission(clock, this.#calls, this.#history, options.admitStart);
    this.#holds = new HoldQueue({ clock, maxHeldTotal: options.maxHeldRequestsTotal, retryAfterS, closed });
    this.#recovery = new Recovery({
      clock, logger, registry: this.#registry, holds: this.#holds, calls: this.#calls, lostEndpoints: this.#lostEndpoints, closed,
      runStart: (ctl) => this.#runStart(ctl),
      ensureStarted: (ctl) => this.#ensureStarted(ctl),
      startKeptWarm: (inst) => this.#restartKeptWarm(inst.resource),
      stopLeftover: (inst, reason) => this.#leftovers.schedule(inst, reason),
    });
    this.#idle = new IdleStopper({
      clock, logger, coordinator: this.#coordinator, closed,
      readyCount: (id) => this.#registry.countOf(id, 'ready'),
      stop: (inst, reason) => void this.stop(inst, reason),
      stoppedElsewhere: (inst) => this.stoppedElsewhere(inst),
    });
    this.#health = new HealthWatcher({
      clock, logger, calls: this.#calls, closed, onMoved: (inst, endpoint) => this.#recovery.moved(inst, endpoint), onGone: (inst, state) => this.#recovery.gone(inst, state),
    });
    // Later tries only in one process: replicas fence their stops (leftover-stops.ts).
    const retryLater = this.#coordinator instanceof LocalCoordinator;
    this.#leftovers = new LeftoverStops({ clock, logger, calls: this.#calls, settled: () => this.#registry.armForget(), retryLater,
      changed: (instance, outcome, retry) => this.#emit({ type: 'stop-retry', instance, at: clock.now(), outcome, retry }) });
    this.#stops = new StopFlight({
      clock, logger, calls: this.#calls, coordinator: this.#coordinator, closed, leftovers: this.#leftovers,
      afterStop: (ctl) => { if (!this.#closed) this.#ensureStarted(ctl); },
    });
    this.#drains = new Drains({ clock, stop: (inst, reason, actor) => { if (!this.#closed) void this.stop(inst, reason, 'stop', actor); } });
    this.#flight = {
      clock, logger, prober: options.prober, calls: this.#calls, coordinator: this.#coordinator, history: this.#history,
      lostEndpoints: this.#lostEndpoints,
      emit: (e) => this.#emit(e),
      setPhase: (ctl, phase) => this.#setPhase(ctl, phase),
      onReady: (inst) => { this.#holds.release(inst); this.#drains.check(inst); this.#idle.schedule(inst); this.#health.schedule(inst); },
      rejectWaiters: (inst, err) => this.#holds.rejectAll(inst, err),
      failUnreachable: (ctl, err) => this.#recovery.failUnreachable(ctl, err),
      restart: (ctl) => this.#runStart(ctl),
      leftovers: this.#leftovers,
    };
  }

  /** Stops owed for instances out of service, as operators see and steer them. */
  get stopRetries(): StopRetries { return this.#leftovers; }
  /** Requests held right now over all resources. */
  get heldTotal(): number { return this.#holds.heldTotal; }

  onEvent(listener: ManagerListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Boot-time estimate learnt from this resource's past boots. */
  estimateBoot(resourceId: string): BootEstimate | undefined { return this.#history.estimate(resourceId); }

  recordBootSample(resourceId: string, bootMs: number): void { this.#history.add(resourceId, bootMs); }

  /** Every instance known for a resource (any status). */
  instancesOf(resourceId: string): Iterable<Instance> { return this.#registry.instancesOf(resourceId); }

  /** Every known instance. */
  allInstances(): Iterable<Instance> { return this.#registry.all(); }

  /** See InstanceRegistry.select. */
  selectInstance(resource: ResourceRuntime, groups: readonly string[], user: string | undefined): Instance {
    return this.#registry.select(resource, groups, user);
  }

  /** Instances known right now, over all resources (tests and metrics: bounded memory). */
  get instanceCount(): number { return this.#registry.count; }

  /** The circuit of a provider's API (created closed on first use). */
  circuitOf(provider: Provider): ProviderCircuit { return this.#calls.circuitOf(provider); }

  /**
   * Re-adopts an instance that was running before a restart (state store or provider
   * `list`). It goes to `starting` at once, so requests arriving meanwhile join it instead of
   * starting another; then the provider is asked (inspect, never start): running → probe →
   * ready, with the idle timer going on from the recorded activity; gone → `stopped`
   * (or started afresh if requests are already waiting). Returns undefined when an instance
   * with that key is already known (nothing to adopt).
   */
  adopt(resource: ResourceRuntime, record: AdoptionRecord): Instance | undefined {
    const ctl = this.#registry.forAdoption(resource, record.instanceKey, record.groups, record.user);
    if (ctl === undefined) return undefined;
    ctl.setHandle(record.handle);
    ctl.restoreActivity(record.lastActivityAt);
    void new StartFlight(this.#flight, ctl, record).run();
    return ctl.instance;
  }

  /** Instances of a resource that are ready or starting (keep-warm counts these). */
  runningCount(resourceId: string): number { return this.#registry.countOf(resourceId, 'ready', 'starting'); }

  /** The control plane as keep-warm sees it. */
  keepWarmTarget(resources: ReadonlyMap<string, ResourceRuntime>): ReturnType<typeof keepWarmTargetOf> {
    return keepWarmTargetOf(this, resources);
  }

  /**
   * Marks use of an instance; O(1), no I/O. `atMs` may lie ahead: a front
   * proxy granted use until then without asking again (src/front/). Never moves a mark back.
   */
  touch(inst: Instance, atMs?: number): void {
    this.#registry.control(inst).touch(atMs ?? this.#clock.now());
  }

  // -- ConnectionPort (the data plane) ----------------------------------------------------

  connectionBegun(inst: Instance): void {
    this.#registry.control(inst).connectionBegun();
  }

  connectionEnded(inst: Instance): void {
    if (!this.#registry.control(inst).connectionEnded()) return;
    this.#holds.connectionEnded(inst);
    this.#drains.check(inst);
  }

  forwardDone(inst: Instance): void {
    const ctl = this.#registry.control(inst);
    ctl.firstForwardDone();
    ctl.touch(this.#clock.now());
  }

  // ---------------------------------------------------------------------------------------

  /**
   * The endpoint once `inst` is ready, starting it if needed; or SP_HOLD_QUEUE_FULL past the
   * bounds (checked before any start), SP_RESOURCE_FAILED in a failure cool-down, SP_BOOT_TIMEOUT
   * after `timeoutMs`, the start's own error, or `signal.reason` when the client leaves.
   */
  waitUntilReady(inst: Instance, options: HoldOptions & { readonly signal?: AbortSignal | undefined }): Promise<string> {
    if (options.signal?.aborted === true) return Promise.reject(asError(options.signal.reason));
    return holdAsPromise((settled) => this.hold(inst, options, settled), options.signal);
  }

  /** waitUntilReady with no promise: the open endpoint, the refusal, or the hold (see HoldQueue.hold). */
  hold(inst: Instance, options: HoldOptions, settled: HoldEnd): string | SmartProxyError | HeldRequest {
    // While the release ramp still holds requests, a newcomer queues behind them.
    const open = inst.openEndpoint;
    if (open !== undefined) return open;
    if (this.#closed) return new SmartProxyError('SP_SHUTTING_DOWN');
    // admit last: the hold starts the instance in this same tick.
    const refused = this.#admission.refused(inst) ?? this.#holds.full(inst) ?? this.#admission.admit(inst, options.requester);
    if (refused !== undefined) return refused;
    const ctl = this.#registry.control(inst);
    return this.#holds.hold(ctl, options.timeoutMs, settled, () => this.#ensureStarted(ctl));
  }

  /**
   * Starts `inst` without holding a request (keep-warm, `Prefer: respond-async`).
   * Returns the cool-down error instead of starting when the resource failed recently.
   */
  requestStart(inst: Instance, requester?: StartRequester): SmartProxyError | undefined {
    if (this.#closed) return new SmartProxyError('SP_SHUTTING_DOWN');
    const refused = this.#admission.refused(inst) ?? this.#admission.admit(inst, requester);
    if (refused !== undefined) return refused;
    const ctl = this.#registry.control(inst);
    // Nobody is held to wake it after a stop in progress, so remember the wish.
    if (inst.status === 'stopping') ctl.setStartAfterStop(true);
    this.#ensureStarted(ctl);
    return undefined;
  }

  /**
   * The data plane could not reach a ready backend at `endpoint` before sending any byte
   * (refused or reset). The instance goes back to starting; requests wait for it again.
   * A stale report (the instance already moved on) is ignored.
   */
  reportUnreachable(inst: Instance, endpoint: string, reason: string): void {
    this.#recovery.unreachable(inst, endpoint, reason);
  }

  /**
   * Another replica stopped `inst` (cluster): forget it here without calling the provider.
   * A request that arrives later starts it again through the coordinator.
   */
  stoppedElsewhere(inst: Instance): void {
    this.#recovery.stoppedElsewhere(inst);
  }

  /**
   * Stops `inst` (idle stop, shutdown, operator). Idempotent: a second call while stopping
   * returns the same stop. Works after `close()` too, so shutdown can stop what it started.
   * `mode: 'suspend'` keeps the instance's state where the provider can (`Provider.suspend`),
   * so that the next start resumes it; otherwise it is an ordinary stop. `actor`: the operator
   * who asked (named on the audit of the stop); undefined when the proxy decided.
   */
  stop(inst: Instance, reason: string, mode: StopMode = 'stop', actor?: string): Promise<void> {
    return this.#stops.stop(this.#registry.control(inst), reason, mode, actor);
  }

  /** Drains `inst`, then stops it (drains.ts); false when it is neither ready nor starting. */
  drain(inst: Instance, reason: string, timeoutMs: number, actor?: string): boolean {
    return this.#drains.drain(this.#registry.control(inst), reason, timeoutMs, actor);
  }

  /**
   * Stops taking new holds, rejects every held request, cancels timers and start loops.
   * `stop()` still works afterwards (shutdown may stop the instances it started).
   */
  close(): void {
    this.#closed = true;
    this.#leftovers.close();
    this.#registry.close();
    for (const inst of this.allInstances()) {
      if (inst.status !== 'stopping') this.#registry.control(inst).supersede();
      this.#leftReady(inst);
      this.#holds.rejectAll(inst, new SmartProxyError('SP_SHUTTING_DOWN'));
    }
  }

  /** SP_PROVIDER_UNREACHABLE when `inst` is not ready and its provider's circuit is open (see Admission). */
  providerDown(inst: Instance): SmartProxyError | undefined {
    return this.#admission.providerDown(inst);
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

  /** Every status change (InstanceControl's transitions) comes through here. */
  #moved(inst: Instance, _event: LifecycleEvent, reason: string | undefined, actor: string | undefined): void {
    if (inst.status !== 'ready') this.#leftReady(inst);
    this.#drains.ended(inst);
    if (inst.status === 'stopped' || inst.status === 'failed') this.#registry.armForget();
    this.#emit({ type: 'instance-changed', instance: inst, at: this.#clock.now(), reason, actor });
  }

  /** Idle, health and ramp timers end when an instance is not ready. */
  #leftReady(inst: Instance): void {
    this.#idle.clear(inst);
    this.#health.clear(inst);
    this.#holds.pause(inst);
  }

  #setPhase(ctl: InstanceControl, phase: StartPhase): void {
    if (ctl.setPhase(phase)) this.#emit({ type: 'instance-changed', instance: ctl.instance, at: this.#clock.now() });
  }

  #ensureStarted(ctl: InstanceControl): void {
    switch (ctl.instance.status) {
      case 'starting':
      case 'stopping': // the stop's end re-checks waiters and starts again
        return;
      case 'ready':
        // Waiters joined during the last microtask of becoming ready.
        this.#holds.release(ctl.instance);
        return;
      case 'failed':
      case 'stopped':
        this.#runStart(ctl);
        return;
    }
  }

  #runStart(ctl: InstanceControl): void { void new StartFlight(this.#flight, ctl).run(); }
  /** After an instance was found gone: the keep-warm floor of its resource, if it is not met. */
  #restartKeptWarm(res: ResourceRuntime): { key: string; refused: SmartProxyError | undefined } | undefined {
    const keepWarm = res.keepWarm;
    if (keepWarm === undefined || this.runningCount(res.id) >= keepWarm.minInstancesAt(this.#clock.now())) return undefined;
    const target = this.selectInstance(res, keepWarm.spec.groups, undefined);
    return { key: target.key, refused: target.status === 'ready' || target.status === 'starting' ? undefined : this.requestStart(target) };
  }
}
