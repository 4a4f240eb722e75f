/**
 * The ports of the core: what the domain needs from the outside world, each with its
 * contract written on it. Implementations live in `providers/`, `state/`, `proxy/`;
 * the core imports none of them (dependencies point into the core, see docs/design.md).
 */

/**
 * What a provider says of an instance. There is no "ready" here on purpose: readiness is
 * decided by the core (provider says `running` *and* a probe succeeds), never by a provider.
 */
export type ProviderState = 'stopped' | 'starting' | 'running' | 'stopping' | 'failed';

/** Identifies one instance of a resource, as the core asks a provider about it. */
export interface InstanceRef {
  /** The resource id from the config (the `{resource_id}` of the URL). */
  readonly resourceId: string;
  /**
   * Stable key of the instance within its resource, deterministic from the sharing mode
   * (`*` for shared, the sorted group list for `groups`, `user:<name>` for `user`). Providers
   * use it as the idempotency key of `start` (for example as a deterministic machine name).
   */
  readonly instanceKey: string;
  /** The groups the instance is started for: sorted, unique. */
  readonly groups: readonly string[];
  /** The user the instance is started for, when the resource is shared per user. */
  readonly user?: string | undefined;
  /** Opaque handle a provider returned from `start` or `list`, once known. */
  readonly handle?: string | undefined;
}

/** A provider's answer to `inspect`. */
export interface InspectResult {
  readonly state: ProviderState;
  /**
   * Base URL of the instance's HTTP service (`http://host:port`, optionally with a path
   * prefix). Required when `state` is `running`; the data plane forwards only to this.
   */
  readonly endpoint?: string | undefined;
  /** Updated handle, when the provider learnt one (for example a VM id). */
  readonly handle?: string | undefined;
  /** Human-readable cause, when `state` is `failed`. */
  readonly reason?: string | undefined;
}

export interface StartResult {
  /** Opaque handle for later `inspect`/`stop` calls, when the provider has one. */
  readonly handle?: string | undefined;
}

/** An instance a provider found running on its own (re-adoption after a proxy restart). */
export interface ListedInstance extends InspectResult {
  readonly resourceId: string;
  readonly instanceKey: string;
  /** The groups the instance was started for, when the provider knows them. */
  readonly groups?: readonly string[] | undefined;
  /** The user the instance was started for, when the provider knows it. */
  readonly user?: string | undefined;
  readonly handle?: string | undefined;
}

/**
 * A provider starts, inspects and stops instances of resources.
 *
 * Contract (checked for every implementation by `test/providers/contract.ts`):
 * - `start` resolves when the start is *accepted*. It never waits for the backend to be
 *   healthy. It is idempotent for the same `instanceKey`: a second call while the first
 *   instance exists does not create a second one.
 * - `inspect` returns `{ state: 'stopped' }`, not an error, for an instance it does not know.
 * - `stop` is idempotent: stopping a stopped or unknown instance resolves.
 * - Every call honours its `signal`: when it aborts, the call rejects promptly with
 *   `signal.reason` (the core treats an aborted call as retryable within its deadline).
 * - Calls reject with a `ProviderError` (see errors.ts) on failure; `retryable` says whether
 *   the core may try again (timeouts, 5xx, 429).
 * - Optional `list` returns instances that are already running, so that a restarted proxy
 *   re-adopts them instead of starting them again.
 */
export interface Provider {
  /** The provider kind, as in the config (`atmosphere`, `process`, `qemu`, …). */
  readonly kind: string;
  start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult>;
  inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult>;
  stop(ref: InstanceRef, signal: AbortSignal): Promise<void>;
  list?(signal: AbortSignal): Promise<ListedInstance[]>;
  /**
   * Optional: stops the instance keeping its state, so that the next `start` resumes it
   * instead of booting anew (a VM's state saved to a file). Present only where the provider,
   * as configured, can do it; operators ask for it through the admin API.
   */
  suspend?(ref: InstanceRef, signal: AbortSignal): Promise<void>;
  /**
   * Optional: the output the provider keeps of an instance (a process's stdout/stderr ring,
   * a VM's serial console), for operators. Undefined when it knows none. Never blocks on I/O.
   */
  output?(ref: InstanceRef): { readonly text: string; readonly droppedBytes: number } | undefined;
  /**
   * Releases sockets, child-process watchers and timers; instances are left as they are.
   * May be called more than once.
   */
  close?(): Promise<void>;
}

/** TLS client settings of an `https:` backend, as plain data (src/proxy/backend-tls.ts). */
export interface ProbeTls {
  readonly ca: string | undefined;
  readonly servername: string | undefined;
  readonly rejectUnauthorized: boolean;
  readonly key: string;
}

/** How the core checks that a running instance answers. */
export type ProbeSpec =
  | {
      readonly kind: 'http';
      /** Path appended to the endpoint's own path prefix. */
      readonly path: string;
      /** Statuses that count as ready; any other status, or no answer, is not ready. */
      readonly expectStatus: readonly number[];
      readonly timeoutMs: number;
      /** For an `https:` endpoint: how its certificate is checked (the data plane's setting). */
      readonly tls?: ProbeTls | undefined;
    }
  | { readonly kind: 'tcp'; readonly timeoutMs: number };

export type ProbeOutcome = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/**
 * Checks an endpoint once. Contract: resolves (never rejects) within `spec.timeoutMs`, or as
 * soon as `signal` aborts, with `ok: false` and a reason for any failure. Uses a fresh
 * connection each time: a stale pooled socket must not make a dead backend look alive.
 */
export interface Prober {
  probe(endpoint: string, spec: ProbeSpec, signal: AbortSignal): Promise<ProbeOutcome>;
}

/** A cancellable timer handle from a {@link Clock}. */
export interface TimerHandle {
  cancel(): void;
}

/**
 * Time, injected so that tests drive it (a test advances time; it never sleeps).
 * `now()` is milliseconds since the epoch.
 */
export interface Clock {
  now(): number;
  /** Calls `fn` once after `ms`. The timer does not keep the process alive. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
}

/**
 * Structured logging port. pino's logger satisfies it; tests can collect calls.
 * Logging must never throw and must not block the caller on I/O.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** What the store remembers of one instance (the lifecycle status as the core last saw it). */
export interface InstanceRecord {
  readonly resourceId: string;
  readonly instanceKey: string;
  /** The groups the instance was started for: sorted, unique. */
  readonly groups: readonly string[];
  readonly user?: string | undefined;
  /** The provider's handle (VM id, container id…), once known. */
  readonly handle?: string | undefined;
  /** Base URL the data plane forwards to, while ready. */
  readonly endpoint?: string | undefined;
  /** `starting`, `ready`, `stopping` or `failed`: stopped instances are deleted, not kept. */
  readonly status: 'starting' | 'ready' | 'stopping' | 'failed';
  /** Epoch ms of the last start request, of readiness, of the last request or closed connection. */
  readonly startRequestedAt: number;
  readonly readyAt: number;
  readonly lastActivityAt: number;
  /** Epoch ms of this write. */
  readonly updatedAt: number;
}

/** One boot duration, for the boot-time estimate shown to waiting people. */
export interface BootSample {
  readonly resourceId: string;
  readonly bootMs: number;
  /** Epoch ms when the boot finished. */
  readonly at: number;
}

/** Something that happened to an instance, for operators (audit log). */
export interface AuditEvent {
  /** Epoch ms. */
  readonly at: number;
  /** Past tense: `instance-changed`, `start-requested`, `boot-finished`, `instance-adopted`. */
  readonly type: string;
  readonly resourceId: string;
  readonly instanceKey?: string | undefined;
  /** Lifecycle status after the event, when it moved one. */
  readonly status?: string | undefined;
  readonly reason?: string | undefined;
  /**
   * Who caused it: a verified user name, `anonymous`, or `admin:<user>` for an operator's
   * action through the admin API. Absent when the proxy itself did it (idle stop, crash repair).
   */
  readonly actor?: string | undefined;
}

/** An audit event as stored: `id` grows with every event written (the paging cursor). */
export interface StoredAuditEvent extends AuditEvent {
  readonly id: number;
}

/** Filters and paging of `Store.queryAudit`; every filter is optional and they combine with AND. */
export interface AuditQuery {
  readonly resourceId?: string | undefined;
  readonly type?: string | undefined;
  readonly actor?: string | undefined;
  readonly instanceKey?: string | undefined;
  /** Epoch ms, inclusive. */
  readonly sinceMs?: number | undefined;
  /** Epoch ms, exclusive. */
  readonly untilMs?: number | undefined;
  /** Only events older than this id (the cursor of the next page). */
  readonly beforeId?: number | undefined;
  /** At most this many events, newest first. */
  readonly limit: number;
}

/** Everything one flush writes, applied as one unit where the store can (one transaction). */
export interface StoreBatch {
  /** Inserted or replaced by `(resourceId, instanceKey)`. */
  readonly upserts: readonly InstanceRecord[];
  /** Instances that stopped: their records go. Unknown keys are not an error. */
  readonly deletes: ReadonlyArray<{ readonly resourceId: string; readonly instanceKey: string }>;
  readonly bootSamples: readonly BootSample[];
  readonly audit: readonly AuditEvent[];
}

/**
 * Where the control plane keeps what must survive a restart: instances (to re-adopt them
 * instead of starting them again), boot-time history and audit events.
 *
 * Contract (checked for every implementation by `test/state/store-contract.ts`):
 * - Every method is async, so a networked store (Redis) fits the same port; callers never
 *   await a store on the request path (a slow store must never slow a request): writes are collected in
 *   memory and applied in batches on a timer by `core/state-sync.ts`.
 * - `apply` is all-or-nothing where the engine allows, and idempotent: applying the same
 *   batch twice leaves the same records (a retried flush after a half-known failure is safe).
 *   Upserts replace the whole record; a later `updatedAt` is not required to win (the single
 *   writer per instance is the core itself).
 * - `loadInstances` returns every stored instance record, in no particular order.
 * - `loadBootSamples(n)` returns, per resource, at most the `n` newest samples, oldest first.
 * - `recentAudit(n)` returns at most the `n` newest events, newest first.
 * - `queryAudit(q)` filters the same events; ids are unique and grow with write order, so
 *   `beforeId` of the last event of one page gives the next page without gaps or repeats.
 * - Stores bound their own growth (old samples and audit events are pruned).
 * - Failures reject with an Error; they never throw synchronously. `close` is idempotent, and
 *   after it every other call rejects.
 */
export interface Store {
  /** `memory`, `sqlite`, `redis`…: for logs and metrics. */
  readonly kind: string;
  apply(batch: StoreBatch): Promise<void>;
  loadInstances(): Promise<InstanceRecord[]>;
  loadBootSamples(perResource: number): Promise<BootSample[]>;
  recentAudit(limit: number): Promise<AuditEvent[]>;
  /** The newest events matching `query`, newest first, with their ids (admin API paging). */
  queryAudit(query: AuditQuery): Promise<StoredAuditEvent[]>;
  close(): Promise<void>;
}

/**
 * Small values with a time to live, shared by every replica when the store is (sign-in
 * sessions too big for a cookie, single-use sign-in markers). Keys are opaque strings of at
 * most 200 characters; an expired value is never returned. Failures reject: callers decide.
 */
export interface KeyValueStore {
  readonly kind: string;
  /** Stores `value` under `key` for `ttlMs`, replacing any value. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /** Stores only when `key` holds no live value; true when stored (one winner across replicas). */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  get(key: string): Promise<string | undefined>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}
