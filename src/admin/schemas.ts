/**
 * The admin API's shapes, as zod schemas: the code validates queries and bodies with them,
 * builds its answers to their types, and `openapi.ts` turns the same schemas into the
 * OpenAPI document (`z.toJSONSchema`), so the document cannot drift from the code.
 */
import { z } from 'zod';

export const adminRegistry = z.registry<{ id: string; description?: string }>();

const isoTime = z.string().describe('RFC 3339 time (UTC).');

export const etaSchema = z.object({
  samples: z.number().int().describe('Past boots the estimate is learnt from.'),
  p50Ms: z.number().describe('Median boot time.'),
  p90Ms: z.number().describe('90th percentile boot time.'),
  remainingMs: z.number().describe('p50 minus the time already spent booting; 0 once past it or ready.'),
}).register(adminRegistry, { id: 'Eta', description: 'Boot-time estimate from this resource\'s own past boots.' });

export const instanceStateSchema = z.enum(['stopped', 'starting', 'ready', 'stopping', 'failed']);
export const stepSchema = z.enum(['stopped', 'requested', 'booting', 'probing', 'ready', 'failed', 'stopping']);

export const stopRetrySchema = z.object({
  state: z.enum(['scheduled', 'running', 'given-up']).describe('`scheduled`: waiting for its next try; `running`: a try in flight; `given-up`: the tries ran out, the machine may still be running (it stays here until the instance starts again or an operator retries or lets it go).'),
  reason: z.string().describe('Why the stop is owed: a failed start\'s clean-up, a failed idle or operator stop, a machine the health check found failed.'),
  attempts: z.number().int().describe('Tries made so far.'),
  maxAttempts: z.number().int().describe('Tries in one series (30 s pause, doubling).'),
  nextAttemptAt: isoTime.nullable().describe('When the next try is due; null while one runs or once given up.'),
  lastError: z.string().nullable().describe('Why the last try failed.'),
  since: isoTime.describe('When the stop became owed.'),
  gaveUpAt: isoTime.nullable().describe('When the tries ran out.'),
}).register(adminRegistry, { id: 'StopRetry', description: 'A stop owed for an instance out of service, tried again with backoff.' });

export const instanceViewSchema = z.object({
  resource: z.string(),
  instanceKey: z.string().describe('`*` (shared), the sorted group list (groups) or `user:<name>` (user).'),
  groups: z.array(z.string()),
  user: z.string().nullable(),
  state: instanceStateSchema,
  phase: z.enum(['requested', 'booting', 'probing']).nullable().describe('Progress inside `starting`.'),
  step: stepSchema.describe('state and phase in one word, as the waiting page shows it.'),
  endpoint: z.string().nullable().describe('Where requests are forwarded, while ready.'),
  handle: z.string().nullable().describe('The provider\'s id of the instance (VM id, pid…).'),
  startedBy: z.string().nullable().describe('Who asked for the current or last start: a user, `anonymous`, `admin:<user>`; null when unknown (re-adopted, keep-warm).'),
  startRequestedAt: isoTime.nullable(),
  readyAt: isoTime.nullable(),
  lastActivityAt: isoTime.nullable(),
  idleDeadline: isoTime.nullable().describe('When the idle stop happens if nothing uses the instance; null when it is not ready or never idle-stopped.'),
  activeConnections: z.number().int().describe('Forwards in flight and open tunnels.'),
  heldRequests: z.number().int().describe('Requests waiting for this instance.'),
  elapsedMs: z.number().nullable().describe('Since the start was requested (the whole boot once ready).'),
  eta: etaSchema.nullable(),
  lastError: z.string().nullable().describe('Why the last start failed.'),
  stopRetry: stopRetrySchema.nullable().describe('A stop owed for this instance (it is out of service but its machine may still run); null when none.'),
  resourceRemoved: z.boolean().describe('A configuration reload removed the instance\'s resource: it is shown only while a stop is owed for it (on the live stream and in `/api/v1/stop-retries`).'),
}).register(adminRegistry, { id: 'Instance' });

export const bootSampleSchema = z.object({
  bootMs: z.number(),
  at: isoTime.describe('When the boot finished.'),
}).register(adminRegistry, { id: 'BootSample' });

export const resourceViewSchema = z.object({
  id: z.string(),
  provider: z.string().describe('The provider kind.'),
  sharing: z.enum(['shared', 'groups', 'user']),
  bootTimeoutMs: z.number().int(),
  idleStopMs: z.number().int(),
  capabilities: z.object({
    suspend: z.boolean().describe('The provider can suspend and resume instances.'),
    logs: z.boolean().describe('The provider keeps instances\' output (process log ring, VM console).'),
  }),
  boot: z.object({
    estimate: etaSchema.omit({ remainingMs: true }).nullable(),
    history: z.array(bootSampleSchema).describe('The last boots, oldest first (at most 50).'),
  }),
  counts: z.record(instanceStateSchema, z.number().int()).describe('Instances by state.'),
  instances: z.array(instanceViewSchema),
}).register(adminRegistry, { id: 'Resource' });

export const resourceListSchema = z.object({
  items: z.array(resourceViewSchema),
}).register(adminRegistry, { id: 'ResourceList' });

export const instanceListSchema = z.object({
  items: z.array(instanceViewSchema),
  total: z.number().int().describe('Instances matching the filters.'),
  nextOffset: z.number().int().nullable().describe('offset of the next page; null on the last.'),
}).register(adminRegistry, { id: 'InstanceList' });

const limitParam = (max: number, dflt: number) => z.coerce.number().int().min(1).max(max).default(dflt);
const timeParam = z.string().transform((v, ctx) => {
  const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(ms)) {
    ctx.addIssue({ code: 'custom', message: 'an RFC 3339 time or epoch milliseconds' });
    return z.NEVER;
  }
  return ms;
});

export const stopRetryListSchema = z.object({
  items: z.array(z.object({
    resource: z.string(), instanceKey: z.string(), instanceState: instanceStateSchema, stopRetry: stopRetrySchema,
    resourceRemoved: z.boolean().describe('A configuration reload removed the resource; the stop is still owed to its provider.'),
  }))
    .describe('Every owed stop, given-up ones first, then by next try.'),
  pending: z.number().int().describe('Stops being tried again (scheduled or running).'),
  givenUp: z.number().int().describe('Stops whose tries ran out.'),
}).register(adminRegistry, { id: 'StopRetryList' });

export const instanceQuerySchema = z.object({
  resource: z.string().optional().describe('Only this resource\'s instances.'),
  state: instanceStateSchema.optional().describe('Only instances in this state.'),
  limit: limitParam(1000, 100),
  offset: z.coerce.number().int().min(0).default(0),
}).strict();

export const auditEventSchema = z.object({
  id: z.number().int().describe('Grows with every event; the paging cursor.'),
  at: isoTime,
  type: z.string().describe('`start`, `denied`, `limit`, `start-requested`, `instance-changed`, `boot-finished`, `instance-adopted`, `admin-start`, `admin-stop`, `admin-drain`, `admin-denied`, `admin-reload`, `stop-retry-failed`, `stop-retry-given-up`, `stop-retry-stopped`, `admin-retry-stop`, `admin-abandon-stop`…'),
  resource: z.string().describe('The resource, or `-` for an action on the proxy itself.'),
  instanceKey: z.string().nullable(),
  status: z.string().nullable().describe('Lifecycle status after the event, or the error code of a denial.'),
  reason: z.string().nullable(),
  actor: z.string().nullable().describe('Who did it; null when the proxy did it itself (idle stop, crash repair).'),
}).register(adminRegistry, { id: 'AuditEvent' });

export const auditPageSchema = z.object({
  items: z.array(auditEventSchema).describe('Newest first.'),
  nextBefore: z.number().int().nullable().describe('Pass as `before` for the next (older) page; null on the last.'),
}).register(adminRegistry, { id: 'AuditPage' });

export const auditQuerySchema = z.object({
  resource: z.string().optional(),
  type: z.string().optional(),
  actor: z.string().optional(),
  instance: z.string().optional().describe('An instance key.'),
  since: timeParam.optional().describe('From this time on (inclusive): RFC 3339 or epoch ms.'),
  until: timeParam.optional().describe('Before this time (exclusive).'),
  before: z.coerce.number().int().min(1).optional().describe('Only events with a smaller id (the previous page\'s nextBefore).'),
  limit: limitParam(1000, 50),
}).strict();

export const startBodySchema = z.object({
  instanceKey: z.string().min(1).max(1024).optional()
    .describe('Which instance: `*` for a shared resource (the default), a sorted group list (groups), `user:<name>` (user).'),
}).strict().register(adminRegistry, { id: 'StartRequest' });

export const drainBodySchema = z.object({
  timeoutMs: z.number().int().min(0).max(24 * 3600_000).default(300_000)
    .describe('Stop anyway once this long has passed.'),
}).strict().register(adminRegistry, { id: 'DrainRequest' });

export const actionResultSchema = z.object({
  accepted: z.boolean(),
  instance: instanceViewSchema,
}).register(adminRegistry, { id: 'ActionResult' });

export const logsSchema = z.object({
  text: z.string().describe('The kept output, oldest first (the tail when it was cut).'),
  droppedBytes: z.number().int().describe('Bytes dropped from the front since the instance started.'),
}).register(adminRegistry, { id: 'InstanceOutput' });

export const healthSchema = z.object({
  status: z.enum(['ok', 'unavailable']),
  draining: z.boolean(),
  store: z.object({ kind: z.string(), reachable: z.boolean(), error: z.string().nullable() }),
}).register(adminRegistry, { id: 'Health' });

export const problemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.string().describe('A stable SP_* code (docs/reference/errors.md).'),
  instance: z.string().optional(),
}).loose().register(adminRegistry, { id: 'Problem', description: 'RFC 9457 problem details.' });

export const reloadResultSchema = z.object({
  ok: z.literal(true),
  summary: z.unknown(),
}).register(adminRegistry, { id: 'ReloadResult' });

export type InstanceView = z.infer<typeof instanceViewSchema>;
export type StopRetryView = z.infer<typeof stopRetrySchema>;
export type StopRetryListView = z.infer<typeof stopRetryListSchema>;
export type ResourceView = z.infer<typeof resourceViewSchema>;
export type AuditEventView = z.infer<typeof auditEventSchema>;
