/**
 * May a request hold for, or start, an instance right now? Answers before anything is held
 * or started: the failure cool-down (SP_RESOURCE_FAILED), an open provider circuit
 * (SP_PROVIDER_UNREACHABLE) and the access layer's limits (`AdmitStart`).
 */
import type { BootHistory } from './boot-history.ts';
import { SmartProxyError } from './errors.ts';
import type { Instance } from './instance.ts';
import type { AdmitStart } from './manager-events.ts';
import type { Clock } from './ports.ts';
import type { ProviderCalls } from './provider-calls.ts';
import type { StartRequester } from './resource-runtime.ts';

export class Admission {
  readonly #clock: Clock;
  readonly #calls: ProviderCalls;
  readonly #history: BootHistory;
  readonly #admitStart: AdmitStart | undefined;

  constructor(clock: Clock, calls: ProviderCalls, history: BootHistory, admitStart: AdmitStart | undefined) {
    this.#clock = clock;
    this.#calls = calls;
    this.#history = history;
    this.#admitStart = admitStart;
  }

  /** The cool-down or the circuit, whichever refuses first. */
  refused(inst: Instance): SmartProxyError | undefined {
    return this.coolingDown(inst) ?? this.providerDown(inst);
  }

  /** SP_RESOURCE_FAILED while a failed instance cools down. */
  coolingDown(inst: Instance): SmartProxyError | undefined {
    if (inst.status !== 'failed') return undefined;
    // Not this instance's failure but its provider's: the circuit decides (providerDown).
    if (inst.lastError?.code === 'SP_PROVIDER_UNREACHABLE') return undefined;
    const left = inst.failedUntil - this.#clock.now();
    if (left <= 0) return undefined;
    return new SmartProxyError('SP_RESOURCE_FAILED', undefined, {
      data: { resource: inst.resource.id, cause: inst.lastError?.message, causeCode: inst.lastError?.code },
      retryAfterS: Math.ceil(left / 1000),
    });
  }

  /**
   * SP_PROVIDER_UNREACHABLE when `inst` is not ready and its provider's circuit is open: a
   * start would be refused now (status pages say so too).
   */
  providerDown(inst: Instance): SmartProxyError | undefined {
    if (inst.status === 'ready') return undefined;
    const circuit = this.#calls.knownCircuit(inst.resource.provider);
    const refusedMs = circuit?.refusedForMs();
    return circuit === undefined || refusedMs === undefined ? undefined : this.#calls.unreachableError(inst, circuit, refusedMs);
  }

  /** Consults `admitStart` when this request would start the instance (see AdmitStart). */
  admit(inst: Instance, requester: StartRequester | undefined): SmartProxyError | undefined {
    if (this.#admitStart === undefined) return undefined;
    if (inst.status === 'ready' || inst.status === 'starting') return undefined;
    return this.#admitStart(inst, requester);
  }

  /** Retry-After for a request refused or timed out while a start is under way: the median boot. */
  retryAfterS(inst: Instance): number {
    const est = this.#history.estimate(inst.resource.id);
    return Math.max(1, Math.ceil((est?.p50Ms ?? 5000) / 1000));
  }
}
