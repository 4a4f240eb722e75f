/**
 * The operator's side of the one configuration schema (composed into schema.ts): the admin
 * listener (API, dashboard, metrics) and how long the audit log is kept.
 * See docs/operations/admin-api.md.
 */
import { z } from 'zod';
import { groupNameSchema } from './access-schema.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.has(host) || host.startsWith('127.');
}

export const adminSchema = z.object({
  listen: z.object({
    host: z.string().min(1).default('127.0.0.1').describe('Address of the admin listener. Loopback by default: never expose it without TLS in front.'),
    port: z.number().int().min(0).max(65535).default(9180).describe('Port of the admin listener (0: any free port).'),
  }).strict().default({ host: '127.0.0.1', port: 9180 }),
  groups: z.array(groupNameSchema).min(1).default(['admin'])
    .describe('A caller verified by the identities (the same chain as the data plane) is an admin when it holds one of these groups.'),
  anonymousFromLoopback: z.boolean().default(false)
    .describe('Let requests from a loopback address in without credentials (single-user machines). Requests from elsewhere always need an admin identity.'),
  maxEventStreams: z.number().int().min(1).default(100).describe('Open live event streams (dashboard, CLI) at once; past it 503.'),
  maxBodyBytes: z.number().int().min(64).default(64 * 1024).describe('Largest request body the admin API reads.'),
}).strict().describe('The admin listener: JSON API under /api/v1, the live dashboard at /, /metrics, /healthz, /readyz. Absent: no admin listener.');

export const auditSchema = z.object({
  maxEvents: z.number().int().min(100).default(10_000)
    .describe('Audit events kept in the state store (starts, stops, denials, admin actions); the oldest are pruned past it.'),
}).strict().default({ maxEvents: 10_000 }).describe('The audit log in the state store, read through the admin API.');

export type AdminConfig = z.infer<typeof adminSchema>;
