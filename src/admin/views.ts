/**
 * What the admin API shows of the control plane: plain JSON views built from the manager's
 * objects (read-only), and the effective configuration with its secrets redacted.
 */
import type { StopRetryState } from '../core/leftover-stops.ts';
import type { AuditEvent, StoredAuditEvent } from '../core/ports.ts';
import type { Instance, ResourceManager, ResourceRuntime } from '../core/resource-manager.ts';
import { snapshotOf } from '../proxy/progress-sse.ts';
import type { AdminState } from './admin-state.ts';
import type { AuditEventView, InstanceView, ResourceView, StopRetryListView, StopRetryView } from './schemas.ts';

const iso = (ms: number): string | null => (ms > 0 ? new Date(ms).toISOString() : null);

/** `resourceRemoved`: a reload removed the instance's resource (it is shown while a stop is owed for it). */
export function instanceView(manager: ResourceManager, state: AdminState, inst: Instance, now: number, resourceRemoved = false): InstanceView {
  const snap = snapshotOf(manager, inst, now);
  const idleMs = inst.resource.idleStopMs;
  const idleDeadline = inst.status === 'ready' && idleMs > 0 ? iso(Math.max(inst.lastActivityAt, inst.readyAt) + idleMs) : null;
  const started = inst.status !== 'stopped' || inst.startRequestedAt > 0;
  return {
    resource: inst.resource.id,
    instanceKey: inst.key,
    groups: [...inst.groups],
    user: inst.user ?? null,
    state: inst.status,
    phase: inst.phase ?? null,
    step: snap.step,
    endpoint: inst.endpoint ?? null,
    handle: inst.handle ?? null,
    startedBy: started ? state.startedBy(inst)?.actor ?? null : null,
    startRequestedAt: iso(inst.startRequestedAt),
    readyAt: inst.status === 'ready' ? iso(inst.readyAt) : null,
    lastActivityAt: iso(inst.lastActivityAt),
    idleDeadline,
    activeConnections: inst.activeConnections,
    heldRequests: inst.waiters.size,
    elapsedMs: snap.elapsedMs,
    eta: snap.eta,
    lastError: inst.status === 'failed' ? inst.lastError?.message ?? null : null,
    stopRetry: stopRetryView(manager.stopRetries.stateOf(inst)),
    resourceRemoved,
  };
}

export function stopRetryView(s: StopRetryState | undefined): StopRetryView | null {
  if (s === undefined) return null;
  return {
    state: s.state, reason: s.reason, attempts: s.attempts, maxAttempts: s.maxAttempts,
    nextAttemptAt: s.nextAttemptAt === undefined ? null : iso(s.nextAttemptAt), lastError: s.lastError ?? null,
    since: iso(s.since) ?? new Date(0).toISOString(), gaveUpAt: s.gaveUpAt === undefined ? null : iso(s.gaveUpAt),
  };
}

/**
 * Every owed stop: given-up ones first (they need someone), then the soonest next try. Those
 * of resources a reload removed are listed too (their machines may run on), marked as such.
 */
export function stopRetryList(manager: ResourceManager, isConfigured: (resourceId: string) => boolean): StopRetryListView {
  const retries = manager.stopRetries;
  const items: StopRetryListView['items'] = [];
  for (const inst of retries.instances()) {
    const s = stopRetryView(retries.stateOf(inst));
    if (s !== null) items.push({ resource: inst.resource.id, instanceKey: inst.key, instanceState: inst.status, stopRetry: s, resourceRemoved: !isConfigured(inst.resource.id) });
  }
  const rank = (v: StopRetryView): string => `${v.state === 'given-up' ? 0 : 1}${v.nextAttemptAt ?? ''}`;
  items.sort((a, b) => rank(a.stopRetry).localeCompare(rank(b.stopRetry)));
  const { pending, givenUp } = retries.counts();
  return { items, pending, givenUp };
}

export function resourceView(manager: ResourceManager, state: AdminState, r: ResourceRuntime, now: number, withInstances = true): ResourceView {
  const counts = { stopped: 0, starting: 0, ready: 0, stopping: 0, failed: 0 };
  const instances: InstanceView[] = [];
  for (const inst of manager.instancesOf(r.id)) {
    counts[inst.status]++;
    if (withInstances) instances.push(instanceView(manager, state, inst, now));
  }
  const est = manager.estimateBoot(r.id);
  return {
    id: r.id,
    provider: r.provider.kind,
    sharing: r.sharing,
    bootTimeoutMs: r.bootTimeoutMs,
    idleStopMs: r.idleStopMs,
    capabilities: { suspend: typeof r.provider.suspend === 'function', logs: typeof r.provider.output === 'function' },
    boot: {
      estimate: est === undefined ? null : { samples: est.samples, p50Ms: est.p50Ms, p90Ms: est.p90Ms },
      history: state.boots(r.id).map((s) => ({ bootMs: s.bootMs, at: new Date(s.at).toISOString() })),
    },
    counts,
    instances,
  };
}

export function auditView(e: StoredAuditEvent): AuditEventView {
  return {
    id: e.id, at: new Date(e.at).toISOString(), type: e.type, resource: e.resourceId, instanceKey: e.instanceKey ?? null,
    status: e.status ?? null, reason: e.reason ?? null, actor: e.actor ?? null,
  };
}

/** An event on the live stream has no id yet (it is written on the next flush). */
export function liveAuditView(e: AuditEvent): Omit<AuditEventView, 'id'> {
  const { id: _id, ...rest } = auditView({ ...e, id: 0 });
  return rest;
}

/** Keys whose value is a secret: `secret`, `passwordHash`, `clientSecret`, `hash`, `token`, `apiKey`… */
const SECRET_KEY = /(secret|password|passwd|hash|token|apikey|api_key|privatekey|private_key|authorization|cookie)$/i;
const REDACTED = '[redacted]';

/**
 * A deep copy of `value` with every value under a secret-looking key replaced, passwords
 * taken out of URLs, and environment values of started programs hidden (they often carry
 * keys). Structure and every other value are kept, so an operator sees what is in effect.
 */
export function redact(value: unknown, key = ''): unknown {
  if (SECRET_KEY.test(key) && value !== undefined && value !== null && typeof value !== 'boolean') return REDACTED;
  if (typeof value === 'string') return redactUrl(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, key));
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = k === 'env' && typeof v === 'object' && v !== null && !Array.isArray(v)
        ? Object.fromEntries(Object.keys(v as object).map((name) => [name, REDACTED]))
        : redact(v, k);
    }
    return out;
  }
  return value;
}

function redactUrl(s: string): string {
  // scheme://user:password@host → scheme://user:[redacted]@host
  return s.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:\s]*):[^/@\s]*@/i, `$1:${REDACTED}@`);
}
