/**
 * Instances of a resource removed by a reload: drained, then stopped. Held requests and
 * open connections (forwards, WebSockets, SSE) finish first; past the drain time the
 * instance is stopped anyway, as at shutdown, so a removed resource never runs on unbilled.
 */
import type { Clock, Logger, TimerHandle } from '../core/ports.ts';
import type { Instance, ResourceManager } from '../core/resource-manager.ts';

/** How often a draining instance is looked at again. */
const CHECK_EVERY_MS = 250;

export interface RetireOptions {
  readonly manager: ResourceManager;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Longest wait for connections to end before the stop. */
  readonly drainTimeoutMs: number;
  /** True once the resource is configured again (a later reload): retirement is called off. */
  readonly isConfigured: (resourceId: string) => boolean;
}

export class Retirer {
  readonly #o: RetireOptions;
  readonly #timers = new Set<TimerHandle>();
  #closed = false;

  constructor(options: RetireOptions) {
    this.#o = options;
  }

  /** Instances being drained right now. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Drains then stops every instance of `resourceId` that is not stopped. */
  retire(resourceId: string): void {
    for (const inst of this.#o.manager.instancesOf(resourceId)) {
      if (inst.status !== 'stopped' && inst.status !== 'failed') this.#watch(inst, this.#o.clock.now() + this.#o.drainTimeoutMs);
    }
  }

  /** Stops watching (shutdown stops or keeps instances by its own rule). */
  close(): void {
    this.#closed = true;
    for (const t of this.#timers) t.cancel();
    this.#timers.clear();
  }

  #watch(inst: Instance, deadline: number): void {
    const check = (): void => {
      this.#timers.delete(timer);
      if (this.#closed || this.#o.isConfigured(inst.resource.id) || inst.status === 'stopped' || inst.status === 'stopping') return;
      const busy = inst.waiters.size > 0 || inst.activeConnections > 0 || inst.status === 'starting';
      if (busy && this.#o.clock.now() < deadline) {
        this.#watch(inst, deadline);
        return;
      }
      if (busy) this.#o.logger.warn({ resource: inst.resource.id, instance: inst.key, connections: inst.activeConnections, held: inst.waiters.size }, 'removed resource: drain time over, stopping');
      void this.#o.manager.stop(inst, 'resource removed by a configuration reload').catch((err: unknown) => {
        this.#o.logger.warn({ err, resource: inst.resource.id, instance: inst.key }, 'removed resource: stop failed');
      });
    };
    const timer = this.#o.clock.setTimeout(check, CHECK_EVERY_MS);
    this.#timers.add(timer);
  }
}
