/**
 * The embedded default store: one SQLite file through `node:sqlite` (no server to run).
 *
 * WAL journal with `synchronous=NORMAL`: a committed flush survives a crash of the proxy
 * (kill -9); only a crash of the machine itself may lose the last flush, which costs at most
 * a re-adoption by provider `list()` or an idle timer restarted from an older activity mark.
 *
 * The schema has a version table; `migrations[i]` brings version i to i + 1, each in its own
 * transaction. A file written by a newer proxy (higher version) is refused, not guessed at.
 *
 * This class is the engine: synchronous inside (DatabaseSync), each call one short
 * transaction. The proxy never runs it on its event loop: `ThreadedSqliteStore` hosts it on a
 * worker thread, because a write that meets another connection's lock waits there for up to
 * `busyTimeoutMs`. Tests and tools may use it directly.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type SQLOutputValue } from 'node:sqlite';
import type { AuditEvent, AuditQuery, BootSample, InstanceRecord, Store, StoreBatch, StoredAuditEvent } from '../core/ports.ts';

export interface SqliteStoreOptions {
  /** File path, or `:memory:`. The parent directory is created if missing. */
  readonly path: string;
  readonly maxBootSamplesPerResource?: number;
  readonly maxAuditEvents?: number;
  /** How long a write waits for another connection's lock. */
  readonly busyTimeoutMs?: number;
}

/** Each entry upgrades the schema by one version. Append only; never edit a shipped one. */
const migrations: readonly string[] = [
  // 0 → 1
  `CREATE TABLE instances (
     resource_id TEXT NOT NULL,
     instance_key TEXT NOT NULL,
     groups_json TEXT NOT NULL,
     user_name TEXT,
     handle TEXT,
     endpoint TEXT,
     status TEXT NOT NULL,
     start_requested_at INTEGER NOT NULL,
     ready_at INTEGER NOT NULL,
     last_activity_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (resource_id, instance_key)
   ) WITHOUT ROWID;
   CREATE TABLE boot_samples (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     resource_id TEXT NOT NULL,
     boot_ms INTEGER NOT NULL,
     at INTEGER NOT NULL
   );
   CREATE INDEX boot_samples_by_resource ON boot_samples (resource_id, id);
   CREATE TABLE audit_events (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     at INTEGER NOT NULL,
     type TEXT NOT NULL,
     resource_id TEXT NOT NULL,
     instance_key TEXT,
     status TEXT,
     reason TEXT
   );`,
  // 1 → 2: who did it (admin API audit), and reading by time without a full scan.
  `ALTER TABLE audit_events ADD COLUMN actor TEXT;
   CREATE INDEX audit_events_by_at ON audit_events (at);`,
];

/** The schema version this code writes. */
export const SQLITE_SCHEMA_VERSION = migrations.length;

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly #db: DatabaseSync;
  readonly #maxSamples: number;
  readonly #maxAudit: number;
  #closed = false;

  constructor(options: SqliteStoreOptions) {
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    this.#db = new DatabaseSync(options.path);
    this.#maxSamples = options.maxBootSamplesPerResource ?? 100;
    this.#maxAudit = options.maxAuditEvents ?? 10_000;
    try {
      this.#db.exec(`PRAGMA busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5_000)}`);
      this.#db.exec('PRAGMA journal_mode = WAL');
      this.#db.exec('PRAGMA synchronous = NORMAL');
      this.#migrate(options.path);
    } catch (err) {
      this.#db.close();
      throw err;
    }
  }

  /** The schema version of the open file (for tests and diagnostics). */
  get schemaVersion(): number {
    return readVersion(this.#db);
  }

  #migrate(path: string): void {
    this.#db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
    let version = readVersion(this.#db);
    if (version > migrations.length) {
      throw new Error(`${path}: state schema version ${version} is newer than this proxy understands (${migrations.length}); use a newer proxy or another file`);
    }
    while (version < migrations.length) {
      const sql = migrations[version] as string;
      this.#tx(() => {
        this.#db.exec(sql);
        this.#db.exec('DELETE FROM schema_version');
        this.#db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(version + 1);
      });
      version++;
    }
  }

  #tx(fn: () => void): void {
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      fn();
      this.#db.exec('COMMIT');
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
  }

  async apply(batch: StoreBatch): Promise<void> {
    this.#check();
    this.#tx(() => {
      if (batch.upserts.length > 0) {
        const up = this.#db.prepare(`INSERT OR REPLACE INTO instances
          (resource_id, instance_key, groups_json, user_name, handle, endpoint, status, start_requested_at, ready_at, last_activity_at, updated_at)
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
        for (const r of batch.upserts) {
          up.run(r.resourceId, r.instanceKey, JSON.stringify(r.groups), r.user ?? null, r.handle ?? null, r.endpoint ?? null,
            r.status, r.startRequestedAt, r.readyAt, r.lastActivityAt, r.updatedAt);
        }
      }
      if (batch.deletes.length > 0) {
        const del = this.#db.prepare('DELETE FROM instances WHERE resource_id = ? AND instance_key = ?');
        for (const d of batch.deletes) del.run(d.resourceId, d.instanceKey);
      }
      if (batch.bootSamples.length > 0) {
        const ins = this.#db.prepare('INSERT INTO boot_samples (resource_id, boot_ms, at) VALUES (?, ?, ?)');
        for (const s of batch.bootSamples) ins.run(s.resourceId, Math.round(s.bootMs), s.at);
        const prune = this.#db.prepare(`DELETE FROM boot_samples WHERE resource_id = ? AND id <=
          (SELECT id FROM boot_samples WHERE resource_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`);
        for (const id of new Set(batch.bootSamples.map((s) => s.resourceId))) prune.run(id, id, this.#maxSamples);
      }
      if (batch.audit.length > 0) {
        const ins = this.#db.prepare('INSERT INTO audit_events (at, type, resource_id, instance_key, status, reason, actor) VALUES (?, ?, ?, ?, ?, ?, ?)');
        for (const e of batch.audit) ins.run(e.at, e.type, e.resourceId, e.instanceKey ?? null, e.status ?? null, e.reason ?? null, e.actor ?? null);
        this.#db.prepare('DELETE FROM audit_events WHERE id <= (SELECT MAX(id) FROM audit_events) - ?').run(this.#maxAudit);
      }
    });
  }

  async loadInstances(): Promise<InstanceRecord[]> {
    this.#check();
    return this.#db.prepare('SELECT * FROM instances').all().map(toInstanceRecord);
  }

  async loadBootSamples(perResource: number): Promise<BootSample[]> {
    this.#check();
    const rows = this.#db.prepare(`SELECT resource_id, boot_ms, at FROM (
        SELECT resource_id, boot_ms, at, id, ROW_NUMBER() OVER (PARTITION BY resource_id ORDER BY id DESC) AS n FROM boot_samples
      ) WHERE n <= ? ORDER BY resource_id, id`).all(perResource);
    return rows.map((r) => ({ resourceId: str(r.resource_id), bootMs: num(r.boot_ms), at: num(r.at) }));
  }

  async recentAudit(limit: number): Promise<AuditEvent[]> {
    this.#check();
    const rows = this.#db.prepare('SELECT * FROM audit_events ORDER BY id DESC LIMIT ?').all(limit);
    return rows.map((r) => {
      const e: AuditEvent = {
        at: num(r.at), type: str(r.type), resourceId: str(r.resource_id),
        instanceKey: optStr(r.instance_key), status: optStr(r.status), reason: optStr(r.reason),
      };
      return r.actor === null || r.actor === undefined ? e : { ...e, actor: str(r.actor) };
    });
  }

  async queryAudit(q: AuditQuery): Promise<StoredAuditEvent[]> {
    this.#check();
    const where: string[] = [];
    const args: Array<string | number> = [];
    const eq = (column: string, v: string | undefined): void => {
      if (v === undefined) return;
      where.push(`${column} = ?`);
      args.push(v);
    };
    eq('resource_id', q.resourceId);
    eq('type', q.type);
    eq('actor', q.actor);
    eq('instance_key', q.instanceKey);
    if (q.sinceMs !== undefined) { where.push('at >= ?'); args.push(q.sinceMs); }
    if (q.untilMs !== undefined) { where.push('at < ?'); args.push(q.untilMs); }
    if (q.beforeId !== undefined) { where.push('id < ?'); args.push(q.beforeId); }
    const sql = `SELECT * FROM audit_events${where.length === 0 ? '' : ` WHERE ${where.join(' AND ')}`} ORDER BY id DESC LIMIT ?`;
    const rows = this.#db.prepare(sql).all(...args, Math.max(0, Math.trunc(q.limit)));
    return rows.map((r) => ({
      id: num(r.id), at: num(r.at), type: str(r.type), resourceId: str(r.resource_id),
      instanceKey: optStr(r.instance_key), status: optStr(r.status), reason: optStr(r.reason), actor: optStr(r.actor),
    }));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#db.close();
  }

  #check(): void {
    if (this.#closed) throw new Error('store is closed');
  }
}

function readVersion(db: DatabaseSync): number {
  const row = db.prepare('SELECT MAX(version) AS v FROM schema_version').get();
  return row === undefined || row.v === null ? 0 : num(row.v);
}

const statuses = new Set(['starting', 'ready', 'stopping', 'failed']);

function toInstanceRecord(r: Record<string, SQLOutputValue>): InstanceRecord {
  const status = str(r.status);
  if (!statuses.has(status)) throw new Error(`instances row has an unknown status "${status}"`);
  const groups: unknown = JSON.parse(str(r.groups_json));
  if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) throw new Error('instances row has malformed groups');
  return {
    resourceId: str(r.resource_id), instanceKey: str(r.instance_key), groups,
    user: optStr(r.user_name), handle: optStr(r.handle), endpoint: optStr(r.endpoint),
    status: status as InstanceRecord['status'],
    startRequestedAt: num(r.start_requested_at), readyAt: num(r.ready_at), lastActivityAt: num(r.last_activity_at), updatedAt: num(r.updated_at),
  };
}

function str(v: SQLOutputValue | undefined): string {
  if (typeof v !== 'string') throw new Error(`expected a text column, got ${typeof v}`);
  return v;
}

function optStr(v: SQLOutputValue | undefined): string | undefined {
  return v === null || v === undefined ? undefined : str(v);
}

function num(v: SQLOutputValue | undefined): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  throw new Error(`expected an integer column, got ${typeof v}`);
}
