/**
 * What happens when the world changes behind the control plane's back: a ready backend stops
 * answering, the health watcher finds an instance moved or gone, another replica stopped it,
 * or a provider's API becomes unreachable. Each is one lifecycle transition plus who gets
 * told (held requests, keep-warm); none calls a provider itself (a new StartFlight does).
 */
import type { SmartProxyError } from './errors.ts';
import type { HoldQueue } from './hold-queue.ts';
import type { Instance, InstanceControl } from './instance.ts';
import type { InstanceRegistry } from './instance-registry.ts';
import type { Clock, Logger, Provider } from './ports.ts';
import type { ProviderCalls } from './provider-calls.ts';
import type { ProviderCircuit } from './provider-circuit.ts';

export interface RecoveryOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly registry: InstanceRegistry;
  readonly holds: HoldQueue;
  readonly calls: ProviderCalls;
  readonly lostEndpoints: Map<Instance, string>;
  readonly closed: () => boolean;
  /** A new start flight for an instance that is starting (after `lost`). */
  readonly runStart: (ctl: InstanceControl) => void;
  /** Starts the instance if it is stopped or failed (held requests want it). */
  readonly ensureStarted: (ctl: InstanceControl) => void;
  /** Starts the keep-warm instance of a resource; returns why not. */
  readonly startKeptWarm: (inst: Instance) => { key: string; refused: SmartProxyError | undefined } | undefined;
  /** A machine out of service that must still be stopped (leftover-stops.ts). */
  readonly stopLeftover: (inst: Instance, reason: string) => void;
}

export class Recovery {
  readonly #o: RecoveryOptions;

  constructor(options: RecoveryOptions) {
    this.#o = options;
  }

  /** The data plane could not reach a ready backend at `endpoint`: back to starting. */
  unreachable(inst: Instance, endpoint: string, reason: string): void {
    if (inst.status !== 'ready' || inst.endpoint !== endpoint) return;
    this.#o.logger.warn({ resource: inst.resource.id, instance: inst.key, endpoint, reason }, 'backend unreachable; restarting');
    const ctl = this.#o.registry.control(inst);
    ctl.lost(reason);
    // A cluster's record may still say ready at this endpoint: the next claim ignores it.
    this.#o.lostEndpoints.set(inst, endpoint);
    this.#o.runStart(ctl);
  }

  /** Still running, elsewhere: find it again (start is idempotent; nothing new is created). */
  moved(inst: Instance, endpoint: string): void {
    const reason = `provider moved the endpoint to ${endpoint}`;
    this.#o.logger.warn({ resource: inst.resource.id, instance: inst.key, reason }, 'health check: endpoint moved; re-checking the instance');
    const ctl = this.#o.registry.control(inst);
    ctl.lost(reason);
    this.#o.runStart(ctl);
  }

  /**
   * Gone behind the proxy's back: it is stopped now. Nothing starts without a reason: a held
   * request or a keep-warm floor starts one again (as the system), never the health check on
   * behalf of whoever used it last.
   */
  gone(inst: Instance, state: string): void {
    const res = inst.resource;
    const reason = `provider reports ${state}`;
    this.#o.logger.warn({ resource: res.id, instance: inst.key, reason }, 'health check: instance gone; marked stopped');
    const ctl = this.#o.registry.control(inst);
    ctl.supersede();
    // A machine the provider reports failed still exists (a VM in ERROR still costs): it is
    // stopped, before any new start of this instance (which waits for that stop).
    ctl.vanished(reason, state !== 'failed');
    if (state === 'failed') this.#o.stopLeftover(inst, reason);
    if (inst.waiters.size > 0) {
      this.#o.ensureStarted(ctl);
      return;
    }
    const kept = this.#o.startKeptWarm(inst);
    if (kept === undefined) return;
    if (kept.refused === undefined) this.#o.logger.info({ resource: res.id, instance: kept.key }, 'keep-warm: starting again after an instance was found gone');
    else this.#o.logger.warn({ resource: res.id, reason: kept.refused.message }, 'keep-warm: could not start again after an instance was found gone');
  }

  /** Another replica stopped it (cluster): forget it here without calling the provider. */
  stoppedElsewhere(inst: Instance): void {
    if (inst.status !== 'ready') return;
    const ctl = this.#o.registry.control(inst);
    ctl.supersede();
    ctl.vanished('stopped by another replica', true);
    if (inst.waiters.size > 0 && !this.#o.closed()) this.#o.ensureStarted(ctl);
  }

  /**
   * The circuit of `provider` just opened: requests held for its starts are answered now (not
   * at the end of their boot timeout), and those starts end (their next call would be refused).
   */
  circuitOpen(provider: Provider, circuit: ProviderCircuit): void {
    const retryInMs = Math.max(0, circuit.openUntil - this.#o.clock.now());
    this.#o.logger.warn({ provider: provider.kind, failures: circuit.failures, lastFailure: circuit.lastFailure, retryInMs }, 'provider API unreachable: circuit open, starts are refused until a trial call gets through');
    for (const inst of this.#o.registry.all()) {
      if (inst.resource.provider !== provider || inst.status !== 'starting') continue;
      const ctl = this.#o.registry.control(inst);
      ctl.supersede(); // the flight ends at its next check (and gives a cluster lease up)
      this.failUnreachable(ctl, this.#o.calls.unreachableError(inst, circuit, retryInMs));
    }
  }

  /** A start ended because its provider cannot be reached: no cool-down of its own. */
  failUnreachable(ctl: InstanceControl, err: SmartProxyError): void {
    if (ctl.instance.status !== 'starting') return;
    // failedUntil is shown as the status's Retry-After; Admission leaves the decision to the circuit.
    ctl.fail({ error: err, failedUntil: this.#o.calls.circuitOf(ctl.instance.resource.provider).openUntil, counted: false });
    this.#o.holds.rejectAll(ctl.instance, err);
  }
}
