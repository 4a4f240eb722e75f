/**
 * Asks the provider now and then whether a ready instance still exists (a VM removed behind
 * the proxy's back sends no refused connection until someone asks). One call at a time per
 * instance, bounded by the provider call timeout; an error is no verdict. Armed when an
 * instance becomes ready, cleared when it leaves `ready`; what to do about a verdict is the
 * manager's (the watcher only reports it).
 */
import type { Instance } from './instance.ts';
import type { Clock, InspectResult, Logger, TimerHandle } from './ports.ts';
import { deadlineSignal, errMessage, raceAbort, type ProviderCalls } from './provider-calls.ts';

export interface HealthWatcherOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly calls: ProviderCalls;
  readonly closed: () => boolean;
  /** Still running, at another endpoint. */
  readonly onMoved: (inst: Instance, endpoint: string) => void;
  /** The provider no longer runs it (`state` is what it said). */
  readonly onGone: (inst: Instance, state: InspectResult['state']) => void;
}

export class HealthWatcher {
  readonly #o: HealthWatcherOptions;
  readonly #timers = new Map<Instance, TimerHandle>();

  constructor(options: HealthWatcherOptions) {
    this.#o = options;
  }

  schedule(inst: Instance): void {
    const everyMs = inst.resource.healthCheckIntervalMs ?? 0;
    if (everyMs <= 0) return;
    this.#timers.get(inst)?.cancel();
    const gen = inst.generation;
    this.#timers.set(inst, this.#o.clock.setTimeout(() => {
      this.#timers.delete(inst);
      void this.#check(inst, gen).finally(() => {
        if (this.#current(inst, gen)) this.schedule(inst);
      });
    }, everyMs));
  }

  clear(inst: Instance): void {
    this.#timers.get(inst)?.cancel();
    this.#timers.delete(inst);
  }

  #current(inst: Instance, gen: number): boolean {
    return inst.status === 'ready' && inst.generation === gen && !this.#o.closed();
  }

  async #check(inst: Instance, gen: number): Promise<void> {
    if (!this.#current(inst, gen)) return;
    const { calls, clock, logger } = this.#o;
    const res = inst.resource;
    const circuit = calls.circuitOf(res.provider);
    // While the API is known to be down, asking again tells nothing new.
    if (circuit.acquire() !== undefined) return;
    const { signal, done } = deadlineSignal(clock, res.providerCallTimeoutMs);
    // A check is worth no queue: with every call slot of the provider taken (a slow cloud, a
    // wave of starts), it is skipped until the next interval.
    const call = calls.tryCall(res.provider, () => res.provider.inspect(inst.ref, signal));
    if (call === undefined) {
      done();
      logger.debug({ resource: res.id, instance: inst.key }, 'health check skipped: the provider is busy');
      return;
    }
    let found: InspectResult;
    try {
      found = await raceAbort(call, signal);
      circuit.reached();
    } catch (err) {
      calls.record(res.provider, circuit, err, signal.aborted);
      // No verdict on the instance, but an operator must see a cloud that does not answer.
      logger.warn({ resource: res.id, instance: inst.key, err: errMessage(err) }, 'health check: provider did not answer');
      return;
    } finally {
      done();
    }
    if (!this.#current(inst, gen)) return;
    if (found.state === 'running' && found.endpoint !== undefined && found.endpoint !== inst.endpoint) {
      this.#o.onMoved(inst, found.endpoint);
      return;
    }
    if (found.state !== 'running') this.#o.onGone(inst, found.state);
  }
}
