/**
 * The store in process memory: what `state.kind: memory` uses, and the reference the
 * contract suite holds the other stores to. Nothing survives a restart.
 */
import { pageOfAudit } from '../core/audit-query.ts';
import type { AuditEvent, AuditQuery, BootSample, InstanceRecord, Store, StoreBatch, StoredAuditEvent } from '../core/ports.ts';

export interface MemoryStoreOptions {
  readonly maxBootSamplesPerResource?: number;
  readonly maxAuditEvents?: number;
}

export class MemoryStore implements Store {
  readonly kind = 'memory';
  readonly #instances = new Map<string, InstanceRecord>();
  readonly #samples = new Map<string, BootSample[]>();
  #audit: StoredAuditEvent[] = [];
  #nextAuditId = 1;
  readonly #maxSamples: number;
  readonly #maxAudit: number;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.#maxSamples = options.maxBootSamplesPerResource ?? 100;
    this.#maxAudit = options.maxAuditEvents ?? 10_000;
  }

  async apply(batch: StoreBatch): Promise<void> {
    this.#check();
    for (const r of batch.upserts) this.#instances.set(keyOf(r.resourceId, r.instanceKey), { ...r, groups: [...r.groups] });
    for (const d of batch.deletes) this.#instances.delete(keyOf(d.resourceId, d.instanceKey));
    for (const s of batch.bootSamples) {
      let list = this.#samples.get(s.resourceId);
      if (list === undefined) {
        list = [];
        this.#samples.set(s.resourceId, list);
      }
      list.push({ ...s });
      if (list.length > this.#maxSamples) list.splice(0, list.length - this.#maxSamples);
    }
    for (const e of batch.audit) this.#audit.push({ ...e, id: this.#nextAuditId++ });
    if (this.#audit.length > this.#maxAudit) this.#audit = this.#audit.slice(-this.#maxAudit);
  }

  async loadInstances(): Promise<InstanceRecord[]> {
    this.#check();
    return [...this.#instances.values()].map((r) => ({ ...r, groups: [...r.groups] }));
  }

  async loadBootSamples(perResource: number): Promise<BootSample[]> {
    this.#check();
    const out: BootSample[] = [];
    for (const list of this.#samples.values()) out.push(...list.slice(-perResource).map((s) => ({ ...s })));
    return out;
  }

  async recentAudit(limit: number): Promise<AuditEvent[]> {
    this.#check();
    return this.#audit.slice(-limit).reverse().map(({ id: _id, ...e }) => e);
  }

  async queryAudit(query: AuditQuery): Promise<StoredAuditEvent[]> {
    this.#check();
    const audit = this.#audit;
    function* newestFirst(): Generator<StoredAuditEvent> {
      for (let i = audit.length - 1; i >= 0; i--) yield audit[i] as StoredAuditEvent;
    }
    return pageOfAudit(newestFirst(), query).map((e) => ({ ...e }));
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #check(): void {
    if (this.#closed) throw new Error('store is closed');
  }
}

function keyOf(resourceId: string, instanceKey: string): string {
  return `${resourceId}\u0000${instanceKey}`;
}
