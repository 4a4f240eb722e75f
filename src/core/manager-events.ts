/**
 * What the control plane tells the rest of the proxy, and the one question it asks it (may
 * this start happen?). Types only: the manager publishes, the audit, metrics, limits, state
 * sync and waiting pages listen.
 */
import type { SmartProxyError } from './errors.ts';
import type { Instance } from './instance.ts';
import type { StopRetryOutcome, StopRetryState } from './leftover-stops.ts';
import type { StartRequester } from './resource-runtime.ts';

/** Published on every change that a waiting person, the audit log or metrics care about. */
export type ManagerEvent =
  /** `actor`: the operator who asked for the change (`admin:<user>`); undefined when the proxy decided. */
  | { readonly type: 'instance-changed'; readonly instance: Instance; readonly at: number; readonly reason?: string | undefined; readonly actor?: string | undefined }
  | { readonly type: 'start-requested'; readonly instance: Instance; readonly at: number }
  | { readonly type: 'boot-finished'; readonly instance: Instance; readonly at: number; readonly bootMs: number }
  | { readonly type: 'instance-adopted'; readonly instance: Instance; readonly at: number }
  /** A stop owed for an instance out of service (leftover-stops.ts): a try failed, the tries ran out, or it stopped. */
  | { readonly type: 'stop-retry'; readonly instance: Instance; readonly at: number; readonly outcome: StopRetryOutcome; readonly retry: StopRetryState };

export type ManagerListener = (event: ManagerEvent) => void;

/**
 * Admission of a start (limits, src/access/limits.ts). Called synchronously just before a
 * request would start a stopped, failed or stopping instance, never for one that is ready or
 * already starting (joining a boot is free); the start follows in the same tick, so a count
 * kept by the callback cannot be raced. An error refuses the start and rejects the request.
 */
export type AdmitStart = (inst: Instance, requester: StartRequester | undefined) => SmartProxyError | undefined;

/**
 * The data plane's port into the core: the only way a forward or a tunnel tells the control
 * plane about itself. The core's objects are read-only to the data plane.
 */
export interface ConnectionPort {
  /** A forward or a tunnel to `inst` begins: the instance is in use (never idle-stopped). */
  connectionBegun(inst: Instance): void;
  /** It ended (every begun connection ends exactly once): a held request may go next. */
  connectionEnded(inst: Instance): void;
  /** A forward was answered by the backend: activity, and the first forward after ready is done. */
  forwardDone(inst: Instance): void;
}
