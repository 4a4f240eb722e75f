/**
 * Stops: one provider stop per instance at a time (a second `stop()` while stopping returns
 * the same promise), then the outcome: stopped, or the stop failed and the instance is
 * marked stopped, the stop tried again later (leftover-stops.ts). A request that arrived
 * while it was stopping (or a start asked for meanwhile) starts it again once the stop is over.
 */
import type { Coordinator } from './coordination.ts';
import type { Instance, InstanceControl } from './instance.ts';
import { LEFTOVER_FIRST_RETRY_MS, type LeftoverStops } from './leftover-stops.ts';
import type { Clock, Logger } from './ports.ts';
import { errMessage, type ProviderCalls } from './provider-calls.ts';

export type StopMode = 'stop' | 'suspend';

export interface StopFlightOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly calls: ProviderCalls;
  readonly coordinator: Coordinator;
  readonly closed: () => boolean;
  /** The stop is over and the instance is wanted again (held requests, or a start asked for). */
  readonly afterStop: (ctl: InstanceControl) => void;
  /** Where a failed stop goes to be tried again later. */
  readonly leftovers: LeftoverStops;
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

  /**
   * `suspend` asks the provider to keep the instance's state (where it can); a stop already
   * under way is joined as it is.
   */
  stop(ctl: InstanceControl, reason: string, mode: StopMode = 'stop', actor?: string): Promise<void> {
    const inst = ctl.instance;
    if (inst.status === 'stopped') return Promise.resolve();
    if (inst.status === 'stopping') return this.#stopping.get(inst) ?? Promise.resolve();
    const p = this.#run(ctl, reason, mode, actor).finally(() => this.#stopping.delete(inst));
    this.#stopping.set(inst, p);
    return p;
  }

  async #run(ctl: InstanceControl, reason: string, mode: StopMode, actor: string | undefined): Promise<void> {
    const inst = ctl.instance;
    const { clock, logger, coordinator } = this.#o;
    const gen = ctl.supersede();
    ctl.beginStop(reason, actor);
    const res = inst.resource;
    const stopStartedAt = clock.now();
    // Stops run during shutdown too (after close()), so they may outlive the manager.
    // Requests that arrive meanwhile wait for the stop: once they do, a failed try is the last
    // (the instance is marked stopped and started again, finding the machine if it still
    // runs) rather than holding them through retries until the deadline.
    const guard = {
      inst, gen, deadline: stopStartedAt + res.bootTimeoutMs, afterClose: true,
      stopRetrying: () => !this.#o.closed() && (inst.waiters.size > 0 || inst.startAfterStop),
    };
    try {
      const provider = res.provider;
      await this.#o.calls.withRetry(guard, (signal) => (mode === 'suspend' && provider.suspend !== undefined
        ? provider.suspend(inst.ref, signal)
        : provider.stop(inst.ref, signal)), 'stop');
    } catch (err) {
      coordinator.cancelStop?.(inst.ref, undefined);
      if (inst.generation !== gen) {
        logger.error({ resource: res.id, instance: inst.key, reason, err: errMessage(err) }, 'stop failed; the instance has moved on since');
        return;
      }
      // Marked stopped (requests start it again: a start is idempotent, and finds the machine
      // if it still runs, by the handle kept for that), and stopped again later if nobody
      // wants it: the machine may still run and cost money.
      ctl.stopFailed(`stop failed: ${errMessage(err)}`, actor);
      const wanted = inst.waiters.size > 0 || inst.startAfterStop;
      ctl.setStartAfterStop(false);
      const retry = !wanted && !this.#o.closed() && this.#o.leftovers.schedule(inst, `${reason}; the first stop failed`, LEFTOVER_FIRST_RETRY_MS, 1, errMessage(err));
      logger.error({ resource: res.id, instance: inst.key, reason, err: errMessage(err), retryInMs: retry ? LEFTOVER_FIRST_RETRY_MS : undefined },
        retry ? 'stop failed; marked stopped, the stop is tried again later' : 'stop failed; marked stopped (the machine may still be running)');
      if (wanted && !this.#o.closed()) this.#o.afterStop(ctl);
      return;
    }
    if (inst.generation !== gen) return;
    const ref = inst.ref;
    ctl.stopped(reason, actor);
    // Logged here, whatever the provider, so that every stop (idle, shutdown, operator) is in
    // the log and not only in the audit table.
    logger.info({ resource: res.id, instance: inst.key, reason, stopMs: clock.now() - stopStartedAt }, mode === 'suspend' ? 'instance suspended' : 'instance stopped');
    coordinator.stopped(ref);
    // A request that arrived while the instance was stopping waits for the stop, then wakes it.
    const wanted = inst.waiters.size > 0 || inst.startAfterStop;
    ctl.setStartAfterStop(false);
    if (wanted && !this.#o.closed()) this.#o.afterStop(ctl);
  }
}
