/**
 * The coordination port: what the control plane asks of a cluster of replicas so that an
 * instance is started once cluster-wide and stopped once, by one replica at a time.
 * `state/redis/redis-coordinator.ts` implements it on Redis; in one process the manager uses
 * `LocalCoordinator`, which always grants, so one start path and one idle path serve one
 * replica or many.
 *
 * Nothing here is on the warm path (a warm request makes no remote call): the manager consults the coordinator
 * only where it would otherwise call a provider (a start, an idle stop).
 */
import type { InstanceRef } from './ports.ts';

/** A start lease this replica holds. Renewed in the background until released. */
export interface StartLease {
  /** Fencing token: strictly increasing per instance; older holders' writes are refused. */
  readonly token: number;
  /**
   * Another replica held the lease before and its record says it was starting: the
   * provider may already be booting this instance, so ask it (inspect) before a start.
   */
  readonly takeover: boolean;
  /** Publish the handle once the provider accepted the start (for a later takeover). */
  started(handle: string | undefined): void;
  /** Publish readiness (the endpoint every replica forwards to) and release the lease. */
  ready(endpoint: string, handle: string | undefined): Promise<void>;
  /** Publish a failed start and release the lease. */
  failed(reason: string): Promise<void>;
  /**
   * Give the lease up without an outcome (this replica stopped watching: shutdown, a stop):
   * the record still says starting, so the next claimant takes over and asks the provider.
   */
  release(): Promise<void>;
}

/** The outcome of asking the cluster for a start. */
export type StartClaim =
  /** This replica starts (or takes over the watch of) the instance. */
  | { readonly kind: 'lead'; readonly lease: StartLease }
  /** Another replica got it ready: probe it locally, then forward. */
  | { readonly kind: 'ready'; readonly endpoint: string; readonly handle?: string | undefined };

export interface ClaimOptions {
  readonly notEndpoint?: string | undefined;
  readonly failureCooldownMs?: number | undefined;
}

export interface LocalActivity {
  readonly idleStopMs: number;
  /** On this replica's own clock: only ever subtracted from that clock's now (a duration). */
  readonly lastActivityAt: number;
  readonly activeConnections: number;
  /** The endpoint this replica knows the instance by. */
  readonly endpoint: string | undefined;
}

/** `stop`: this replica stops it; `keep`: not idle cluster-wide (or another replica decides); `gone`: already stopped elsewhere. */
export type StopDecision = 'stop' | 'keep' | 'gone';

export interface Coordinator {
  /**
   * Resolves once this replica may start the instance (it holds the lease) or another
   * replica reports it ready. Waits on pub/sub and on a periodic read of the instance record,
   * until `signal` aborts (rejects with its reason). With `notEndpoint`, a ready record with
   * that endpoint counts as stale (this replica just found it unreachable). Rejects with
   * SP_CLUSTER_UNAVAILABLE when the coordination store cannot be reached (unless configured
   * to fall back to a local start), with SP_START_FAILED when the start it waited for failed
   * elsewhere, and with SP_RESOURCE_FAILED while a failure elsewhere is younger than
   * `failureCooldownMs` (the cool-down holds cluster-wide).
   */
  claimStart(ref: InstanceRef, signal: AbortSignal, options?: ClaimOptions): Promise<StartClaim> | StartClaim;
  /**
   * Asked when the local idle timer says stop: sums every replica's activity, twice, with two
   * activity flushes in between, so that a connection opened elsewhere just now is counted.
   * `local` is read each time (this replica's activity may change meanwhile).
   */
  decideStop(ref: InstanceRef, local: () => LocalActivity): Promise<StopDecision> | StopDecision;
  /**
   * This replica stopped the instance (after a `stop` decision, or at shutdown): tell the
   * others. Fenced: written with the token of the stop lease it holds (or of the record it
   * knew), so a slow or stale stop never overwrites a newer start's record.
   */
  stopped(ref: InstanceRef): void;
  /**
   * A `stop` decision that is not carried out (the instance was used again during the
   * decision, or the provider stop failed): the record goes back to ready at `endpoint` (or
   * stopped without one) and the stop lease is given up.
   */
  cancelStop?(ref: InstanceRef, endpoint: string | undefined): void;
}

/** The lease of a single process: nobody else to tell. */
const localLease: StartLease = {
  token: 0,
  takeover: false,
  started: () => undefined,
  ready: () => Promise.resolve(),
  failed: () => Promise.resolve(),
  release: () => Promise.resolve(),
};

/**
 * The coordinator of a single process: every start is granted and every idle stop decided
 * here, at once (not a promise: a start is called in the same tick as the request that wants
 * it, as the admission check in limits.ts relies on).
 */
export class LocalCoordinator implements Coordinator {
  claimStart(): StartClaim {
    return { kind: 'lead', lease: localLease };
  }

  decideStop(): StopDecision {
    return 'stop';
  }

  stopped(): void {
    // Nobody else to tell.
  }
}
