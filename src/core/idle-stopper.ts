/**
 * The idle policy's timers: while an instance is ready, check now and then whether it has
 * been idle long enough (`idleVerdict` in idle-reaper.ts, which also applies the keep-warm
 * floor), and when it has, ask the coordinator whether to stop it (local: yes, at once; a
 * cluster: only if idle on every replica, by one replica). Armed when an instance becomes
 * ready, cleared when it leaves `ready`.
 */
import { LocalCoordinator, type Coordinator, type StopDecision } from './coordination.ts';
import { idleVerdict } from './idle-reaper.ts';
import type { Instance } from './instance.ts';
import type { Clock, Logger, TimerHandle } from './ports.ts';
import { errMessage } from './provider-calls.ts';

export interface IdleStopperOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly coordinator: Coordinator;
  readonly closed: () => boolean;
  /** Ready instances of a resource (the keep-warm floor counts these). */
  readonly readyCount: (resourceId: string) => number;
  readonly stop: (inst: Instance, reason: string) => void;
  /** The cluster says another replica stopped it. */
  readonly stoppedElsewhere: (inst: Instance) => void;
}

export class IdleStopper {
  readonly #o: IdleStopperOptions;
  readonly #timers = new Map<Instance, TimerHandle>();
  /** Words added to the reason of a stop decided over many replicas. */
  readonly #scope: string;

  constructor(options: IdleStopperOptions) {
    this.#o = options;
    this.#scope = options.coordinator instanceof LocalCoordinator ? '' : ' on every replica';
  }

  /** The instance became ready: the first check is due one idle period after its last activity. */
  schedule(inst: Instance): void {
    const idleMs = inst.resource.idleStopMs;
    if (idleMs <= 0) return;
    this.clear(inst);
    // An adopted instance goes on from its recorded activity, not from now.
    const firstCheckMs = Math.max(1, Math.min(idleMs, inst.lastActivityAt + idleMs - this.#o.clock.now()));
    this.#arm(inst, firstCheckMs);
  }

  clear(inst: Instance): void {
    this.#timers.get(inst)?.cancel();
    this.#timers.delete(inst);
  }

  #arm(inst: Instance, ms: number): void {
    this.#timers.set(inst, this.#o.clock.setTimeout(() => this.#check(inst), ms));
  }

  #check(inst: Instance): void {
    this.#timers.delete(inst);
    if (inst.status !== 'ready' || this.#o.closed()) return;
    const now = this.#o.clock.now();
    const keepWarm = inst.resource.keepWarm;
    const verdict = idleVerdict({
      nowMs: now, idleStopMs: inst.resource.idleStopMs, lastActivityAt: inst.lastActivityAt,
      activeConnections: inst.activeConnections, heldRequests: inst.waiters.size,
      keptWarm: keepWarm !== undefined && this.#o.readyCount(inst.resource.id) <= keepWarm.minInstancesAt(now),
      keepWarmChangesAt: keepWarm?.nextChangeAt(now),
    });
    if (verdict.stop) this.#decide(inst, verdict.idleForMs);
    else this.#arm(inst, verdict.recheckInMs);
  }

  /** Idle here: the coordinator decides (local: at once; a cluster: one replica, if idle everywhere). */
  #decide(inst: Instance, idleForMs: number): void {
    const gen = inst.generation;
    const { coordinator, clock } = this.#o;
    const idleStopMs = inst.resource.idleStopMs;
    const local = () => ({ idleStopMs, lastActivityAt: inst.lastActivityAt, activeConnections: inst.activeConnections, endpoint: inst.endpoint });
    const later = Math.max(1_000, Math.ceil(idleStopMs / 4));
    const onDecision = (decision: StopDecision): void => {
      if (inst.status !== 'ready' || inst.generation !== gen || this.#o.closed()) {
        if (decision === 'stop') coordinator.cancelStop?.(inst.ref, inst.status === 'ready' ? inst.endpoint : undefined);
        return;
      }
      // Local activity is read again after the coordinator answered (Redis round trips): a
      // request that arrived meanwhile wins over the decision (no stop under a fresh request).
      const usedMeanwhile = inst.activeConnections > 0 || inst.waiters.size > 0 || clock.now() - inst.lastActivityAt < idleStopMs;
      if (decision === 'stop' && usedMeanwhile) {
        coordinator.cancelStop?.(inst.ref, inst.endpoint);
        this.#arm(inst, Math.max(1, inst.lastActivityAt + idleStopMs - clock.now()));
        return;
      }
      if (decision === 'stop') this.#o.stop(inst, `idle for ${idleForMs} ms${this.#scope}`);
      else if (decision === 'gone') this.#o.stoppedElsewhere(inst);
      else this.#arm(inst, later);
    };
    const onError = (err: unknown): void => {
      this.#o.logger.warn({ resource: inst.resource.id, instance: inst.key, err: errMessage(err) }, 'idle stop: cluster not reachable; keeping the instance');
      if (inst.status === 'ready' && inst.generation === gen && !this.#o.closed()) this.#arm(inst, later);
    };
    let decision: StopDecision | Promise<StopDecision>;
    try {
      decision = coordinator.decideStop(inst.ref, local);
    } catch (err) {
      onError(err);
      return;
    }
    if (decision instanceof Promise) decision.then(onDecision, onError);
    else onDecision(decision);
  }
}
