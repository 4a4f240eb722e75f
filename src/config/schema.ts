/**
 * The one configuration schema: validation, TypeScript types and the generated reference
 * (`npm run docs:reference` → docs/reference/config.md) all come from here. Every duration
 * ends in `Ms`, every size in `Bytes`. Components never see this file's raw shapes: main.ts
 * hands them typed options.
 */
import { z } from 'zod';

const ms = (description: string, dflt: number) => z.number().int().min(0).default(dflt).describe(description);
const port = z.number().int().min(0).max(65535);

/** `200`, or a class like `"2xx"`. */
const statusSpec = z.union([z.number().int().min(100).max(599), z.string().regex(/^[1-5]xx$/, 'a status class like "2xx"')]);

export const probeSchema = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('http'),
    path: z.string().startsWith('/').default('/').describe('Path probed on the instance (after its own path prefix).'),
    expectStatus: z.array(statusSpec).min(1).default(['2xx', '3xx', '4xx'])
      .describe('Statuses that mean "answering". 4xx counts by default: an app that says 404 at / is up.'),
    timeoutMs: ms('One probe attempt is cut after this long.', 1000),
  }).strict(),
  z.object({
    kind: z.literal('tcp'),
    timeoutMs: ms('One connect attempt is cut after this long.', 1000),
  }).strict(),
]).describe('How readiness is checked once the provider says running. Beware: a forwarder (QEMU user networking, docker-proxy) accepts TCP before the service listens; prefer http.');

export const atmosphereProviderSchema = z.object({
  kind: z.literal('atmosphere'),
  baseUrl: z.union([z.literal('embedded'), z.url({ protocol: /^https?$/ })])
    .describe('Base URL of a server speaking the Atmosphere mock API, or "embedded" for the built-in mock cloud.'),
  requestTimeoutMs: ms('Timeout of one call to the cloud API.', 5000),
}).strict();

export const staticProviderSchema = z.object({
  kind: z.literal('static'),
  endpoint: z.url({ protocol: /^https?$/ })
    .describe('Base URL of a backend that is always there (started and stopped by someone else); it is still probed before use.'),
}).strict();

export const providerSchema = z.discriminatedUnion('kind', [atmosphereProviderSchema, staticProviderSchema]);

export const sharingSchema = z.enum(['shared', 'groups', 'user'])
  .describe('shared: one instance for everyone allowed; groups: an instance started for a group set serves requests acting with a superset (the original model); user: one per user.');

/** Built-in defaults of the per-resource settings (resourceDefaults overrides them, a resource overrides both). */
export const resourceBuiltinDefaults = {
  sharing: 'shared',
  bootTimeoutMs: 60_000,
  probeIntervalMs: 20,
  pollIntervalMinMs: 20,
  pollIntervalMaxMs: 250,
  providerCallTimeoutMs: 10_000,
  failureCooldownMs: 5_000,
  idleStopMs: 0,
} as const;

/** An optional duration whose default is applied when resources are merged, not here. */
const optMs = (description: string, dflt?: number) =>
  z.number().int().min(0).optional().describe(dflt === undefined ? description : `${description} Default: ${dflt}.`);

const resourceFields = {
  sharing: sharingSchema.optional(),
  bootTimeoutMs: optMs('From the start call to ready. Held requests get 504 past it.', resourceBuiltinDefaults.bootTimeoutMs),
  holdTimeoutMs: optMs('How long one request is held at most. Default: bootTimeoutMs.'),
  probe: probeSchema.optional(),
  probeIntervalMs: optMs('Pause between probes once the provider says running.', resourceBuiltinDefaults.probeIntervalMs),
  pollIntervalMinMs: optMs('First pause between provider polls while it says starting; grows x1.5.', resourceBuiltinDefaults.pollIntervalMinMs),
  pollIntervalMaxMs: optMs('Longest pause between provider polls.', resourceBuiltinDefaults.pollIntervalMaxMs),
  providerCallTimeoutMs: optMs('Each provider call is cut after this long, then retried within the boot deadline.', resourceBuiltinDefaults.providerCallTimeoutMs),
  failureCooldownMs: optMs('After a failed start, requests fail fast with 503 for this long.', resourceBuiltinDefaults.failureCooldownMs),
  maxHeldRequests: z.number().int().min(0).optional().describe('Requests held at once for this resource; past it 503 + Retry-After. Default: limits.maxHeldRequestsPerResource.'),
  idleStopMs: optMs('Stop an instance after this long with no request and no open connection; 0 = never.', resourceBuiltinDefaults.idleStopMs),
};

export const resourceDefaultsSchema = z.object(resourceFields).strict();

export const resourceSchema = z.object({
  ...resourceFields,
  provider: z.union([z.string().min(1), providerSchema])
    .describe('The name of an entry under `providers`, or an inline provider.'),
  serviceId: z.string().min(1).optional().describe('atmosphere: the atomic service id at the cloud; defaults to the resource id.'),
}).strict();

const resourceId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$/, 'letters, digits, ".", "_", "~", "-" (1-128, not starting with a sign)');

export const configSchema = z.object({
  listen: z.object({
    host: z.string().default('127.0.0.1').describe('Address the proxy listens on.'),
    port: port.default(8080),
  }).strict().default({ host: '127.0.0.1', port: 8080 }),
  trustedProxies: z.array(z.string()).default([])
    .describe('Addresses or CIDRs of front proxies whose X-Forwarded-* headers are believed.'),
  server: z.object({
    headersTimeoutMs: ms('Time for a client to send the request headers.', 30_000),
    keepAliveTimeoutMs: ms('Idle keep-alive connections from clients are closed after this long.', 5_000),
    maxHeaderBytes: z.number().int().min(1024).default(16 * 1024).describe('Largest request head accepted.'),
  }).strict().default({ headersTimeoutMs: 30_000, keepAliveTimeoutMs: 5_000, maxHeaderBytes: 16 * 1024 }),
  upstream: z.object({
    connectTimeoutMs: ms('Connecting to a ready backend.', 5_000),
    headersTimeoutMs: ms('Waiting for the backend\'s response head.', 300_000),
    bodyTimeoutMs: ms('Longest silence inside a response body; 0 = none (SSE, long polls).', 0),
    connectionsPerBackend: z.number().int().min(1).default(256).describe('Keep-alive pool size per backend.'),
  }).strict().default({ connectTimeoutMs: 5_000, headersTimeoutMs: 300_000, bodyTimeoutMs: 0, connectionsPerBackend: 256 }),
  limits: z.object({
    maxHeldRequests: z.number().int().min(0).default(10_000).describe('Requests held at once over all resources.'),
    maxHeldRequestsPerResource: z.number().int().min(0).default(1_000).describe('Default for resources.*.maxHeldRequests.'),
  }).strict().default({ maxHeldRequests: 10_000, maxHeldRequestsPerResource: 1_000 }),
  shutdown: z.object({
    drainTimeoutMs: z.number().int().min(0).optional()
      .describe('On SIGTERM/SIGINT, in-flight and held requests get this long to finish; default: the longest boot timeout + 5 s.'),
    stopInstances: z.boolean().default(false).describe('Stop the instances this proxy started when it shuts down.'),
  }).strict().default({ stopInstances: false }),
  log: z.object({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'silent']).default('info'),
  }).strict().default({ level: 'info' }),
  mockCloud: z.object({
    enabled: z.boolean().default(false).describe('Run the embedded mock cloud (demo and tests).'),
    host: z.string().default('127.0.0.1'),
    port: port.default(5000),
    bootTimeMinMs: ms('Shortest simulated boot.', 0),
    bootTimeMaxMs: ms('Longest simulated boot.', 10_000),
    seed: z.number().int().optional().describe('Seed for reproducible boot times and failures.'),
    failureRate: z.number().min(0).max(1).default(0).describe('Share of boots that fail.'),
    hangRate: z.number().min(0).max(1).default(0).describe('Share of boots that never finish.'),
    seedData: z.boolean().default(true).describe('Start with the original\'s VMs (as1: 1, 2; as2: 3).'),
  }).strict().refine((m) => m.bootTimeMinMs <= m.bootTimeMaxMs, { message: 'bootTimeMinMs must not exceed bootTimeMaxMs', path: ['bootTimeMinMs'] })
    .default({ enabled: false, host: '127.0.0.1', port: 5000, bootTimeMinMs: 0, bootTimeMaxMs: 10_000, failureRate: 0, hangRate: 0, seedData: true }),
  providers: z.record(z.string().min(1), providerSchema).default({}).describe('Named providers that resources refer to.'),
  resourceDefaults: resourceDefaultsSchema.default({}).describe('Defaults for every resource.'),
  resources: z.record(resourceId, resourceSchema).describe('The resources, by id (the {resource_id} of the URL).'),
}).strict().superRefine((cfg, ctx) => {
  for (const [id, r] of Object.entries(cfg.resources)) {
    if (typeof r.provider === 'string' && !(r.provider in cfg.providers)) {
      ctx.addIssue({
        code: 'custom', path: ['resources', id, 'provider'],
        message: `names provider "${r.provider}", which is not under providers (known: ${Object.keys(cfg.providers).join(', ') || 'none'})`,
      });
    }
  }
});

export type Config = z.infer<typeof configSchema>;
export type ProviderConfig = z.infer<typeof providerSchema>;
export type ResourceConfig = z.infer<typeof resourceSchema>;
export type ProbeConfig = z.infer<typeof probeSchema>;
