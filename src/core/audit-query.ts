/**
 * The one reading of an `AuditQuery`, for stores that filter in memory (memory, Redis); the
 * SQLite store says the same in SQL, and the store contract holds them to one behaviour.
 */
import type { AuditQuery, StoredAuditEvent } from './ports.ts';

/** Does `e` pass every filter of `q` (paging included, the limit aside)? */
export function matchesAudit(e: StoredAuditEvent, q: AuditQuery): boolean {
  return (q.resourceId === undefined || e.resourceId === q.resourceId)
    && (q.type === undefined || e.type === q.type)
    && (q.actor === undefined || e.actor === q.actor)
    && (q.instanceKey === undefined || e.instanceKey === q.instanceKey)
    && (q.sinceMs === undefined || e.at >= q.sinceMs)
    && (q.untilMs === undefined || e.at < q.untilMs)
    && (q.beforeId === undefined || e.id < q.beforeId);
}

/** Newest-first events (ids descending) → the first `q.limit` that match. */
export function pageOfAudit(newestFirst: Iterable<StoredAuditEvent>, q: AuditQuery): StoredAuditEvent[] {
  const out: StoredAuditEvent[] = [];
  if (q.limit <= 0) return out;
  for (const e of newestFirst) {
    if (!matchesAudit(e, q)) continue;
    out.push(e);
    if (out.length >= q.limit) break;
  }
  return out;
}
