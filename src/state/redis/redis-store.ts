/**
 * The store on Redis, for many replicas sharing one state (`state.kind: redis`). Same
 * contract as the SQLite store (test/state/store-contract.ts).
 *
 * Keys (all under the configured prefix):
 * - `instances`: a hash, field `<resourceId>/<instanceKey>` (each part URI-encoded), value a
 *   versioned JSON record (`REDIS_RECORD_VERSION`, pinned by a test).
 * - `boot:<resourceId>`: a list of JSON boot samples, oldest first, trimmed; `boot-resources`:
 *   the set of resources that have one.
 * - `audit`: a list of JSON audit events, newest first, trimmed; `audit-seq`: the counter
 *   their `id`s come from (the admin API's paging cursor; older records without one read as 0).
 *
 * Each `apply` is one MULTI/EXEC transaction: all or nothing, and idempotent for upserts and
 * deletes. A record with a newer `v` than this code knows is refused, not guessed at.
 */
import type { Redis } from 'ioredis';
import { pageOfAudit } from '../../core/audit-query.ts';
import type { AuditEvent, AuditQuery, BootSample, InstanceRecord, Logger, Store, StoreBatch, StoredAuditEvent } from '../../core/ports.ts';
import { openRedis, type RedisSpec } from './client.ts';

/** The record format version this code writes (the `v` field). */
export const REDIS_RECORD_VERSION = 1;

export interface RedisStoreOptions extends RedisSpec {
  /** Prefix of every key, so several proxies (or tests) share one Redis. */
  readonly keyPrefix: string;
  readonly logger: Logger;
  readonly maxBootSamplesPerResource?: number;
  readonly maxAuditEvents?: number;
}

export function instanceField(resourceId: string, instanceKey: string): string {
  return `${encodeURIComponent(resourceId)}/${encodeURIComponent(instanceKey)}`;
}

/** The stored form of an instance record: what the format test pins. */
export function encodeInstance(r: InstanceRecord): string {
  return JSON.stringify({
    v: REDIS_RECORD_VERSION, resourceId: r.resourceId, instanceKey: r.instanceKey, groups: r.groups,
    user: r.user ?? null, handle: r.handle ?? null, endpoint: r.endpoint ?? null, status: r.status,
    startRequestedAt: r.startRequestedAt, readyAt: r.readyAt, lastActivityAt: r.lastActivityAt, updatedAt: r.updatedAt,
  });
}

const statuses = new Set(['starting', 'ready', 'stopping', 'failed']);

export function decodeInstance(text: string): InstanceRecord {
  const o = parseVersioned(text, 'instance');
  const groups = o.groups;
  if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) throw new Error('instance record has malformed groups');
  if (typeof o.status !== 'string' || !statuses.has(o.status)) throw new Error(`instance record has an unknown status "${String(o.status)}"`);
  return {
    resourceId: str(o.resourceId), instanceKey: str(o.instanceKey), groups: groups,
    user: optStr(o.user), handle: optStr(o.handle), endpoint: optStr(o.endpoint), status: o.status as InstanceRecord['status'],
    startRequestedAt: num(o.startRequestedAt), readyAt: num(o.readyAt), lastActivityAt: num(o.lastActivityAt), updatedAt: num(o.updatedAt),
  };
}

export class RedisStore implements Store {
  readonly kind = 'redis';
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #maxSamples: number;
  readonly #maxAudit: number;
  #closed = false;

  constructor(options: RedisStoreOptions) {
    this.#prefix = options.keyPrefix;
    this.#maxSamples = options.maxBootSamplesPerResource ?? 100;
    this.#maxAudit = options.maxAuditEvents ?? 10_000;
    this.#redis = openRedis(options, options.logger, 'store');
  }

  async apply(batch: StoreBatch): Promise<void> {
    this.#check();
    const p = this.#prefix;
    // Ids are taken before the transaction: a failed one leaves a gap in the ids, which
    // paging tolerates (ids only need to grow), never a repeat.
    const lastId = batch.audit.length > 0 ? await this.#redis.incrby(`${p}audit-seq`, batch.audit.length) : 0;
    const firstId = lastId - batch.audit.length + 1;
    const m = this.#redis.multi();
    if (batch.upserts.length > 0) {
      m.hset(`${p}instances`, Object.fromEntries(batch.upserts.map((r) => [instanceField(r.resourceId, r.instanceKey), encodeInstance(r)])));
    }
    if (batch.deletes.length > 0) m.hdel(`${p}instances`, ...batch.deletes.map((d) => instanceField(d.resourceId, d.instanceKey)));
    const byResource = new Map<string, BootSample[]>();
    for (const s of batch.bootSamples) byResource.set(s.resourceId, [...(byResource.get(s.resourceId) ?? []), s]);
    for (const [id, samples] of byResource) {
      const key = `${p}boot:${encodeURIComponent(id)}`;
      m.rpush(key, ...samples.map((s) => JSON.stringify({ v: REDIS_RECORD_VERSION, resourceId: s.resourceId, bootMs: s.bootMs, at: s.at })));
      m.ltrim(key, -this.#maxSamples, -1);
      m.sadd(`${p}boot-resources`, id);
    }
    if (batch.audit.length > 0) {
      m.lpush(`${p}audit`, ...batch.audit.map((e, i) => JSON.stringify({
        v: REDIS_RECORD_VERSION, at: e.at, type: e.type, resourceId: e.resourceId,
        instanceKey: e.instanceKey ?? null, status: e.status ?? null, reason: e.reason ?? null,
        actor: e.actor ?? null, id: firstId + i,
      })));
      m.ltrim(`${p}audit`, 0, this.#maxAudit - 1);
    }
    const results = await m.exec();
    const failed = results?.find(([err]) => err !== null);
    if (results === null) throw new Error('redis transaction aborted');
    if (failed !== undefined) throw failed[0] as Error;
  }

  async loadInstances(): Promise<InstanceRecord[]> {
    this.#check();
    const all = await this.#redis.hvals(`${this.#prefix}instances`);
    return all.map(decodeInstance);
  }

  async loadBootSamples(perResource: number): Promise<BootSample[]> {
    this.#check();
    const ids = await this.#redis.smembers(`${this.#prefix}boot-resources`);
    const out: BootSample[] = [];
    for (const id of ids.sort()) {
      const rows = await this.#redis.lrange(`${this.#prefix}boot:${encodeURIComponent(id)}`, -perResource, -1);
      for (const row of rows) {
        const o = parseVersioned(row, 'boot sample');
        out.push({ resourceId: str(o.resourceId), bootMs: num(o.bootMs), at: num(o.at) });
      }
    }
    return out;
  }

  async recentAudit(limit: number): Promise<AuditEvent[]> {
    this.#check();
    const rows = await this.#redis.lrange(`${this.#prefix}audit`, 0, Math.max(0, limit - 1));
    return rows.map((row) => {
      const { id: _id, ...e } = decodeAudit(row);
      return e.actor === undefined ? (({ actor: _a, ...rest }) => rest)(e) : e;
    });
  }

  async queryAudit(query: AuditQuery): Promise<StoredAuditEvent[]> {
    this.#check();
    // The list is bounded by maxAuditEvents, so reading it whole is bounded too.
    const rows = await this.#redis.lrange(`${this.#prefix}audit`, 0, -1);
    return pageOfAudit(rows.map(decodeAudit), query);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#redis.disconnect();
  }

  #check(): void {
    if (this.#closed) throw new Error('store is closed');
  }
}

function decodeAudit(row: string): StoredAuditEvent {
  const o = parseVersioned(row, 'audit event');
  return {
    id: typeof o.id === 'number' ? o.id : 0,
    at: num(o.at), type: str(o.type), resourceId: str(o.resourceId), instanceKey: optStr(o.instanceKey),
    status: optStr(o.status), reason: optStr(o.reason), actor: optStr(o.actor),
  };
}

function parseVersioned(text: string, what: string): Record<string, unknown> {
  const o: unknown = JSON.parse(text);
  if (typeof o !== 'object' || o === null) throw new Error(`${what}: not a JSON object`);
  const rec = o as Record<string, unknown>;
  if (rec.v !== REDIS_RECORD_VERSION) {
    throw new Error(`${what}: record version ${String(rec.v)} is not ${REDIS_RECORD_VERSION}; written by another proxy version`);
  }
  return rec;
}

function str(v: unknown): string {
  if (typeof v !== 'string') throw new Error(`expected a string, got ${typeof v}`);
  return v;
}

function optStr(v: unknown): string | undefined {
  return v === null || v === undefined ? undefined : str(v);
}

function num(v: unknown): number {
  if (typeof v !== 'number') throw new Error(`expected a number, got ${typeof v}`);
  return v;
}
