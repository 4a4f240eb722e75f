/**
 * What the core knows of one configured resource, and who a start is made for. Plain data
 * built once from the configuration; the units of the core read it, none writes it.
 */
import type { KeepWarmPolicy } from './keep-warm.ts';
import type { ProbeSpec, Provider } from './ports.ts';

/** How instances of a resource are shared between users (see docs/concepts/access.md). */
export type SharingMode = 'shared' | 'groups' | 'user';

/** What the core needs to know of one configured resource. Built once from the config. */
export interface ResourceRuntime {
  readonly id: string;
  readonly provider: Provider;
  readonly sharing: SharingMode;
  /** From the start call to ready; past it the start fails with SP_BOOT_TIMEOUT. */
  readonly bootTimeoutMs: number;
  readonly probe: ProbeSpec;
  /** Pause between two probes once the provider says running. */
  readonly probeIntervalMs: number;
  /** Provider polling backs off from min to max while the provider says starting. */
  readonly pollIntervalMinMs: number;
  readonly pollIntervalMaxMs: number;
  /** Each provider call is cut after this long (and retried if time is left). */
  readonly providerCallTimeoutMs: number;
  /** After a failed start, requests get SP_RESOURCE_FAILED for this long. */
  readonly failureCooldownMs: number;
  /** Requests held for this resource at once (over all its instances). */
  readonly maxHeldRequests: number;
  /** Stop an instance after this long without activity; 0 keeps it running. */
  readonly idleStopMs: number;
  /** Held requests released at once onto a fresh backend; more follow as forwards finish. Default 64. */
  readonly releaseConcurrency?: number | undefined;
  /** How often the provider is asked whether a ready instance still exists; 0 or absent: never. */
  readonly healthCheckIntervalMs?: number | undefined;
  /** A floor on running instances, always and in time windows. */
  readonly keepWarm?: KeepWarmPolicy | undefined;
}

/** Who a start would be made for: the verified caller and the groups it acts with. */
export interface StartRequester {
  readonly user: string | undefined;
  readonly groups: readonly string[];
  /** Opaque to the core: the access layer's record of the caller, for its audit. */
  readonly actor?: unknown;
}

/** What a restarted proxy knows of an instance it may re-adopt (state store or provider list). */
export interface AdoptionRecord {
  readonly instanceKey: string;
  readonly groups: readonly string[];
  readonly user?: string | undefined;
  readonly handle?: string | undefined;
  /** Epoch ms; the idle timer goes on from here instead of starting over. */
  readonly lastActivityAt: number;
  readonly startRequestedAt?: number | undefined;
  readonly readyAt?: number | undefined;
}
