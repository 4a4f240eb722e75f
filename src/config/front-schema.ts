/**
 * Front-proxy mode: an nginx (or HAProxy) in front carries warm requests straight to the
 * backend and asks Smart Proxy only when it has to (docs/operations/front-proxy.md).
 */
import { z } from 'zod';

const port = z.number().int().min(0).max(65535);
/** `host:port` or `unix:/path`, as nginx's `listen` and HAProxy's `bind` take it. */
const listenAddress = z.string().regex(/^(unix:\/\S+|\[[0-9A-Fa-f:.]+\]:\d{1,5}|[A-Za-z0-9.-]+:\d{1,5})$/, 'host:port, [v6]:port or unix:/path');

export const frontSchema = z.object({
  enabled: z.boolean().default(false)
    .describe('Serve decisions to a front proxy (nginx auth_request, HAProxy Lua) on decision.host:port, and keep its open requests from being idle-stopped.'),
  decision: z.object({
    host: z.string().default('127.0.0.1').describe('Address of the decision listener. Only the front proxy may reach it: its answers name backends.'),
    port: port.default(8081),
  }).strict().default({ host: '127.0.0.1', port: 8081 }),
  grantTtlMs: z.number().int().min(1_000).max(300_000).default(5_000)
    .describe('How long the front proxy reuses an allow decision (per resource, URL groups and credential) without asking: a revoked token or a removed group keeps working at most this long. Whole seconds (rounded up); a JWT is never granted past its expiry.'),
  busyCheckIntervalMs: z.number().int().min(100).default(5_000)
    .describe('How often instances close to their idle stop are checked for requests the front proxy still has open (WebSockets, long responses); capped at a third of each resource\'s idleStopMs.'),
  nginx: z.object({
    listen: listenAddress.default('127.0.0.1:8000').describe('Where the generated nginx server block listens for clients.'),
    controlListen: listenAddress.default('127.0.0.1:8001')
      .describe('A second nginx server, for Smart Proxy only: it answers "busy" while a resource has requests open in nginx.'),
    cachePath: z.string().min(1).default('/var/cache/nginx/smart-proxy')
      .describe('proxy_cache_path of the decision cache. Its keys hold credentials: keep it on a tmpfs readable only by nginx.'),
    resolver: z.string().optional().describe('nginx `resolver` for backends named by host name (IP endpoints and static endpoints need none).'),
  }).strict().default({ listen: '127.0.0.1:8000', controlListen: '127.0.0.1:8001', cachePath: '/var/cache/nginx/smart-proxy' }),
  haproxy: z.object({
    listen: listenAddress.default('127.0.0.1:8000').describe('Where the generated HAProxy frontend binds for clients.'),
    luaPath: z.string().min(1).default('/etc/haproxy/smart-proxy.lua').describe('Where the generated Lua decision helper is written (lua-load).'),
  }).strict().default({ listen: '127.0.0.1:8000', luaPath: '/etc/haproxy/smart-proxy.lua' }),
}).strict().default({
  enabled: false, decision: { host: '127.0.0.1', port: 8081 }, grantTtlMs: 5_000, busyCheckIntervalMs: 5_000,
  nginx: { listen: '127.0.0.1:8000', controlListen: '127.0.0.1:8001', cachePath: '/var/cache/nginx/smart-proxy' },
  haproxy: { listen: '127.0.0.1:8000', luaPath: '/etc/haproxy/smart-proxy.lua' },
}).describe('Front-proxy mode (docs/operations/front-proxy.md): nginx or HAProxy forwards warm requests itself.');

export type FrontConfig = z.infer<typeof frontSchema>;
