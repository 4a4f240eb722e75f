/**
 * Drains: an operator takes an instance out of service without losing a request. From the
 * drain on, nothing new is forwarded to it: new requests are held (bounded as always), as for
 * a stopping instance. The forwards in flight and the open tunnels finish; then it stops, or
 * when the drain's time is over. The stop flight then starts it again for the held requests,
 * so they are served by a fresh instance.
 */
import type { Instance, InstanceControl } from './instance.ts';
import type { Clock, TimerHandle } from './ports.ts';

export interface DrainsOptions {
  readonly clock: Clock;
  readonly stop: (inst: Instance, reason: string, actor: string | undefined) => void;
}

export class Drains {
  readonly #o: DrainsOptions;
  readonly #drains = new Map<Instance, { readonly reason: string; readonly actor: string | undefined; readonly timer: TimerHandle }>();

  constructor(options: DrainsOptions) {
    this.#o = options;
  }

  /**
   * Drains `ctl`'s instance; false when it is neither ready nor starting (nothing to drain).
   * `actor`: the operator who asked, named on the stop that ends the drain.
   */
  drain(ctl: InstanceControl, reason: string, timeoutMs: number, actor?: string): boolean {
    const inst = ctl.instance;
    if (this.#drains.has(inst)) return true;
    if (!ctl.beginDrain()) return false;
    const timer = this.#o.clock.setTimeout(() => this.#finish(inst, `${reason} (drain time over)`), timeoutMs);
    this.#drains.set(inst, { reason, actor, timer });
    this.check(inst);
    return true;
  }

  /** A connection ended, or the instance became ready: a drained one with none left stops. */
  check(inst: Instance): void {
    const d = this.#drains.get(inst);
    if (d !== undefined && inst.activeConnections === 0) this.#finish(inst, d.reason);
  }

  /** The instance left service (stopped, failed, forgotten): its drain is over. */
  ended(inst: Instance): void {
    if (inst.draining) return;
    this.#drains.get(inst)?.timer.cancel();
    this.#drains.delete(inst);
  }

  #finish(inst: Instance, reason: string): void {
    const d = this.#drains.get(inst);
    if (d === undefined) return;
    d.timer.cancel();
    this.#drains.delete(inst);
    // Stopped or restarted meanwhile: the mark is gone and so is this drain.
    if (inst.draining) this.#o.stop(inst, reason, d.actor);
  }
}
