/**
 * Stops: one provider stop per instance at a time (a second `stop()` while stopping returns
 * the same promise), then the outcome: stopped, or the stop failed and the instance is
 * forgotten as stopped. A request that arrived while it was stopping (or a start asked for
 * meanwhile) starts it again once the stop is over.
 */
import type { Coordinator } from './coordination.ts';
import type { Instance, InstanceControl } from './instance.ts';
import type { Clock, Logger } from './ports.ts';
import { errMessage, type ProviderCalls } from './provider-calls.ts';

export interface StopFlightOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly calls: ProviderCalls;
  readonly coordinator: Coordinator;
  readonly closed: () => boolean;
  /** The stop is over and the instance is wanted again (held requests, or a start asked for). */
  readonly afterStop: (ctl: InstanceControl) => void;
}

export class StopFlight {
  readonly #o: StopFlightOptions;
  /** Stops in progress, so a second `stop()` returns the same promise. */
  readonly #stopping = new Map<Instance, Promise<void>>();

  constructor(options: StopFlightOptions) {
    this.#o = options;
  }

  inProgress(inst: Instance): boolean {
    return this.#stopping.has(inst);
  }

  stop(ctl: InstanceControl, reason: string): Promise<void> {
    const inst = ctl.instance;
    if (inst.status === 'stopped') return Promise.resolve();
    if (inst.status === 'stopping') return this.#stopping.get(inst) ?? Promise.resolve();
    const p = this.#run(ctl, reason).finally(() => this.#stopping.delete(inst));
    this.#stopping.set(inst, p);
    return p;
  }

  async #run(ctl: InstanceControl, reason: string): Promise<void> {
    const inst = ctl.instance;
    const { clock, logger, coordinator } = this.#o;
    const gen = ctl.supersede();
    ctl.beginStop(reason);
    const res = inst.resource;
    const stopStartedAt = clock.now();
    // Stops run during shutdown too (after close()), so they may outlive the manager.
    const guard = { inst, gen, deadline: stopStartedAt + res.bootTimeoutMs, afterClose: true };
    try {
      await this.#o.calls.withRetry(guard, (signal) => res.provider.stop(inst.ref, signal), 'stop');
    } catch (err) {
      logger.error({ resource: res.id, instance: inst.key, err }, 'stop failed; forgetting the instance');
      coordinator.cancelStop?.(inst.ref, undefined);
      if (inst.generation !== gen) return;
      ctl.stopFailed(`stop failed: ${errMessage(err)}`);
      if (inst.waiters.size > 0 && !this.#o.closed()) this.#o.afterStop(ctl);
      return;
    }
    if (inst.generation !== gen) return;
    const ref = inst.ref;
    ctl.stopped(reason);
    // Logged here, whatever the provider, so that every stop (idle, shutdown, operator) is in
    // the log and not only in the audit table.
    logger.info({ resource: res.id, instance: inst.key, reason, stopMs: clock.now() - stopStartedAt }, 'instance stopped');
    coordinator.stopped(ref);
    // A request that arrived while the instance was stopping waits for the stop, then wakes it.
    const wanted = inst.waiters.size > 0 || inst.startAfterStop;
    ctl.setStartAfterStop(false);
    if (wanted && !this.#o.closed()) this.#o.afterStop(ctl);
  }
}
