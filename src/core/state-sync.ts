/**
 * Keeps the state store in step with the control plane, without ever putting the store on
 * the request path (a slow store must never slow a request):
 *
 * - Writes are write-behind: lifecycle events mark an instance dirty, activity is read from
 *   `Instance.lastActivityAt` (an O(1) in-memory mark), and everything is applied in one
 *   batch every `flushIntervalMs`.
 * - A failed flush is logged and counted, its contents are kept for the next one (audit
 *   events bounded: the oldest are dropped and counted), and traffic goes on from memory.
 * - On start-up `restore` reads boot history and instances back and re-adopts the instances
 *   that were running (the manager checks each with the provider; nothing is started again),
 *   and `adoptListed` asks providers with `list()` for running instances the store missed
 *   (for example a start that had not been flushed when the proxy was killed).
 */
import type { AuditEvent, BootSample, Clock, InstanceRecord, Logger, Store, StoreBatch, TimerHandle } from './ports.ts';
import type { Instance, ManagerEvent, ResourceManager, ResourceRuntime } from './resource-manager.ts';
import { timeoutSignal } from './resource-manager.ts';

export interface StateSyncOptions {
  readonly store: Store;
  readonly manager: ResourceManager;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly flushIntervalMs: number;
  /** Audit events kept in memory while the store fails; older ones are dropped. */
  readonly maxPendingAudit?: number;
  /** Boot samples read back per resource. */
  readonly bootSamplesPerResource?: number;
}

export interface StateSyncStats {
  flushes: number;
  failures: number;
  droppedAudit: number;
  lastError: string | undefined;
}

interface Written {
  readonly status: string;
  readonly phase: string | undefined;
  readonly lastActivityAt: number;
  readonly handle: string | undefined;
  readonly endpoint: string | undefined;
}

export class StateSync {
  readonly stats: StateSyncStats = { flushes: 0, failures: 0, droppedAudit: 0, lastError: undefined };
  readonly #store: Store;
  readonly #manager: ResourceManager;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #maxAudit: number;
  readonly #samplesPerResource: number;
  readonly #dirty = new Set<Instance>();
  readonly #written = new WeakMap<Instance, Written>();
  readonly #lastStatus = new WeakMap<Instance, string>();
  #samples: BootSample[] = [];
  #audit: AuditEvent[] = [];
  #timer: TimerHandle | undefined;
  #flushing: Promise<void> | undefined;
  #unsubscribe: (() => void) | undefined;
  #closed = false;
  /** The flush timer is off: nothing pending, nothing in service (see #quiet). */
  #sleeping = false;

  /** Told each audit event made here from the control plane's events (the admin live stream shows them at once). */
  onAudit: ((e: AuditEvent) => void) | undefined;

  constructor(options: StateSyncOptions) {
    this.#store = options.store;
    this.#manager = options.manager;
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#intervalMs = Math.max(1, options.flushIntervalMs);
    this.#maxAudit = options.maxPendingAudit ?? 10_000;
    this.#samplesPerResource = options.bootSamplesPerResource ?? 50;
  }

  get storeKind(): string {
    return this.#store.kind;
  }

  /**
   * Reads the stored state back: boot history, then instances to re-adopt. Resolves once
   * the adoptions are under way (their provider checks go on in the background, and
   * requests arriving meanwhile wait on them). A failing store is logged, not fatal.
   */
  async restore(resources: ReadonlyMap<string, ResourceRuntime>): Promise<{ adopting: number; dropped: number }> {
    try {
      for (const s of await this.#store.loadBootSamples(this.#samplesPerResource)) {
        if (resources.has(s.resourceId)) this.#manager.recordBootSample(s.resourceId, s.bootMs);
      }
    } catch (err) {
      this.#failed(err, 'could not read boot history; starting without it');
    }
    let records: InstanceRecord[];
    try {
      records = await this.#store.loadInstances();
    } catch (err) {
      this.#failed(err, 'could not read instances; none re-adopted from the store');
      return { adopting: 0, dropped: 0 };
    }
    let adopting = 0;
    let dropped = 0;
    const deletes: Array<{ resourceId: string; instanceKey: string }> = [];
    for (const r of records) {
      const res = resources.get(r.resourceId);
      if (res === undefined || r.status === 'failed') {
        // A resource removed from the config, or a start that had failed: nothing to adopt.
        deletes.push({ resourceId: r.resourceId, instanceKey: r.instanceKey });
        dropped++;
        continue;
      }
      const inst = this.#manager.adopt(res, r);
      if (inst !== undefined) {
        adopting++;
        this.#written.set(inst, { status: 'ready', phase: undefined, lastActivityAt: r.lastActivityAt, handle: r.handle, endpoint: r.endpoint });
      }
    }
    if (deletes.length > 0) {
      this.#store.apply({ upserts: [], deletes, bootSamples: [], audit: [] })
        .catch((err: unknown) => this.#failed(err, 'could not drop stale instance records'));
    }
    if (records.length > 0) this.#log.info({ store: this.#store.kind, adopting, dropped }, 'state restored');
    return { adopting, dropped };
  }

  /**
   * Asks each provider that can `list()` for running instances of our resources that the
   * store did not know, and adopts them. Runs in the background; a failing or hanging
   * provider only delays its own resources' adoption.
   */
  async adoptListed(resources: ReadonlyMap<string, ResourceRuntime>, callTimeoutMs: number): Promise<number> {
    const byProvider = new Map<ResourceRuntime['provider'], ResourceRuntime[]>();
    for (const r of resources.values()) {
      if (r.provider.list === undefined) continue;
      const list = byProvider.get(r.provider) ?? [];
      list.push(r);
      byProvider.set(r.provider, list);
    }
    let adopted = 0;
    await Promise.all([...byProvider].map(async ([provider, ours]) => {
      let listed;
      try {
        listed = await provider.list?.(timeoutSignal(this.#clock, callTimeoutMs)) ?? [];
      } catch (err) {
        this.#log.warn({ provider: provider.kind, err: err instanceof Error ? err.message : String(err) }, 'provider list failed; nothing re-adopted from it');
        return;
      }
      for (const l of listed) {
        const res = ours.find((r) => r.id === l.resourceId);
        if (res === undefined || (l.state !== 'running' && l.state !== 'starting')) continue;
        const who = l.groups === undefined ? identityOfKey(res.sharing, l.instanceKey) : { groups: [...l.groups], user: l.user };
        if (who === undefined) continue;
        const inst = this.#manager.adopt(res, { instanceKey: l.instanceKey, ...who, handle: l.handle, lastActivityAt: this.#clock.now() });
        if (inst !== undefined) adopted++;
      }
    }));
    if (adopted > 0) this.#log.info({ adopted }, 'instances re-adopted from provider lists');
    return adopted;
  }

  /**
   * Queues an audit event that did not come from the control plane's own events (an access
   * denial, a start with its verified actor, an operator's action) for the next flush. O(1),
   * never awaits: callable on the request path.
   */
  recordAudit(e: AuditEvent): void {
    if (this.#closed) return;
    this.#pushAudit(e);
    this.#wake();
  }

  /** Subscribes to the control plane and starts the flush timer. */
  start(): void {
    this.#unsubscribe = this.#manager.onEvent((e) => this.#onEvent(e));
    this.#schedule();
  }

  /** Writes everything pending now (also what the timer does). Never rejects. */
  flush(): Promise<void> {
    this.#flushing ??= this.#flushOnce().finally(() => { this.#flushing = undefined; });
    return this.#flushing;
  }

  /** Final flush, then closes the store. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer?.cancel();
    this.#unsubscribe?.();
    await this.#flushing;
    await this.#flushOnce();
    try {
      await this.#store.close();
    } catch (err) {
      this.#failed(err, 'could not close the store');
    }
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      void this.flush().finally(() => {
        // An idle proxy should cost nothing: with nothing pending and no instance in
        // service, nothing can change without an event or an audit record, and both wake
        // the timer again. Instances in service keep it: their activity marks change
        // without events.
        if (this.#quiet()) this.#sleeping = true;
        else this.#schedule();
      });
    }, this.#intervalMs);
  }

  #quiet(): boolean {
    if (this.#dirty.size > 0 || this.#audit.length > 0 || this.#samples.length > 0) return false;
    for (const inst of this.#manager.allInstances()) {
      if (inst.status !== 'stopped' && inst.status !== 'failed') return false;
    }
    return true;
  }

  #wake(): void {
    if (!this.#sleeping || this.#closed) return;
    this.#sleeping = false;
    this.#schedule();
  }

  #onEvent(e: ManagerEvent): void {
    this.#wake();
    const inst = e.instance;
    this.#dirty.add(inst);
    const base = { at: e.at, resourceId: inst.resource.id, instanceKey: inst.key };
    switch (e.type) {
      case 'instance-changed': {
        if (this.#lastStatus.get(inst) === inst.status) return; // a phase change: not audited
        this.#lastStatus.set(inst, inst.status);
        this.#lifecycleAudit({ ...base, type: 'instance-changed', status: inst.status, reason: e.reason, ...(e.actor === undefined ? {} : { actor: e.actor }) });
        return;
      }
      case 'start-requested':
        this.#lifecycleAudit({ ...base, type: 'start-requested' });
        return;
      case 'boot-finished':
        this.#samples.push({ resourceId: inst.resource.id, bootMs: e.bootMs, at: e.at });
        this.#lifecycleAudit({ ...base, type: 'boot-finished', status: inst.status, reason: `booted in ${e.bootMs} ms` });
        return;
      case 'instance-adopted':
        this.#lifecycleAudit({ ...base, type: 'instance-adopted', status: inst.status });
        return;
      case 'stop-retry': {
        if (e.outcome === 'retrying' || e.outcome === 'abandoned') return; // the admin API audits these, with the operator
        // An owed stop that keeps failing is a machine that may run (and cost) on: each failed
        // try and, above all, giving up are in the audit, not only in the log.
        const r = e.retry;
        const tries = `try ${r.attempts} of ${r.maxAttempts}`;
        const reason = e.outcome === 'stopped' ? `${r.reason}: stopped (${tries})`
          : e.outcome === 'failed' ? `${r.reason}: ${tries} failed (${r.lastError ?? 'no error'}); next try at ${new Date(r.nextAttemptAt ?? e.at).toISOString()}`
            : `${r.reason}: gave up after ${r.attempts} tries (${r.lastError ?? 'no error'}); the machine may still be running`;
        this.#lifecycleAudit({ ...base, type: `stop-retry-${e.outcome}`, status: inst.status, reason });
        return;
      }
    }
  }

  /** An audit event of the control plane's own: queued for the store, and told to `onAudit`. */
  #lifecycleAudit(e: AuditEvent): void {
    this.#pushAudit(e);
    this.onAudit?.(e);
  }

  #pushAudit(e: AuditEvent): void {
    this.#audit.push(e);
    if (this.#audit.length > this.#maxAudit) {
      const over = this.#audit.length - this.#maxAudit;
      this.#audit.splice(0, over);
      this.stats.droppedAudit += over;
    }
  }

  async #flushOnce(): Promise<void> {
    const now = this.#clock.now();
    const upserts: InstanceRecord[] = [];
    const deletes: Array<{ resourceId: string; instanceKey: string }> = [];
    const snapshot = new Map<Instance, Written>();
    const dirty = this.#dirty;
    for (const inst of this.#manager.allInstances()) {
      const w = this.#written.get(inst);
      // Once a second over every instance: an unchanged one (most, on a large config) is
      // passed over without allocating anything.
      if (w !== undefined && (dirty.size === 0 || !dirty.has(inst)) && sameAsWritten(w, inst)) continue;
      if (w === undefined && inst.status === 'stopped') continue; // never written, nothing to delete
      const cur: Written = { status: inst.status, phase: inst.phase, lastActivityAt: inst.lastActivityAt, handle: inst.handle, endpoint: inst.endpoint };
      snapshot.set(inst, cur);
      if (inst.status === 'stopped') {
        deletes.push({ resourceId: inst.resource.id, instanceKey: inst.key });
      } else {
        upserts.push({
          resourceId: inst.resource.id, instanceKey: inst.key, groups: inst.groups, user: inst.user,
          handle: inst.handle, endpoint: inst.endpoint, status: inst.status,
          startRequestedAt: inst.startRequestedAt, readyAt: inst.readyAt, lastActivityAt: inst.lastActivityAt, updatedAt: now,
        });
      }
    }
    this.#dirty.clear();
    const samples = this.#samples;
    const audit = this.#audit;
    this.#samples = [];
    this.#audit = [];
    const batch: StoreBatch = { upserts, deletes, bootSamples: samples, audit };
    if (upserts.length + deletes.length + samples.length + audit.length === 0) return;
    try {
      await this.#store.apply(batch);
      this.stats.flushes++;
      for (const [inst, w] of snapshot) {
        if (w.status === 'stopped') this.#written.delete(inst);
        else this.#written.set(inst, w);
      }
    } catch (err) {
      // Keep it all for the next flush; instances are re-read from memory then anyway.
      for (const inst of snapshot.keys()) this.#dirty.add(inst);
      this.#samples = samples.concat(this.#samples).slice(-1_000);
      this.#audit = audit.concat(this.#audit);
      if (this.#audit.length > this.#maxAudit) {
        const over = this.#audit.length - this.#maxAudit;
        this.#audit.splice(0, over);
        this.stats.droppedAudit += over;
      }
      this.#failed(err, 'state flush failed; serving from memory and retrying');
    }
  }

  #failed(err: unknown, msg: string): void {
    this.stats.failures++;
    this.stats.lastError = err instanceof Error ? err.message : String(err);
    this.#log.warn({ store: this.#store.kind, failures: this.stats.failures, err: this.stats.lastError }, msg);
  }
}

function sameAsWritten(w: Written, inst: Instance): boolean {
  return w.lastActivityAt === inst.lastActivityAt && w.status === inst.status && w.phase === inst.phase && w.handle === inst.handle && w.endpoint === inst.endpoint;
}

/**
 * The groups/user an instance key stands for, by sharing mode (the inverse of
 * `selectInstance`); undefined when the key cannot belong to a resource shared that way.
 */
export function identityOfKey(sharing: ResourceRuntime['sharing'], key: string): { groups: string[]; user?: string } | undefined {
  switch (sharing) {
    case 'shared':
      return key === '*' ? { groups: [] } : undefined;
    case 'user':
      return key.startsWith('user:') ? { groups: [], user: key.slice(5) } : undefined;
    case 'groups':
      return { groups: key === '*' || key === '' ? [] : key.split(',') };
  }
}
