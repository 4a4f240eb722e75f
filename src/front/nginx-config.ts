/**
 * The nginx side of front-proxy mode, generated from a Smart Proxy config (`smart-proxy
 * nginx-config --config FILE`). Everything nginx does per request is in here; the design and
 * its trade-offs are in docs/operations/front-proxy.md. In short:
 *
 * - `auth_request` asks the decision listener, and `proxy_cache` keeps its "allow" for the
 *   grant TTL, keyed by the route (`/smart_proxy/{id}/{groups}`) and the credentials the
 *   configured identities read. A warm request is a cache hit: no call to Smart Proxy.
 * - The allow names the backend (`auth_request_set`), which `proxy_pass` uses, with the
 *   identity headers the data plane would set; a client's own are overwritten.
 * - Everything else goes to the data plane (`@smart_proxy`), which answers exactly as without
 *   nginx: held requests, the waiting page, 401/403/404 with bodies, WebSockets, unsafe paths.
 * - A backend that refuses or times out (502/504) sends the request to the data plane too,
 *   which notices the death, wakes the resource again and answers: no 502 reaches the client.
 * - `limit_conn` counts the requests open per resource in shared memory; the control server
 *   answers Smart Proxy's busy checks from that count (busy-checker.ts).
 */
import type { Config, IdentityConfig } from '../config/schema.ts';
import { luaDecide, luaDropFailed, luaDynamicUpstream, luaGrantHasAuthorization, luaSharedDicts, NGINX_LUA_PACKAGE } from './nginx-lua.ts';
import { corsGate, type CorsGate } from './cors-gate.ts';
import { BUSY_PATH, DECISION_PATH, FRONT_HEADERS } from './protocol.ts';
import { UpstreamNames } from './upstreams.ts';

export interface GenerateOptions {
  /** Where the config came from (a comment in the output). */
  readonly source?: string;
  /** The data plane as nginx reaches it; default from `listen`. */
  readonly dataPlane?: string;
  /** The decision listener as nginx reaches it; default from `front.decision`. */
  readonly decision?: string;
  /**
   * Where nginx keeps decisions: `proxy` (default) in proxy_cache, answered by an
   * `auth_request` subrequest per request (OSS nginx alone); `lua` in a lua_shared_dict,
   * read by Lua with no subrequest (needs lua-nginx-module: nginx-lua.ts).
   */
  readonly cache?: NginxCache;
}

export type NginxCache = 'proxy' | 'lua';
export const NGINX_CACHES: readonly NginxCache[] = ['proxy', 'lua'];

/** `$upstream_http_x_smart_proxy_user` for `X-Smart-Proxy-User`. */
const upstreamVar = (header: string): string => `$upstream_http_${header.toLowerCase().replaceAll('-', '_')}`;
const httpVar = (header: string): string => `$http_${header.toLowerCase().replaceAll('-', '_')}`;

function hostPort(host: string, port: number): string {
  // A wildcard listen address is reached on loopback from the same host.
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host;
  return `${h.includes(':') && !h.startsWith('[') ? `[${h}]` : h}:${port}`;
}

/**
 * The parts of a request that decide who the caller is, for the decision cache key: a
 * different credential is a different key. Header identities are trusted by address, so
 * the address is part of their key; a kind this generator does not know keys on everything
 * a credential could travel in.
 */
function credentialKey(identities: readonly IdentityConfig[]): string[] {
  const parts = new Set<string>();
  for (const id of identities) {
    switch (id.kind) {
      case 'token':
      case 'basic':
      case 'jwt':
        parts.add('$http_authorization');
        break;
      case 'header':
        parts.add('$remote_addr');
        parts.add(httpVar(id.userHeader));
        parts.add(httpVar(id.groupsHeader));
        break;
      default:
        parts.add('$http_authorization');
        parts.add('$http_cookie');
        parts.add('$remote_addr');
    }
  }
  return [...parts];
}

/**
 * The targets nginx may forward itself (PCRE, byte-wise, as written into the config). At
 * most as permissive as the data plane's parser (src/proxy/route.ts, unsafePathReason):
 * a segment is never "." or ".." (nor "..;x", which some servlet containers read as ".."),
 * and its bytes are printable, never "/", "?", "#", "%" or a backslash, except "%" with two
 * hex digits that encode neither ".", "/", "\\", "%" (double encoding), a control character, nor
 * a byte above 0x7f (overlong and full-width forms of "." and "/" are such bytes). The
 * query may be anything but "#". Stricter than the data plane in one way only: such
 * targets go via Smart Proxy, which forwards or refuses them as always.
 */
const SEGMENT = String.raw`(?!\.\.?(?:;[^/?]*)?(?:[/?]|$))(?:[^/?#%\x00-\x20\x7f\x5c]|%(?:2[0-46-9a-dA-D]|[346][0-9a-fA-F]|5[0-9abd-fABD-F]|7[0-9a-eA-E]))+`;
const ROUTE = String.raw`/smart_proxy/(?!\.\.?/)(?<smart_proxy_resource>[A-Za-z0-9._~-]+)/(?!\.\.?(?:[/?]|$))[A-Za-z0-9._~@+:=,-]+`;
const DIRECT_TARGET = String.raw`~^(?<smart_proxy_route>${ROUTE})(?:/(?<smart_proxy_tail>(?:${SEGMENT}/)*(?:${SEGMENT})?))?(?:\?[^#]*)?$`;
/**
 * The same gate for `--cache lua`, which accepts exactly the same targets but captures them
 * for fewer evaluations per request: `smart_proxy_head` is the route and, when a path follows
 * it, the "/" before that path (the Lua lookup's one argument: the grant differs with and
 * without a path), and `smart_proxy_tail` is the rest of the target as it is forwarded: the
 * path after the route and the query ("" or "?…" when there is no path; a bare "?" is left
 * out, as nginx's `$is_args$args` leaves it out).
 */
const LUA_DIRECT_TARGET = String.raw`^(?<smart_proxy_head>(?<smart_proxy_route>${ROUTE})(?:/(?=[^?]))?)(?:(?<=/)|/?(?=\?|$))(?<smart_proxy_tail>(?:${SEGMENT}/)*(?:${SEGMENT})?(?:\?[^#]+)?)\??$`;

/** Seconds for nginx timeouts, at least 1. */
const s = (ms: number): string => `${Math.max(1, Math.ceil(ms / 1000))}s`;

/** Names a map cannot take as they are (its own parameters): escaped with "\\". */
const MAP_WORDS = new Set(['default', 'include', 'hostnames', 'volatile']);

/**
 * $smart_proxy_cors_via: "1" for a request with an Origin to a resource with a cors policy
 * (its answer must carry the policy's fields, which the data plane sets), "" otherwise. Exact
 * matches only; the resource map is read only for requests that have an Origin.
 */
function corsMaps(cors: CorsGate): string {
  if (cors.all) {
    return `# Every resource has a cors policy: a request with an Origin goes via Smart Proxy.
map $http_origin $smart_proxy_cors_via {
    "" "";
    default 1;
}
`;
  }
  // Only ids the gate can pass (the schema's characters) can take the direct path at all.
  const ids = cors.ids.filter((id) => /^[A-Za-z0-9][A-Za-z0-9._~-]*$/.test(id)).map((id) => (MAP_WORDS.has(id.toLowerCase()) ? `\\${id}` : id));
  return `# The resources with a cors policy (a map matches them ignoring case: at worst a request
# goes via Smart Proxy that need not have).
map $smart_proxy_resource $smart_proxy_cors_resource {
    default "";
${ids.map((id) => `    ${id} 1;`).join('\n')}
}
# A request with an Origin to one of them goes via Smart Proxy.
map $http_origin $smart_proxy_cors_via {
    "" "";
    default $smart_proxy_cors_resource;
}
`;
}

export function generateNginxConfig(config: Config, options: GenerateOptions = {}): string {
  const front = config.front;
  const upstreams = new UpstreamNames(Object.values(config.resources).map((r) => (typeof r.provider === 'string' ? config.providers[r.provider] : r.provider)).filter((p) => p !== undefined));
  const dataPlane = options.dataPlane ?? hostPort(config.listen.host, config.listen.port);
  const decision = options.decision ?? hostPort(front.decision.host, front.decision.port);
  const dataScheme = config.tls === undefined ? 'http' : 'https';
  const ttlS = Math.max(1, Math.ceil(front.grantTtlMs / 1000));
  const identityHeaders = [config.access.backendHeaders.user, config.access.backendHeaders.groups];
  // Identity headers a front proxy sets for Smart Proxy (header identities): never from clients.
  const protectedHeaders = new Set(identityHeaders.map((h) => h.toLowerCase()));
  for (const id of config.identities) {
    if (id.kind === 'header') {
      protectedHeaders.add(id.userHeader.toLowerCase());
      protectedHeaders.add(id.groupsHeader.toLowerCase());
    }
  }
  const credentials = credentialKey(config.identities);
  const key = ['$smart_proxy_route', ...credentials].join('|');
  const lua = options.cache === 'lua';
  // CORS preflights are the policy's to answer (the data plane does, before any access step):
  // with a resource that has one, they never take the direct path. Nothing added otherwise.
  const cors = corsGate(config);
  const preflightGate = cors !== undefined;
  const H = FRONT_HEADERS;
  const lines: string[] = [];
  const out = (text: string): void => { lines.push(text); };

  out(`# Smart Proxy front-proxy mode for nginx (docs/operations/front-proxy.md).
# Generated by \`smart-proxy nginx-config\`${options.source === undefined ? '' : ` from ${options.source}`}: regenerate it when the
# config changes. Include it inside \`http { }\` (Debian: /etc/nginx/conf.d/smart-proxy.conf).
#
# Warm requests go from nginx straight to the backend; Smart Proxy is asked once per grant
# (${lua ? `${front.grantTtlMs / 1000}` : ttlS} s, front.grantTtlMs) per route and credential: a revoked token or a removed group keeps
# working for at most that long. Smart Proxy's trustedProxies should list this nginx.
${lua ? `#
# Decisions are kept in nginx's memory by Lua (--cache lua): this needs lua-nginx-module and
# lua-resty-core (Debian: apt-get install ${NGINX_LUA_PACKAGE}, which loads the modules).

${luaSharedDicts()}` : `
# The decision cache. Its keys contain credentials: keep it on a tmpfs only nginx can read.
proxy_cache_path ${front.nginx.cachePath} levels=1:2 keys_zone=smart_proxy_decisions:10m max_size=64m inactive=${Math.max(60, ttlS * 4)}s use_temp_path=off;`}
# Requests open per resource (busy checks read it; never a limit in practice).
limit_conn_zone $smart_proxy_resource zone=smart_proxy_open:10m;

upstream smart_proxy_data {
    server ${dataPlane};
    keepalive 64;
}
upstream smart_proxy_decision {
    server ${decision};
    keepalive 32;
}`);
  for (const b of upstreams.blocks) {
    out(`upstream ${b.name} {
    # A backend address fixed by the config: kept-alive connections.
    server ${b.server};
    keepalive 64;
}`);
  }
  if (lua) out(luaDynamicUpstream());
  out(`
${lua ? '' : `# The direct path's gate: one regex over the raw target, which matches only what Smart Proxy
# would forward unchanged: a route whose resource id and groups are written plainly, then a
# path without dot segments (also as "..;x"), "//", backslashes, "#", control characters, or
# "%" encodings of ".", "/", "\\", "%", control characters or bytes above 0x7f. Anything else
# is Smart Proxy's strict parser's to judge. The captures name the route (the decision cache
# key and X-Forwarded-Prefix), the resource (the open-request count) and the path after the
# route (the shared variables of the decision subrequest see them too).
map $request_uri $smart_proxy_direct {
    "${DIRECT_TARGET}" 1;
    default 0;
}
# Via Smart Proxy without asking: no direct target, or a WebSocket upgrade (its Origin is
# checked there)${preflightGate ? ', or a CORS preflight or cross-origin request to a resource with a cors policy (answered\n# with the policy\'s fields there)' : ''}. An exact match: no regex.
map "$smart_proxy_direct$http_upgrade${preflightGate ? '$http_access_control_request_method$smart_proxy_cors_via' : ''}" $smart_proxy_via {
    "1" 0;
    default 1;
}
`}${cors === undefined ? '' : corsMaps(cors)}${lua ? '' : `# The upstream path: the endpoint's own path, then the forwarded one ("/" alone forwards to
# the endpoint path exactly, as the data plane does). Exact matches: no regex.
map $smart_proxy_tail $smart_proxy_upstream_path {
    "" $smart_proxy_base_root;
    default $smart_proxy_base_path/$smart_proxy_tail;
}
map $smart_proxy_base_path $smart_proxy_base_root {
    "" /;
    default $smart_proxy_base_path;
}
`}# The resource of any /smart_proxy/ target, for the count of requests passed to Smart Proxy.
map $request_uri $smart_proxy_any_resource {
    "~^/smart_proxy/(?<r>[A-Za-z0-9._~-]+)/" $r;
    default "";
}
map $smart_proxy_pass_credentials $smart_proxy_authorization {
    "1" $http_authorization;
    default "";
}
# After a failed direct forward: a request the backend may have received (the connection was
# made, then reset or timed out) is not sent again unless its method is idempotent (RFC 9110
# §9.2.2). One that never connected (refused: the backend is gone) is always safe to send.
map "$request_method|$upstream_connect_time" $smart_proxy_no_resend {
    "~^(GET|HEAD|OPTIONS|TRACE|PUT|DELETE)\\|" 0;
    "~\\|-?$" 0;
    default 1;
}
map $http_upgrade $smart_proxy_connection {
    "" "";
    default upgrade;
}

server {
    listen ${front.nginx.listen};
    # Identity headers with "_" are dropped (nginx's default), never folded into "-".
    underscores_in_headers off;
    ignore_invalid_headers on;
    # Each request's memory: a forward from here (the gate's captures, the decision's variables,
    # the request to the backend) takes more than nginx's default 4k pool, and each further 4k
    # block costs an allocation and longer searches; 16k holds it in one, per open request.
    request_pool_size 16k;

    location /smart_proxy/ {
        error_page 418 = @smart_proxy;
${lua ? `        # The direct path's gate: one regex over the raw target, which matches only what Smart
        # Proxy would forward unchanged: a route whose resource id and groups are written
        # plainly, then a path without dot segments (also as "..;x"), "//", backslashes, "#",
        # control characters, or "%" encodings of ".", "/", "\\", "%", control characters or
        # bytes above 0x7f. Anything else is Smart Proxy's strict parser's to judge. The captures
        # name the route (the decision key and X-Forwarded-Prefix), the resource (the
        # open-request count) and the path after the route with the query (the forward). An \`if\` rather than a \`map\`: a map
        # lowercases and hashes its subject before the regex, on every request.
        if ($request_uri !~ "${LUA_DIRECT_TARGET}") {
            return 418;
        }
        # A WebSocket upgrade goes via Smart Proxy (its Origin is checked there).
        if ($http_upgrade != "") {
            return 418;
        }
${preflightGate ? `        # So does a CORS preflight (answered by the resource's cors policy there).
        if ($http_access_control_request_method != "") {
            return 418;
        }
        # And a cross-origin request to a resource with a cors policy (the policy's fields).
        if ($smart_proxy_cors_via) {
            return 418;
        }
` : ''}` : `        if ($smart_proxy_via) {
            return 418;
        }
`}        # Counted under $smart_proxy_resource, which the gate above captured.
        limit_conn smart_proxy_open 65535;
${lua ? `
        # The decision: the grant from the shared dict, or (a miss) asked with the subrequest
        # below and kept if it allows. Anything else goes via Smart Proxy (ngx.exec).
        ${luaDecide(credentials, front.grantTtlMs, config.access.backendHeaders)}
        # 500: the decision failed (a Lua error, logged; the decision listener unreachable);
        # 502/504: the backend is gone. Smart Proxy answers all of them (and wakes the backend
        # again).
        error_page 500 502 504 = @smart_proxy;
` : `
        auth_request ${DECISION_PATH};
        auth_request_set $smart_proxy_upstream ${upstreamVar(H.upstream)};
        auth_request_set $smart_proxy_address ${upstreamVar(H.address)};
        auth_request_set $smart_proxy_base_path ${upstreamVar(H.basePath)};
        auth_request_set $smart_proxy_user ${upstreamVar(H.user)};
        auth_request_set $smart_proxy_groups ${upstreamVar(H.groups)};
        auth_request_set $smart_proxy_pass_credentials ${upstreamVar(H.passCredentials)};
        # 401: not (yet) for nginx to serve; 500: the decision failed; 502/504: the backend is
        # gone. Smart Proxy answers all of them (and wakes the backend again).
        error_page 401 403 500 502 504 = @smart_proxy;
`}
${lua ? `        # The grant's URL is the upstream and the endpoint's path, joined for the forwarded
        # path and query (no map).
` : ''}        proxy_pass ${lua ? '$smart_proxy_url$smart_proxy_tail' : '$smart_proxy_upstream$smart_proxy_upstream_path$is_args$args'};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
${lua ? `        # The grant's header block: Host, then the identity headers (user, groups,
        # X-Forwarded-Prefix) as lines of their own, one variable for four headers. The lines
        # with "" below drop a client's own.
        proxy_set_header Host $smart_proxy_headers;
        proxy_set_header ${config.access.backendHeaders.user} "";
        proxy_set_header ${config.access.backendHeaders.groups} "";
` : `        proxy_set_header Host $smart_proxy_address;
        proxy_set_header ${config.access.backendHeaders.user} $smart_proxy_user;
        proxy_set_header ${config.access.backendHeaders.groups} $smart_proxy_groups;
`}${[...protectedHeaders].filter((h) => !identityHeaders.some((i) => i.toLowerCase() === h)).map((h) => `        proxy_set_header ${h} "";\n`).join('')}        proxy_set_header X-Forwarded-Prefix ${lua ? '""' : '$smart_proxy_route'};
${lua && luaGrantHasAuthorization(credentials) ? `        # Passed on in the grant's header block (for resources that pass credentials on).
        proxy_set_header Authorization "";` : '        proxy_set_header Authorization $smart_proxy_authorization;'}
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Port "";
        proxy_set_header X-Real-IP "";
        proxy_set_header Forwarded "";
        proxy_connect_timeout ${s(config.upstream.connectTimeoutMs)};
        proxy_read_timeout ${s(Math.max(config.upstream.headersTimeoutMs, config.upstream.bodyTimeoutMs))};
        proxy_send_timeout ${s(config.upstream.headersTimeoutMs)};
        # Server-sent events and long polls flow as they come.
        proxy_buffering off;
        proxy_next_upstream off;${front.nginx.resolver === undefined ? '' : `\n        resolver ${front.nginx.resolver};`}
    }

    location = ${DECISION_PATH} {
        internal;
        proxy_pass http://smart_proxy_decision${DECISION_PATH};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header ${H.uri} $request_uri;
        proxy_set_header ${H.method} $request_method;
        proxy_set_header ${H.client} $remote_addr;${lua ? `
        # Asked by Lua on a miss (ngx.location.capture), which keeps the allow.` : `
        proxy_cache smart_proxy_decisions;
        # A hit reads the cached allow from a kept-open file (one pread) instead of opening,
        # stat-ing and closing it on every request. A replaced entry is a new file (the cache
        # node's inode check reopens it); each kept descriptor counts against nginx's open
        # files limit (worker_rlimit_nofile).
        open_file_cache max=512 inactive=${Math.max(60, ttlS * 4)}s;
        open_file_cache_valid ${Math.max(60, ttlS * 4)}s;
        proxy_cache_key "${key}";
        # An allow lives ${ttlS} s (front.grantTtlMs), less when Smart Proxy says so (X-Accel-Expires:
        # a JWT about to expire).
        proxy_cache_valid 200 ${ttlS}s;
        proxy_cache_methods GET HEAD POST;
        # Concurrent misses for one key make one call.
        proxy_cache_lock on;
        proxy_cache_lock_timeout 5s;`}
        proxy_connect_timeout 2s;
        proxy_read_timeout 30s;
    }

    location @smart_proxy {
        if ($smart_proxy_no_resend) {
            return 502;
        }
        set $smart_proxy_resource $smart_proxy_any_resource;
        limit_conn smart_proxy_open 65535;${lua ? `
        ${luaDropFailed()}` : ''}
        proxy_pass ${dataScheme}://smart_proxy_data;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $smart_proxy_connection;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        # Held requests wait for a whole boot; the waiting page streams its progress.
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
    }

    location / {
        # Everything else goes to Smart Proxy too (its own endpoints, its 404).
        proxy_pass ${dataScheme}://smart_proxy_data;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_buffering off;
    }
}

# Smart Proxy's busy checks only: never reachable by clients.
server {
    listen ${front.nginx.controlListen};
    access_log off;
    location = ${BUSY_PATH} {
        # 409 while the resource has a request open in nginx (this check is the only one).
        set $smart_proxy_resource $arg_r;
        limit_conn smart_proxy_open 1;
        limit_conn_status 409;
        limit_conn_log_level info;
        # A content handler, so the preaccess phase (limit_conn) runs first.
        stub_status;
    }
    location / {
        return 404;
    }
}
`);
  return lines.join('\n');
}
