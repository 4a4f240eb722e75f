/**
 * Operator-facing settings: metrics, the cold-start response header, the access log.
 * Part of the one schema (schema.ts); kept apart so the main schema file stays short.
 */
import { z } from 'zod';

/** A header field name (RFC 9110 section 5.1: a token). */
const headerName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'a header field name (letters, digits, "-" and the other token characters)');

export const metricsSchema = z.object({
  enabled: z.boolean().default(true).describe('Collect Prometheus metrics (served as /metrics by the admin listener).'),
  maxResourceLabels: z.number().int().min(1).default(500)
    .describe('Resources that get their own `resource` label value, in config order; the rest are counted together as "_other". Instances are never a label (per-user instances would be unbounded).'),
}).strict().default({ enabled: true, maxResourceLabels: 500 });

export const coldStartHeaderSchema = z.object({
  enabled: z.boolean().default(true).describe('Add the header to responses of requests that waited for a start.'),
  name: headerName.default('X-Smart-Proxy-Cold-Start').describe('Its name; the value is the time the request waited for the instance, in milliseconds.'),
}).strict().default({ enabled: true, name: 'X-Smart-Proxy-Cold-Start' })
  .describe('A response header on cold-started requests (like KEDA\'s X-KEDA-HTTP-Cold-Start); warm requests never carry it.');

export const accessLogSchema = z.object({
  enabled: z.boolean().default(false).describe('Write one line per request.'),
  format: z.enum(['json', 'combined']).default('json').describe('json (one object a line) or combined (Apache/nginx "combined").'),
  path: z.string().min(1).optional().describe('Append to this file (created if missing; reopened on reload, for log rotation); absent: standard output.'),
}).strict().default({ enabled: false, format: 'json' })
  .describe('The access log: one line per request once its response ended or its client left. Off by default.');
