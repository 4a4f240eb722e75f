/**
 * What the admin side remembers beyond the control plane's own objects: who started each
 * instance (from the audit trail, which carries the verified actor), each resource's recent
 * boots with their times (for the dashboard's charts), and a fan-out of changes to the open
 * live streams. Fed by the manager's events and by the audit bridge; bounded everywhere.
 */
import type { AuditEvent as AccessAuditEvent, AuditSink } from '../access/audit.ts';
import type { AuditEvent, BootSample, Clock } from '../core/ports.ts';
import type { Instance, ManagerEvent, ResourceManager } from '../core/resource-manager.ts';
import type { StateSync } from '../core/state-sync.ts';

/** Who asked for the current (or last) start of an instance. */
export interface StartedBy {
  readonly actor: string;
  readonly at: number;
}

/** One change, as the live stream (`GET /api/v1/events`) tells it. */
export type AdminChange =
  | { readonly kind: 'instance'; readonly instance: Instance }
  | { readonly kind: 'audit'; readonly event: AuditEvent };

export type AdminChangeListener = (change: AdminChange) => void;

const BOOTS_PER_RESOURCE = 50;
/** Remembered starters; more instances than this only lose the oldest "started by". */
const MAX_STARTED_BY = 100_000;

export function instanceId(resourceId: string, instanceKey: string): string {
  return `${resourceId}\u0000${instanceKey}`;
}

/** The actor string of an access-layer audit event (`anonymous` when none was verified). */
export function actorOf(actor: { readonly user: string | undefined; readonly via?: string } | undefined): string | undefined {
  if (actor === undefined) return undefined;
  // The proxy acting on its own (keep-warm, a restart after a health check) is named as such.
  if (actor.via === 'system') return 'system';
  return actor.user ?? 'anonymous';
}

/** The stored form of an access-layer audit event (start, denied, limit). */
export function toStoredAudit(e: AccessAuditEvent): AuditEvent {
  switch (e.type) {
    case 'start':
      return { at: e.at, type: 'start', resourceId: e.resource, instanceKey: e.instance, actor: actorOf(e.actor), reason: `for groups [${e.groups.join(',')}]` };
    case 'denied':
      return {
        at: e.at, type: 'denied', resourceId: e.resource, actor: actorOf(e.actor), status: e.code,
        reason: `${e.method} as [${e.urlGroups}]: ${e.reason}${e.actor.remoteAddress === undefined ? '' : ` (from ${e.actor.remoteAddress})`}`,
      };
    case 'endpoint-refused':
      return { at: e.at, type: 'endpoint-refused', resourceId: e.resource, instanceKey: e.instance, actor: 'system', reason: `${e.endpoint}: ${e.reason}` };
    case 'limit':
      return { at: e.at, type: 'limit', resourceId: e.resource, instanceKey: e.instance, actor: actorOf(e.actor), reason: `${e.limit}: ${e.current} of ${e.max}` };
  }
}

export class AdminState {
  readonly #manager: ResourceManager;
  readonly #clock: Clock;
  readonly #startedBy = new Map<string, StartedBy>();
  readonly #boots = new Map<string, BootSample[]>();
  readonly #listeners = new Set<AdminChangeListener>();
  #sync: StateSync | undefined;
  readonly #unsubscribe: () => void;

  constructor(manager: ResourceManager, clock: Clock) {
    this.#manager = manager;
    this.#clock = clock;
    this.#unsubscribe = manager.onEvent((e) => this.#onManagerEvent(e));
  }

  /**
   * The sink the access layer's audit goes to: into the state store (through StateSync,
   * batched) and to the live streams. Events before `attachStore` are kept in memory only
   * as "started by"; the access layer records nothing before the data plane listens.
   */
  readonly auditSink: AuditSink = {
    record: (e) => {
      if (e.type === 'start' && e.actor !== undefined) this.#setStartedBy(e.resource, e.instance, { actor: actorOf(e.actor) ?? 'anonymous', at: e.at });
      this.record(toStoredAudit(e));
    },
  };

  attachStore(sync: StateSync): void {
    this.#sync = sync;
    // The store's own lifecycle entries (an owed stop given up…) reach the live streams too.
    sync.onAudit = (e) => this.#publish({ kind: 'audit', event: e });
  }

  /** Records an audit event in the store (next flush) and tells the live streams. */
  record(e: AuditEvent): void {
    this.#sync?.recordAudit(e);
    this.#publish({ kind: 'audit', event: e });
  }

  /** An operator started an instance (the admin API). */
  startedByAdmin(inst: Instance, actor: string): void {
    this.#setStartedBy(inst.resource.id, inst.key, { actor, at: this.#clock.now() });
  }

  startedBy(inst: Instance): StartedBy | undefined {
    return this.#startedBy.get(instanceId(inst.resource.id, inst.key));
  }

  /** Boots of a resource, oldest first, with when each finished. */
  boots(resourceId: string): readonly BootSample[] {
    return this.#boots.get(resourceId) ?? [];
  }

  /** Seeds boot history read back from the store at start-up. */
  seedBoots(samples: readonly BootSample[]): void {
    for (const s of samples) this.#addBoot(s);
  }

  onChange(listener: AdminChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  close(): void {
    this.#unsubscribe();
    if (this.#sync !== undefined) this.#sync.onAudit = undefined;
    this.#listeners.clear();
  }

  #onManagerEvent(e: ManagerEvent): void {
    if (e.type === 'boot-finished') this.#addBoot({ resourceId: e.instance.resource.id, bootMs: e.bootMs, at: e.at });
    this.#publish({ kind: 'instance', instance: e.instance });
  }

  #addBoot(s: BootSample): void {
    let list = this.#boots.get(s.resourceId);
    if (list === undefined) {
      list = [];
      this.#boots.set(s.resourceId, list);
    }
    list.push(s);
    if (list.length > BOOTS_PER_RESOURCE) list.splice(0, list.length - BOOTS_PER_RESOURCE);
  }

  #setStartedBy(resourceId: string, instanceKey: string, who: StartedBy): void {
    const id = instanceId(resourceId, instanceKey);
    this.#startedBy.delete(id); // re-insert: the Map's order is then oldest-first for pruning
    this.#startedBy.set(id, who);
    if (this.#startedBy.size > MAX_STARTED_BY) {
      const oldest = this.#startedBy.keys().next();
      if (oldest.done !== true) this.#startedBy.delete(oldest.value);
    }
  }

  #publish(change: AdminChange): void {
    for (const l of this.#listeners) l(change);
  }

  /** The manager (read-only use by the views). */
  get manager(): ResourceManager {
    return this.#manager;
  }
}
