/** What a ResourceManager is built with. */
import type { Coordinator } from './coordination.ts';
import type { AdmitStart } from './manager-events.ts';
import type { Clock, Logger, Prober } from './ports.ts';
import type { CircuitSettings } from './provider-circuit.ts';

export interface ManagerOptions {
  readonly clock: Clock;
  readonly prober: Prober;
  readonly logger: Logger;
  /** Requests held at once over all resources. */
  readonly maxHeldRequestsTotal: number;
  readonly admitStart?: AdmitStart | undefined;
  /**
   * Many replicas: consulted only where a provider would be called (a start, an idle stop),
   * never on the warm path. Absent: a LocalCoordinator (one process). See core/coordination.ts.
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
