/**
 * The one configuration schema: validation, TypeScript types and the generated reference
 * (`npm run docs:reference` → docs/reference/config.md) all come from here. Every duration
 * ends in `Ms`, every size in `Bytes`. Components never see this file's raw shapes: main.ts
 * hands them typed options.
 */
import { z } from 'zod';
import { adminSchema, auditSchema } from './admin-schema.ts';
import { cronProblem } from '../core/keep-warm.ts';
import { DEFAULT_DENIED_ENDPOINTS } from '../providers/endpoint-guard.ts';
import { accessSettingsSchema, checkOidcSettings, cidrSchema, headerNameSchema, identitySchema, resourceAccessSchema } from './access-schema.ts';
import { frontSchema } from './front-schema.ts';
import { accessLogSchema, coldStartHeaderSchema, metricsSchema } from './ops-schema.ts';

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

const providerStateSchema = z.enum(['stopped', 'starting', 'running', 'stopping', 'failed']);

export const processProviderSchema = z.object({
  kind: z.literal('process'),
  command: z.array(z.string()).min(1).refine((a) => a[0] !== '', 'the first element names the program')
    .describe('Program and arguments (no shell). Placeholders: {port}, {host}, {resourceId}, {instanceKey}, {groups}, {user}.'),
  env: z.record(z.string(), z.string()).optional().describe('Added to the proxy\'s own environment for the child; values may hold placeholders.'),
  cwd: z.string().min(1).optional().describe('Working directory of the child; default: the proxy\'s.'),
  host: z.string().default('127.0.0.1').describe('Address the child listens on (passed as {host}) and the endpoint\'s host.'),
  port: port.default(0).describe('A fixed port for {port}; 0 picks a free one per start.'),
  stateDir: z.string().min(1).default('var/process').describe('Per-instance state files, for re-adoption after a proxy restart.'),
  stopGraceMs: ms('From SIGTERM to SIGKILL of the process group on stop.', 5_000),
  logMaxBytes: z.number().int().min(0).default(64 * 1024).describe('Output kept in memory per instance (stdout and stderr).'),
  logFile: z.string().min(1).optional().describe('Also append the output to this file (placeholders allowed).'),
}).strict();

const httpRequestSchema = z.object({
  method: z.string().regex(/^[A-Z]+$/, 'an upper-case HTTP method').default('GET'),
  url: z.string().min(1).describe('Absolute, or a path appended to baseUrl. Placeholders: {resourceId}, {serviceId}, {instanceKey}, {handle}, {groups}, {user}, {secret.NAME}.'),
  headers: z.record(z.string(), z.string()).optional(),
  body: z.unknown().optional().describe('A JSON value sent as application/json; string leaves are templates.'),
  okStatus: z.array(z.number().int().min(100).max(599)).min(1).optional().describe('Statuses that mean success; default any 2xx.'),
  conflictStatus: z.array(z.number().int().min(100).max(599)).optional()
    .describe('start/stop: statuses meaning "wrong state for this action" (default [409]): the provider inspects and waits out a transition.'),
}).strict();

const stateMappingSchema = z.object({
  pointer: z.string().describe('JSON Pointer (RFC 6901) to the state value.'),
  values: z.record(z.string(), providerStateSchema).describe('Answer value → state.'),
  otherwise: providerStateSchema.optional().describe('State for an unlisted value; absent: an error naming the value.'),
  missing: providerStateSchema.optional().describe('State when the pointer finds nothing or null; absent: an error.'),
}).strict();

export const httpProviderSchema = z.object({
  kind: z.literal('http'),
  baseUrl: z.url({ protocol: /^https?$/ }).describe('Base of relative request URLs.'),
  requestTimeoutMs: ms('One call to the cloud API.', 10_000),
  maxResponseBytes: z.number().int().min(1).default(1024 * 1024).describe('Larger answers are refused as malformed.'),
  credentials: z.record(z.string().regex(/^[A-Za-z0-9_]+$/), z.union([
    z.object({ env: z.string().min(1) }).strict(),
    z.object({ file: z.string().min(1) }).strict(),
  ])).default({}).describe('Secrets by name, used as {secret.NAME}: from an environment variable or a file (re-read on each use). Never written to logs.'),
  start: z.object({ request: httpRequestSchema, handle: z.string().optional().describe('JSON Pointer to a handle in the answer.') }).strict(),
  inspect: z.array(z.object({
    request: httpRequestSchema,
    state: z.union([stateMappingSchema, z.array(stateMappingSchema)]).optional(),
    endpoint: z.string().optional().describe('Endpoint template over the answer, e.g. "http://{/server/accessIPv4}:8080".'),
    handle: z.string().optional(),
    reason: z.string().optional().describe('JSON Pointer to a reason reported with failed.'),
    notFound: providerStateSchema.default('stopped').describe('What a 404 means.'),
  }).strict()).min(1).describe('Requests run in order; the first mapped state other than running decides.'),
  stop: z.object({ request: httpRequestSchema }).strict(),
}).strict();
const labelMap = z.record(z.string().min(1), z.string()).describe('Label name → value; values may use {resourceId} and {instanceKey}.');

export const dockerProviderSchema = z.object({
  kind: z.literal('docker'),
  socketPath: z.string().min(1).default('/var/run/docker.sock')
    .describe('Unix socket of the Docker Engine API (Docker, or `podman system service`).'),
  apiVersion: z.string().regex(/^v\d+\.\d+$/, 'like "v1.41"').optional()
    .describe('Pin the API version (path prefix); default: the engine\'s current one.'),
  requestTimeoutMs: ms('Timeout of one call to the engine.', 5000),
  owner: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/).default('smart-proxy')
    .describe('Value of the io.smart-proxy.owner label on created containers; re-adoption after a restart takes only these.'),
  containerPort: port.refine((p) => p > 0, 'a port from 1 to 65535').describe('Port the service listens on inside the container.'),
  endpoint: z.enum(['published', 'network']).default('published')
    .describe('published: the host port the engine published for containerPort; network: the container\'s own address on a network.'),
  hostIp: z.string().min(1).default('127.0.0.1')
    .describe('published: the host address ports are bound to (create mode) and forwarded to when bound on a wildcard.'),
  network: z.string().min(1).optional().describe('network: the network whose address to use; default the first one with an address.'),
  scheme: z.enum(['http', 'https']).default('http'),
  health: z.enum(['use', 'ignore']).default('use')
    .describe('use: a container with a healthcheck is starting until healthy. ignore: for engines that never run healthchecks (Podman without systemd).'),
  unhealthy: z.enum(['starting', 'failed']).default('failed')
    .describe('What an unhealthy container means while it boots: keep waiting (until bootTimeoutMs), or fail the start at once.'),
  stopTimeoutS: z.number().int().min(0).default(10).describe('Seconds between SIGTERM and SIGKILL on stop (the engine\'s own unit).'),
  existing: z.object({
    name: z.string().min(1).optional().describe('Container name; may use {resourceId} and {instanceKey}.'),
    labels: labelMap.optional().describe('Labels that select exactly one container.'),
  }).strict().refine((e) => (e.name === undefined) !== (e.labels === undefined), 'give exactly one of name or labels').optional()
    .describe('Manage containers that already exist: start, stop and inspect them, never create or remove.'),
  create: z.object({
    image: z.string().min(1).describe('A local image; the provider never pulls.'),
    cmd: z.array(z.string()).optional(),
    env: z.record(z.string(), z.string()).optional(),
    labels: labelMap.optional(),
    networkMode: z.string().min(1).optional().describe('HostConfig.NetworkMode: bridge, host, slirp4netns, or a network name; default the engine\'s.'),
    healthcheck: z.object({
      test: z.array(z.string()).min(1).describe('["CMD", "prog", "arg"…] or ["CMD-SHELL", "command"].'),
      intervalMs: ms('Between checks.', 1000),
      timeoutMs: ms('One check is cut after this long.', 1000),
      retries: z.number().int().min(1).default(3),
      startPeriodMs: ms('Failures in this grace period do not count.', 0),
    }).strict().optional().describe('A healthcheck for images that have none; the container is starting until it passes (health: use).'),
    removeOnStop: z.boolean().default(false).describe('Remove the container on stop (a fresh one at the next start) instead of keeping it.'),
    namePrefix: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/).default('sp-')
      .describe('Containers are named <namePrefix><resourceId>-<hash of owner, resource id and instance key>.'),
  }).strict().optional().describe('Create one container per instance from an image, named deterministically (the idempotency key).'),
}).strict().refine((d) => (d.existing === undefined) !== (d.create === undefined), { message: 'give exactly one of existing or create', path: ['existing'] });

export const staticProviderSchema = z.object({
  kind: z.literal('static'),
  endpoint: z.url({ protocol: /^https?$/ }).describe('Base URL of an always-running backend (never started or stopped by the proxy).'),
}).strict();

export const qemuProviderSchema = z.object({
  kind: z.literal('qemu'),
  qemuBinary: z.string().min(1).default('qemu-system-x86_64'),
  machine: z.string().min(1).default('microvm').describe('QEMU machine: microvm (fastest, needs kernelPath) or q35/pc (firmware, can boot a disk).'),
  accel: z.string().min(1).default('tcg')
    .describe('Always passed explicitly. "kvm:tcg" does not fall back when /dev/kvm opens but cannot run the guest (kvm_pvm).'),
  cpu: z.string().min(1).default('max'),
  memoryMiB: z.number().int().min(16).default(256),
  kernelPath: z.string().min(1).optional().describe('Kernel (uncompressed vmlinux boots fastest via PVH, or a bzImage); relative to the working directory.'),
  initrdPath: z.string().min(1).optional(),
  diskImagePath: z.string().min(1).optional().describe('Disk image attached with snapshot=on (guest writes are discarded).'),
  kernelCmdline: z.string().optional().describe('Replaces the tuned default kernel command line.'),
  kernelCmdlineExtra: z.string().optional().describe('Appended to the kernel command line.'),
  tscKhz: z.number().int().min(1).optional().describe('Guest TSC rate for tsc_early_khz (required on microvm); read from /proc/cpuinfo when not set.'),
  guestPort: port.default(80).describe('The guest service port the host port is forwarded to.'),
  hostAddress: z.string().default('127.0.0.1').describe('Host address of the forwarded port.'),
  extraArgs: z.array(z.string()).default([]).describe('Appended to the QEMU command line.'),
  stateDir: z.string().min(1).default('var/qemu').describe('Per-VM pid, sockets, console log and suspend state; must be short (unix socket paths).'),
  maxConcurrentBoots: z.number().int().min(1).default(2).describe('Boots at once; cold boots under TCG cost ~1.5 CPU-s each.'),
  bootSlotMaxMs: ms('A boot holds its slot until the console marker, a finished restore, exit, or this long.', 10_000),
  powerdownGraceMs: ms('After QMP system_powerdown, time for the guest to power off before quit.', 3_000),
  consoleReadyMarker: z.string().min(1).optional()
    .describe('Console text a cold-booted guest prints when up; until then the VM is reported starting. The HTTP probe still decides ready.'),
  consoleMaxBytes: z.number().int().min(1024).default(64 * 1024).describe('Serial console bytes kept per VM.'),
  suspendOnStop: z.boolean().default(false).describe('On stop, save the VM state to a file and restore it on the next start (~0.3 s instead of a cold boot).'),
  suspendTimeoutMs: ms('Longest state save before falling back to a plain stop.', 30_000),
  qmpTimeoutMs: ms('Each QMP command is cut after this long.', 5_000),
}).strict().refine((q) => q.kernelPath !== undefined || q.diskImagePath !== undefined, {
  message: 'needs kernelPath (with initrdPath) or diskImagePath', path: ['kernelPath'],
});

export const providerSchema = z.discriminatedUnion('kind', [atmosphereProviderSchema, staticProviderSchema, processProviderSchema, httpProviderSchema, qemuProviderSchema, dockerProviderSchema]);

export const sharingSchema = z.enum(['shared', 'groups', 'user'])
  .describe('shared: one instance for everyone allowed; groups: an instance started for a group set serves requests acting with a superset (the original model); user: one per user.');

export const keepWarmSchema = z.object({
  minInstances: z.number().int().min(0).default(0).describe('Instances kept running at all times (pre-started at start-up, never idle-stopped below this).'),
  windows: z.array(z.object({
    cron: z.string().describe('5-field cron expression (minute hour day-of-month month day-of-week); the window is every minute it matches, e.g. "* 8-17 * * 1-5".'),
    minInstances: z.number().int().min(1).default(1).describe('Instances kept running while the window is open.'),
  }).strict()).default([]).describe('Time windows in which the resource is pre-started and kept running.'),
  timeZone: z.string().optional().describe('IANA time zone the windows are read in (e.g. "Europe/Berlin"); default: the machine\'s local time.'),
  groups: z.array(z.string()).default([]).describe('Groups of the instance keep-warm starts (sharing: groups); default none.'),
}).strict().superRefine((kw, ctx) => {
  kw.windows.forEach((w, i) => {
    const problem = cronProblem(w.cron, kw.timeZone);
    if (problem !== undefined) ctx.addIssue({ code: 'custom', path: ['windows', i, 'cron'], message: problem });
  });
}).describe('Keep-warm: a floor on running instances, always and in cron-like time windows.');

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
  releaseConcurrency: 64,
  healthCheckIntervalMs: 30_000,
} as const;

const originSchema = z.string().regex(/^(\*|[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/\s]+\/?)$/, 'an origin like "https://app.example.com", or "*"');

export const corsSchema = z.object({
  allowedOrigins: z.array(originSchema).min(1)
    .describe('Origins whose pages may call this resource ("https://app.example.com"), or "*" for any page (not with allowCredentials).'),
  allowedMethods: z.array(z.string().regex(/^[A-Z]+$/, 'an upper-case HTTP method')).min(1).default(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'])
    .describe('Methods a preflight allows.'),
  allowedHeaders: z.array(headerNameSchema).optional()
    .describe('Request fields a page may send (e.g. authorization, content-type); default: the ones each preflight asks for.'),
  exposedHeaders: z.array(headerNameSchema).default([]).describe('Response fields, beyond the CORS-safelisted ones, a page may read.'),
  allowCredentials: z.boolean().default(false)
    .describe('Pages may send cookies (a sign-in session) and read the answers. Not needed for Authorization: Bearer set by the page.'),
  maxAgeS: z.number().int().min(0).max(86_400).default(600).describe('How long browsers may reuse a preflight\'s answer (seconds).'),
}).strict().refine((c) => !(c.allowCredentials && c.allowedOrigins.includes('*')), {
  message: 'allowCredentials with "*" would let any web page act with its visitors\' sessions: list the origins', path: ['allowCredentials'],
});

/** An optional duration whose default is applied when resources are merged, not here. */
const optMs = (description: string, dflt?: number) =>
  z.number().int().min(0).optional().describe(dflt === undefined ? description : `${description} Default: ${dflt}.`);

const resourceFields = {
  sharing: sharingSchema.optional(),
  bootTimeoutMs: optMs('From the start call to ready. Held requests get 504 past it.', resourceBuiltinDefaults.bootTimeoutMs),
  holdTimeoutMs: optMs('How long one request is held at most. Default: bootTimeoutMs.'),
  probe: probeSchema.optional(),
  probeIntervalMs: optMs('Pause between probes once the provider says running.', resourceBuiltinDefaults.probeIntervalMs),
  pollIntervalMinMs: optMs('Shortest pause between provider polls while it says starting (the pause grows with the boot\'s elapsed time, or follows past boots).', resourceBuiltinDefaults.pollIntervalMinMs),
  pollIntervalMaxMs: optMs('Longest pause between provider polls.', resourceBuiltinDefaults.pollIntervalMaxMs),
  providerCallTimeoutMs: optMs('Each provider call is cut after this long, then retried within the boot deadline.', resourceBuiltinDefaults.providerCallTimeoutMs),
  failureCooldownMs: optMs('After a failed start, requests fail fast with 503 for this long.', resourceBuiltinDefaults.failureCooldownMs),
  maxHeldRequests: z.number().int().min(0).optional().describe('Requests held at once for this resource; past it 503 + Retry-After. Default: limits.maxHeldRequestsPerResource.'),
  idleStopMs: optMs('Stop an instance after this long with no request and no open connection; 0 = never.', resourceBuiltinDefaults.idleStopMs),
  websocket: z.object({
    allowedOrigins: z.array(originSchema).optional()
      .describe('Origins whose browser pages may open WebSockets to this resource (handshakes without Origin, from non-browser clients, pass). Default: any.'),
  }).strict().optional().describe('WebSocket handshakes (see docs/concepts/protocols.md).'),
  waiting: z.object({
    browserPage: z.boolean().optional()
      .describe('A browser navigation (GET/HEAD accepting text/html, no Prefer: wait) gets the waiting page at once instead of being held. Default: true.'),
    defaultWaitMs: optMs('Hold of a request that sends no Prefer: wait=N; never more than holdTimeoutMs. Default: holdTimeoutMs.'),
    themeDir: z.string().min(1).optional()
      .describe('Folder with an operator\'s waiting.html template (relative to the working directory); the built-in theme when absent. See docs/how-to/theme-the-waiting-page.md.'),
  }).strict().optional().describe('How clients wait for this resource while it starts (docs/concepts/waiting.md). Merged field by field with resourceDefaults.waiting.'),
  releaseConcurrency: z.number().int().min(1).optional()
    .describe(`When a backend becomes ready, at most this many requests are in flight to it while held ones are released. Default: ${resourceBuiltinDefaults.releaseConcurrency}.`),
  healthCheckIntervalMs: optMs('How often the provider is asked whether a ready instance still exists; 0 = never.', resourceBuiltinDefaults.healthCheckIntervalMs),
  keepWarm: keepWarmSchema.optional(),
  access: resourceAccessSchema.optional(),
  cors: corsSchema.optional()
    .describe('Cross-origin calls from browser pages: the proxy answers CORS preflights itself (before any access step, so nothing is woken) and owns the CORS fields of every answer (docs/concepts/access.md). Merged as a whole. Absent: preflights go through the access steps like any request.'),
  backendTls: z.object({
    caFile: z.string().min(1).optional().describe('PEM file of the CA(s) that sign the backend\'s certificate (a private or self-signed CA); default: the system roots.'),
    servername: z.string().min(1).max(253).optional().describe('Host name sent as SNI and required in the backend\'s certificate; default: the endpoint\'s host (no SNI for an IP address).'),
    insecureSkipVerify: z.boolean().default(false).describe('Accept any certificate (no verification at all). Only for a backend on a network you trust; logged at start-up.'),
  }).strict().optional().describe('TLS towards an https:// backend endpoint (probe, forward, WebSocket). Merged as a whole: a resource\'s replaces resourceDefaults\'.'),
};

export const resourceDefaultsSchema = z.object(resourceFields).strict();

export const resourceSchema = z.object({
  ...resourceFields,
  provider: z.union([z.string().min(1), providerSchema])
    .describe('The name of an entry under `providers`, or an inline provider.'),
  serviceId: z.string().min(1).optional().describe('atmosphere: the atomic service id at the cloud; http: {serviceId} (e.g. an appliance or server id); defaults to the resource id.'),
}).strict();

const resourceId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$/, 'letters, digits, ".", "_", "~", "-" (1-128, not starting with a sign)');

export const configSchema = z.object({
  listen: z.object({
    host: z.string().default('127.0.0.1').describe('Address the proxy listens on.'),
    port: port.default(8080),
  }).strict().default({ host: '127.0.0.1', port: 8080 }),
  backendEndpoints: z.object({
    deny: z.array(cidrSchema).default([...DEFAULT_DENIED_ENDPOINTS])
      .describe('Addresses or CIDRs a provider-reported endpoint may not point at (default: link-local and cloud metadata addresses). The proxy\'s own listeners (proxy, admin, front decisions: at the addresses they are bound to) and Redis\'s port (at every address of this host) are always refused.'),
    allow: z.array(cidrSchema).default([]).describe('Addresses or CIDRs accepted even when deny covers them.'),
  }).strict().prefault({}).describe('Which endpoints reported by providers (clouds, engines, templates) the proxy may probe and forward identity headers to; see docs/security.md.'),
  trustedProxies: z.array(z.string()).default([])
    .describe('Addresses or CIDRs of front proxies whose X-Forwarded-* headers are believed.'),
  server: z.object({
    headersTimeoutMs: ms('Time for a client to send the request headers (slowloris); 30 s is far beyond any real client.', 30_000),
    keepAliveTimeoutMs: ms('Idle keep-alive connections from clients are closed after this long; 5 s keeps sockets for bursts without hoarding them.', 5_000),
    maxHeaderBytes: z.number().int().min(1024).default(16 * 1024).describe('Largest request head accepted (431 past it); 16 KiB, Node\'s default, fits large cookies and JWTs.'),
    bodyIdleTimeoutMs: ms('Longest silence while a request body is forwarded; then 408 (or the backend request is cut) and the backend connection is freed. 60 s, as nginx\'s client_body_timeout: no live client pauses that long mid-upload. 0 = none.', 60_000),
    tlsHandshakeTimeoutMs: ms('Time for a client to finish the TLS handshake; a stalled handshake holds a socket. 10 s covers slow mobile links (Node\'s own default is 120 s).', 10_000),
    http2SessionIdleTimeoutMs: ms('An HTTP/2 session with no open stream for this long is closed with GOAWAY (streams in flight, such as held requests, are never cut). 0 = never.', 30_000),
    http2MaxConcurrentStreams: z.number().int().min(1).default(128)
      .describe('Streams one HTTP/2 client may open at once (nginx\'s default); each is a request the proxy may hold.'),
    lingerTimeMs: ms('After refusing a request whose body it has not read (401, 403, 413, 503...), the proxy reads and discards that body for at most this long, so the client reads the answer instead of a connection reset; then the connection is cut. 30 s, as nginx\'s lingering_time. 0 = close at once (clients still uploading may see a reset).', 30_000),
    lingerIdleTimeoutMs: ms('Longest silence of a refused client while its body is discarded (nginx\'s lingering_timeout: 5 s).', 5_000),
    lingerMaxBytes: z.number().int().min(0).default(16 * 1024 * 1024)
      .describe('Most body bytes discarded per refused request; past it the connection is cut. A refused body announced larger is not read at all (its connection closes after the answer). 16 MiB: a refused upload of that size still gets its answer, and a client cannot make the proxy read more.'),
    maxLingeringConnections: z.number().int().min(0).default(1024)
      .describe('Refused connections discarding their bodies at once; past it a refusal closes its connection at once.'),
  }).strict().default({
    headersTimeoutMs: 30_000, keepAliveTimeoutMs: 5_000, maxHeaderBytes: 16 * 1024, bodyIdleTimeoutMs: 60_000, tlsHandshakeTimeoutMs: 10_000, http2SessionIdleTimeoutMs: 30_000, http2MaxConcurrentStreams: 128,
    lingerTimeMs: 30_000, lingerIdleTimeoutMs: 5_000, lingerMaxBytes: 16 * 1024 * 1024, maxLingeringConnections: 1024,
  }),
  upstream: z.object({
    connectTimeoutMs: ms('Connecting to a ready backend; a healthy one on a local network connects in milliseconds, so 5 s means it is gone.', 5_000),
    headersTimeoutMs: ms('Waiting for the backend\'s response head (then 504). 60 s, as nginx\'s proxy_read_timeout: a hung backend holds a connection and a client no longer; raise it for endpoints that compute long before answering.', 60_000),
    bodyTimeoutMs: ms('Longest silence inside a response body; 0 = none (SSE, long polls).', 0),
    connectionsPerBackend: z.number().int().min(1).default(256).describe('Requests in flight to one backend at once (its keep-alive pool size).'),
    maxQueuedPerBackend: z.number().int().min(0).default(1024)
      .describe('Requests waiting for a connection to one backend when all connectionsPerBackend are busy; past it 503 + Retry-After at once.'),
    queueTimeoutMs: ms('Longest wait for a connection to a busy backend, then 503 + Retry-After: slow or stuck requests holding every connection delay others this long at most.', 10_000),
  }).strict().default({ connectTimeoutMs: 5_000, headersTimeoutMs: 60_000, bodyTimeoutMs: 0, connectionsPerBackend: 256, maxQueuedPerBackend: 1024, queueTimeoutMs: 10_000 }),
  limits: z.object({
    maxHeldRequests: z.number().int().min(0).default(10_000).describe('Requests held at once over all resources.'),
    maxHeldRequestsPerResource: z.number().int().min(0).default(1_000).describe('Default for resources.*.maxHeldRequests.'),
    maxHeldBytes: z.number().int().min(0).default(1024 ** 3)
      .describe('Request bodies announced by held requests, summed over all resources (Content-Length, or heldBodyEstimateBytes when unknown); past it 503 + Retry-After. Held bodies are not read while held (backpressure).'),
    heldBodyEstimateBytes: z.number().int().min(0).default(1024 ** 2)
      .describe('What a held body of unknown length (chunked, HTTP/2 without content-length) counts against maxHeldBytes.'),
    maxHeldBytesPerRequest: z.number().int().min(0).default(256 * 1024 ** 2)
      .describe('Largest body one held request may announce; larger gets 413 while the resource is cold (sent again once warm, nothing is held). Keeps one Content-Length from taking the whole maxHeldBytes.'),
    maxHeldBytesPerClient: z.number().int().min(0).default(512 * 1024 ** 2)
      .describe('Held body bytes of one client address (the peer, or behind trustedProxies the first untrusted X-Forwarded-For hop); past it 503 + Retry-After for that client only.'),
    forgetStoppedAfterMs: ms('A stopped (or failed and cooled) instance nobody uses is forgotten this long after it settled, so per-user and per-group-set instances do not pile up in memory; 0 never forgets.', 600_000),
  }).strict().default({ maxHeldRequests: 10_000, maxHeldRequestsPerResource: 1_000, maxHeldBytes: 1024 ** 3, heldBodyEstimateBytes: 1024 ** 2, maxHeldBytesPerRequest: 256 * 1024 ** 2, maxHeldBytesPerClient: 512 * 1024 ** 2, forgetStoppedAfterMs: 600_000 }),
  tls: z.object({
    certFile: z.string().min(1).describe('PEM certificate chain, leaf first. Reloaded when the file changes.'),
    keyFile: z.string().min(1).describe('PEM private key. Reloaded when the file changes.'),
  }).strict().optional().describe('Terminate TLS on the listen port, with HTTP/2 and HTTP/1.1 chosen by ALPN. Absent: plain HTTP/1.1.'),
  shutdown: z.object({
    drainTimeoutMs: z.number().int().min(0).optional()
      .describe('On SIGTERM/SIGINT, in-flight and held requests get this long to finish; default: the longest boot timeout + 5 s.'),
    stopInstances: z.boolean().default(false).describe('Stop the instances this proxy started when it shuts down.'),
  }).strict().default({ stopInstances: false }),
  state: z.discriminatedUnion('kind', [
    z.object({
      kind: z.literal('sqlite'),
      path: z.string().min(1).default('var/smart-proxy.sqlite').describe('SQLite file (relative to the working directory); created with its directory.'),
      busyTimeoutMs: ms('How long a write waits for another connection\'s lock (a backup, the sqlite3 shell). The wait happens on the store\'s own thread, never on the event loop; a flush that gives up is kept and retried.', 5_000),
      flushIntervalMs: ms('State changes and activity marks are written in one batch this often.', 1_000),
    }).strict(),
    z.object({
      kind: z.literal('memory'),
      flushIntervalMs: ms('State changes and activity marks are written in one batch this often.', 1_000),
    }).strict(),
    z.object({
      kind: z.literal('redis'),
      url: z.string().regex(/^rediss?:\/\//, 'a redis:// or rediss:// URL').default('redis://127.0.0.1:6379')
        .describe('Redis shared by every replica; also turns on cluster coordination (see cluster).'),
      keyPrefix: z.string().min(1).default('smart-proxy:').describe('Prefix of every key, so several deployments share one Redis.'),
      options: z.record(z.string(), z.unknown()).default({})
        .describe('Passed to ioredis as is (for Sentinel: sentinels and name; TLS: tls).'),
      flushIntervalMs: ms('State changes and activity marks are written in one batch this often.', 1_000),
    }).strict(),
  ]).default({ kind: 'sqlite', path: 'var/smart-proxy.sqlite', busyTimeoutMs: 5_000, flushIntervalMs: 1_000 })
    .describe('Where instances, boot history and audit events are kept: sqlite (default; survives restarts) or memory.'),
  cluster: z.object({
    leaseMs: ms('Start and stop leases last this long, renewed every third; a dead holder is replaced after at most this.', 10_000),
    pollIntervalMs: ms('Replicas waiting for another one\'s start re-read its record this often (pub/sub can lose messages).', 1_000),
    activityFlushIntervalMs: ms('Each replica writes its activity and open connections this often.', 1_000),
    fallbackToLocal: z.boolean().default(false)
      .describe('Redis unreachable: start locally (one start per replica) instead of answering cold requests 503.'),
    replicaId: z.string().min(1).optional().describe('Name of this replica in leases and activity; default hostname-pid-random.'),
  }).strict().default({ leaseMs: 10_000, pollIntervalMs: 1_000, activityFlushIntervalMs: 1_000, fallbackToLocal: false })
    .describe('Coordination of replicas; used when state.kind is redis.'),
  providerCircuit: z.object({
    failureThreshold: z.number().int().min(1).default(3)
      .describe('Consecutive provider calls that could not connect to the API (refused, reset, DNS, unreachable) before starts are refused at once with 503 SP_PROVIDER_UNREACHABLE.'),
    openMs: ms('How long the circuit stays open before one trial call may go (half-open).', 5_000),
    maxOpenMs: ms('Each failed trial doubles the open time, up to this.', 60_000),
    maxConcurrentCalls: z.number().int().min(1).default(64)
      .describe('Calls in flight to one provider at once; more wait for a slot (within their boot deadline), health checks are skipped. A call keeps its slot until it really ends, so calls abandoned at their timeout cannot pile up against a slow or hung cloud.'),
  }).strict().default({ failureThreshold: 3, openMs: 5_000, maxOpenMs: 60_000, maxConcurrentCalls: 64 })
    .describe('Circuit breaker per provider: a cloud API that cannot be reached is answered at once instead of holding requests for a whole boot timeout.'),
  log: z.object({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'silent']).default('info'),
  }).strict().default({ level: 'info' }),
  metrics: metricsSchema,
  coldStartHeader: coldStartHeaderSchema,
  accessLog: accessLogSchema,
  mockCloud: z.object({
    enabled: z.boolean().default(false).describe('Run the embedded mock cloud (demo and tests).'),
    host: z.string().default('127.0.0.1'),
    port: port.default(0).describe('Port of the embedded mock cloud; 0 (the default) picks a free one, shown in the demo banner.'),
    bootTimeMinMs: ms('Shortest simulated boot.', 0),
    bootTimeMaxMs: ms('Longest simulated boot.', 10_000),
    seed: z.number().int().optional().describe('Seed for reproducible boot times and failures.'),
    failureRate: z.number().min(0).max(1).default(0).describe('Share of boots that fail.'),
    hangRate: z.number().min(0).max(1).default(0).describe('Share of boots that never finish.'),
    seedData: z.boolean().default(true).describe('Start with the original\'s VMs (as1: 1, 2; as2: 3).'),
  }).strict().refine((m) => m.bootTimeMinMs <= m.bootTimeMaxMs, { message: 'bootTimeMinMs must not exceed bootTimeMaxMs', path: ['bootTimeMinMs'] })
    .default({ enabled: false, host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 10_000, failureRate: 0, hangRate: 0, seedData: true }),
  identities: z.array(identitySchema).default([])
    .describe('How callers prove who they are, tried in this order (docs/concepts/access.md).'),
  access: accessSettingsSchema,
  providers: z.record(z.string().min(1), providerSchema).default({}).describe('Named providers that resources refer to.'),
  resourceDefaults: resourceDefaultsSchema.default({}).describe('Defaults for every resource.'),
  resources: z.record(resourceId, resourceSchema).describe('The resources, by id (the {resource_id} of the URL).'),
  admin: adminSchema.optional(),
  audit: auditSchema,
  front: frontSchema,
}).strict().superRefine((cfg, ctx) => {
  if (cfg.admin !== undefined && !cfg.admin.anonymousFromLoopback && cfg.identities.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['admin', 'groups'], message: 'no identities are configured, so nobody could be an admin: configure identities or set admin.anonymousFromLoopback' });
  }
  for (const [id, r] of Object.entries(cfg.resources)) {
    if (typeof r.provider === 'string' && !(r.provider in cfg.providers)) {
      ctx.addIssue({
        code: 'custom', path: ['resources', id, 'provider'],
        message: `names provider "${r.provider}", which is not under providers (known: ${Object.keys(cfg.providers).join(', ') || 'none'})`,
      });
    }
    checkResourceAccess(cfg, id, r, ctx);
  }
  checkOidcSettings(cfg, ctx);
});

/** Access rules that span fields: a resource nobody could reach, a per-user resource without users. */
function checkResourceAccess(cfg: { identities: readonly unknown[]; resourceDefaults: z.infer<typeof resourceDefaultsSchema> }, id: string, r: z.infer<typeof resourceSchema>, ctx: z.RefinementCtx): void {
  const access = r.access ?? cfg.resourceDefaults.access;
  const isPublic = access?.public === true;
  if (!isPublic && cfg.identities.length === 0) {
    ctx.addIssue({
      code: 'custom', path: ['resources', id, 'access'],
      message: 'is not public and no identities are configured, so no request could reach it: add `access: { public: true }` or configure identities',
    });
  }
  if (isPublic && (r.sharing ?? cfg.resourceDefaults.sharing) === 'user') {
    ctx.addIssue({ code: 'custom', path: ['resources', id, 'sharing'], message: '"user" needs a verified user, but the resource is public (anonymous callers have none)' });
  }
}

export type Config = z.infer<typeof configSchema>;
export type ProviderConfig = z.infer<typeof providerSchema>;
export type ResourceConfig = z.infer<typeof resourceSchema>;
export type ProbeConfig = z.infer<typeof probeSchema>;
export type KeepWarmConfig = z.infer<typeof keepWarmSchema>;
export type StateConfig = Config['state'];
export type { AccessSettings, IdentityConfig, ResourceAccessConfig } from './access-schema.ts';
