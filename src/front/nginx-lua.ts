/**
 * The Lua decision cache of the generated nginx config (`smart-proxy nginx-config --cache
 * lua`; docs/operations/front-proxy.md). The plain variant asks for every warm request's
 * decision with an `auth_request` subrequest that nginx's proxy_cache answers; this one keeps
 * the decision in nginx's own memory (a `lua_shared_dict`, shared by the workers, and each
 * worker's copy of the entries it used), so a warm request costs a Lua table lookup and a
 * regex instead of a subrequest.
 *
 * What stays the same as the plain variant: a miss asks the decision listener with the same
 * subrequest (the same headers), an allow is kept for the grant TTL (less when the answer's
 * X-Accel-Expires says so), anything but an allow is never kept and sends the request to the
 * data plane, which answers it. Added: a backend that fails a direct forward (502/504) has
 * its decision dropped, so the next request is decided afresh.
 *
 * Needs lua-nginx-module with lua-resty-core (Debian: libnginx-mod-http-lua, which loads
 * ndk_http_module and ngx_http_lua_module through /etc/nginx/modules-enabled/).
 */
import { DECISION_PATH } from './protocol.ts';

/** The `load_module` lines a private nginx (tests, benchmarks) needs in its main context. */
export const NGINX_LUA_MODULES = `load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;`;

/** The Debian package that brings them. */
export const NGINX_LUA_PACKAGE = 'libnginx-mod-http-lua';

/** Shared dict names (one nginx runs one generated config). */
const DICT = 'smart_proxy_decisions';
const LOCKS = 'smart_proxy_decision_locks';

/** The http-level directives: the two shared dicts, fixed sizes, least recently used evicted. */
export function luaSharedDicts(): string {
  return `# The decision cache: decisions by route and a salted hash of the credential (never the
# credential itself). Fixed size; when full, the least recently used entry is evicted.
lua_shared_dict ${DICT} 10m;
# One decision call at a time per key (concurrent misses wait for it, at most 5 s), and the salt.
lua_shared_dict ${LOCKS} 1m;`;
}

/** A Lua string literal of `s` (ASCII only: the inputs are generated names and numbers). */
const lit = (s: string): string => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;

/**
 * The grant of a request: the allow's fields, each on a line (header values never hold a
 * newline). On a hit, one regex (`if ... ~`, which neither lowercases nor hashes its subject
 * as a `map` would) splits it into the variables the forward uses: far cheaper than Lua
 * setting the nginx variables. `smart_proxy_url` is the upstream and what the upstream path
 * starts with, joined, so that `proxy_pass` evaluates one variable for both and needs no map
 * to join the endpoint's path with the forwarded one (see grants_of in the module);
 * `smart_proxy_peer` is the backend's `ip:port` when it goes through the dynamic upstream
 * (luaDynamicUpstream), else empty; `smart_proxy_headers` is the Host header's value followed
 * by the identity headers (user, groups, X-Forwarded-Prefix) as the lines of a header block
 * (see grants_of), so that nginx evaluates one variable for the four headers.
 */
export const GRANT_FIELDS = ['smart_proxy_url', 'smart_proxy_pass_credentials', 'smart_proxy_peer', 'smart_proxy_headers'] as const;
// The last field (the header block) holds CRLFs, so it takes the rest of the grant.
const GRANT_REGEX = `^${GRANT_FIELDS.slice(0, -1).map((f) => `(?<${f}>[^\\n]*)\\n`).join('')}(?<${GRANT_FIELDS.at(-1)!}>[\\s\\S]*)$`;

/**
 * The Lua of `location /smart_proxy/`. `credentialVars` are the nginx variables (with `$`) that
 * carry a credential, as in the plain variant's cache key.
 *
 * The warm path is `set_by_lua` (rewrite phase, no coroutine, no subrequest): the worker's own
 * copy, else the shared dict (salted key); a hit sets `$smart_proxy_grant`. Only a miss runs the
 * access-phase Lua (inside an `if`, so a hit never starts a Lua thread), which asks Smart Proxy.
 */
export function luaDecide(credentialVars: readonly string[], ttlMs: number, identityHeaders: { readonly user: string; readonly groups: string }): string {
  const module = LUA_MODULE.replace('@TTL_S@', String(ttlMs / 1000))
    .replace('@USER_HEADER@', lit(identityHeaders.user)).replace('@GROUPS_HEADER@', lit(identityHeaders.groups))
    .replace('@AUTH_INDEX@', String(credentialVars.indexOf(AUTHORIZATION_VAR) + 1)).replace('@DECISION_PATH@', lit(DECISION_PATH)).replace('@NCRED@', String(credentialVars.length))
    .replace('@CRED_NAMES@', credentialVars.map((v) => lit(v.slice(1))).join(', '))
    .replace('@SET_FIELDS@', GRANT_FIELDS.map((f, i) => `    var.${f} = f[${i + 1}]`).join('\n'))
    .replace('@DYNAMIC_UPSTREAM@', lit(`http://${DYNAMIC_UPSTREAM}`));
  // The module is built once per worker by the first miss (package.loaded) and kept; until
  // then, set_by_lua finds none and the request takes the miss path, which builds it.
  // set_by_lua's string form, because only it takes nginx variables as arguments (ngx.arg),
  // which costs less than reading them through ngx.var; each argument costs an evaluation, so
  // there is one: the gate's head (the route, and "/" when a path follows it) and the
  // credential parts, which is the worker's copy's key (below). The module reads it from
  // ngx.arg, not this chunk: `ngx.arg[1]` here (a C metamethod in the chunk LuaJIT starts
  // its trace in) costs ~5,000 instructions more per request under callgrind.
  return `set_by_lua $smart_proxy_grant 'local sp = package.loaded.smart_proxy_front if sp == nil then return "" end return sp.lookup(ngx.arg)' "$smart_proxy_head ${credentialVars.join('\\n')}";
        # A hit: the regex's named captures are the allow's fields (set even though the
        # condition is negated). A miss ("") runs the access-phase Lua, which asks Smart Proxy
        # and sets them; on a hit nginx neither enters this block nor starts a Lua thread.
        if ($smart_proxy_grant !~ "${GRANT_REGEX}") {
            access_by_lua_block {
                local sp = package.loaded.smart_proxy_front
                if sp == nil then
                    sp = (function()
${module.replace(/^/gm, '                        ').trimEnd()}
                    end)()
                    package.loaded.smart_proxy_front = sp
                end
                return sp.miss()
            }
        }`;
}

const AUTHORIZATION_VAR = '$http_authorization';

/**
 * Whether the grant's header block carries the client's Authorization for resources that pass
 * it on: when it is one of the credential parts, the worker's copy is keyed by it, so its
 * grant can hold it (the shared dict never does). Otherwise the forward sets it from the
 * request with a map on the grant's pass-credentials field.
 */
export function luaGrantHasAuthorization(credentialVars: readonly string[]): boolean {
  return credentialVars.includes(AUTHORIZATION_VAR);
}

/** The upstream of backends whose address is known only at run time. */
export const DYNAMIC_UPSTREAM = 'sp_dynamic';

/**
 * An upstream block for backends whose address only Smart Proxy knows (a container's port, a
 * process on a port of its own choosing), so that they get kept-alive connections too: with
 * the address in a variable, nginx makes a new connection for every request. The grant names
 * this block instead of the plain `http://ip:port`, and `balancer_by_lua` picks the peer from
 * the grant (ngx.balancer, lua-resty-core). Kept-alive connections are matched by the peer's
 * address, so each backend gets back only its own.
 */
export function luaDynamicUpstream(): string {
  return `upstream ${DYNAMIC_UPSTREAM} {
    # Never used: balancer_by_lua sets the peer of every request.
    server 0.0.0.1:1;
    balancer_by_lua_block {
        local sp = package.loaded.smart_proxy_front
        local ok, err
        if sp == nil then
            ok, err = nil, "no decision made in this worker"
        else
            ok, err = sp.balance()
        end
        if not ok then
            -- The request fails (500) and goes via Smart Proxy, which answers it.
            ngx.log(ngx.ERR, "smart proxy: no backend for the dynamic upstream: ", err)
            return ngx.exit(ngx.ERROR)
        end
    }
    # After balancer_by_lua, so that it wraps the peer that Lua picks.
    keepalive 64;
}`;
}

/** The access-phase Lua of `location @smart_proxy`: drop the decision of a failed direct forward. */
export function luaDropFailed(): string {
  return `access_by_lua_block {
            -- An upstream address here means a direct forward on a kept allow failed (the
            -- backend refused or timed out; a decision's subrequest has upstreams of its own):
            -- the allow is dropped, and the next request is decided afresh while Smart Proxy
            -- wakes the resource again.
            local sp = package.loaded.smart_proxy_front
            if sp ~= nil and ngx.var.upstream_addr ~= nil then
                sp.drop()
            end
        }`;
}

/**
 * Each worker's own copy of the decisions it used (in front of the shared dict): at most this
 * many bytes per worker, counted generously (then it is emptied and refilled from the dict).
 */
export const LOCAL_MAX_BYTES = 8 * 1024 * 1024;
/**
 * How often, at most, a worker checks whether another worker dropped a decision (seconds):
 * until then, that worker may try the failed backend once more, and that request goes via
 * Smart Proxy as the first did.
 */
export const DROP_CHECK_S = 0.1;

/** The module: lookup (set_by_lua, the warm path) and miss (access phase). */
const LUA_MODULE = `local dict = ngx.shared.${DICT}
local locks = ngx.shared.${LOCKS}
local sha1_bin, capture, exec, sleep, log, ERR, now = ngx.sha1_bin, ngx.location.capture, ngx.exec, ngx.sleep, ngx.log, ngx.ERR, ngx.now
local find, sub, byte, match, lower, concat, format, tonumber, type, pairs, tostring = string.find, string.sub, string.byte, string.match, string.lower, table.concat, string.format, tonumber, type, pairs, tostring
local set_current_peer = require("ngx.balancer").set_current_peer
local DYNAMIC_UPSTREAM = @DYNAMIC_UPSTREAM@
local USER_HEADER, GROUPS_HEADER = @USER_HEADER@, @GROUPS_HEADER@
-- Which credential part is the Authorization header (0: none), for the header block.
local AUTH_INDEX = @AUTH_INDEX@
local TTL_S = @TTL_S@
local LOCK_S = 5
local NCRED = @NCRED@
local CRED_NAMES = { @CRED_NAMES@ }
-- The worker's own copy of the decisions it used: at most this many bytes (then emptied), and
-- checked against the shared dict's drops at most this often (seconds).
local LOCAL_MAX_BYTES = ${LOCAL_MAX_BYTES}
local DROP_CHECK_S = ${DROP_CHECK_S}
local salt

-- One random salt for all workers (they share the dict, so their keys must agree): the
-- first to need one stores it. Were it ever lost, keys would just change: decided afresh.
local function get_salt()
    local s = locks:get("salt")
    if s == nil then
        local f = assert(io.open("/dev/urandom", "rb"))
        local bytes = f:read(32)
        f:close()
        assert(bytes ~= nil and #bytes == 32, "short read from /dev/urandom")
        locks:add("salt", bytes)
        s = assert(locks:get("salt"), "no room for the salt")
    end
    return s
end

-- No credential at all (an anonymous caller of a public resource): nothing to hash.
local NO_CREDENTIAL = string.rep("\\n", NCRED - 1)

-- The shared dict's key: the route, then a salted hash of the credential parts (never the
-- credential itself: the shared memory outlives requests and is readable by every worker).
local function key_of(route, cred)
    if cred == NO_CREDENTIAL then return route .. "\\0" end
    return route .. "\\0" .. sha1_bin(salt .. cred)
end

-- The worker's copy: { grant, expiry } by the gate's head (the route, and "/" when a path
-- follows it: the two grants differ), a space and the credential parts, a newline between
-- them (a route has no space, a header value no newline). It lives in this worker's own
-- memory, which sees the raw credential anyway, so it is keyed by it: a hit costs a table
-- lookup instead of a SHA-1 and a shared-memory read. An entry ends when its shared entry ends (the same expiry, to the
-- millisecond); the copy is emptied when a worker drops a decision (the drop mark below) or
-- when it outgrows LOCAL_MAX_BYTES.
local copy, copy_bytes = {}, 0
local drop_mark, next_drop_check, drops = nil, 0, 0

local function forget_all()
    copy, copy_bytes = {}, 0
end

local function remember(ck, grant, expiry)
    local size = #ck + #grant + 120
    if copy_bytes + size > LOCAL_MAX_BYTES then forget_all() end
    copy[ck] = { grant, expiry }
    copy_bytes = copy_bytes + size
end

-- A copy's key's route, credential parts, and whether a path follows the route.
local function split_ck(ck)
    local sp = find(ck, " ", 1, true)
    local cred = sub(ck, sp + 1)
    if byte(ck, sp - 1) == 47 then return sub(ck, 1, sp - 2), cred, true end
    return sub(ck, 1, sp - 1), cred, false
end

-- A drop in any worker changes the mark (a value never used before, so an evicted or reset
-- mark also reads as a change); a worker that sees a new mark empties its copy.
local function check_drops(t)
    next_drop_check = t + DROP_CHECK_S
    local mark = locks:get("dropped")
    if mark ~= drop_mark then
        drop_mark = mark
        forget_all()
    end
end

-- The first n lines of v (missing ones empty); with rest, the nth is all that follows n - 1.
local function lines(v, n, rest)
    local f, pos = {}, 1
    for i = 1, n do
        local eol = (i < n or not rest) and find(v, "\\n", pos, true) or nil
        f[i] = sub(v, pos, (eol or 0) - 1)
        pos = (eol or #v) + 1
    end
    return f
end

-- The two grants of a kept allow, which the shared dict holds as its expiry (epoch seconds),
-- then the upstream, Host, endpoint path, user, groups and pass-credentials fields, a line
-- each. A grant's first line is the upstream joined with the upstream path's prefix, and the
-- two differ in that prefix: for a request with a path after the route
-- it is the endpoint's path and "/", and that path follows; without one, it is the endpoint's
-- path alone, or "/" when it has none (the data plane forwards "/" alone to the endpoint path
-- exactly). Then the pass-credentials field; then, for a backend at a plain http://ip:port (an
-- address only Smart Proxy knew), which goes through the dynamic upstream, that address (the
-- peer; empty otherwise); last the header block: the Host header's value, then the identity
-- headers the data plane sets (user and groups when not empty, X-Forwarded-Prefix: the route),
-- CRLF between them, which nginx writes as they are after "Host: ". The values are Smart
-- Proxy's answer's header values and the gate's route: never a CR or LF (decide checks).
-- When the resource passes the client's credentials on and they are part of the copy's key
-- (cred), the block ends with the Authorization header: the grant is this worker's, for this
-- credential only.
-- Returns the grant without a forwarded path, the grant with one, the expiry.
local function grants_of(v, route, cred)
    local f = lines(v, 7)
    local upstream, peer = f[2], match(f[2], "^http://(%d+%.%d+%.%d+%.%d+:%d+)$")
    if peer ~= nil then upstream = DYNAMIC_UPSTREAM end
    local headers = f[3]
    if f[5] ~= "" then headers = headers .. "\\r\\n" .. USER_HEADER .. ": " .. f[5] end
    if f[6] ~= "" then headers = headers .. "\\r\\n" .. GROUPS_HEADER .. ": " .. f[6] end
    headers = headers .. "\\r\\nX-Forwarded-Prefix: " .. route
    if AUTH_INDEX > 0 and f[7] == "1" then
        local auth = lines(cred, NCRED)[AUTH_INDEX]
        -- nginx's request parser lets no CR or LF into a header value.
        if auth ~= "" and not find(auth, "[\\r\\n]") then headers = headers .. "\\r\\nAuthorization: " .. auth end
    end
    local base = f[4]
    local rest = "\\n" .. f[7] .. "\\n" .. (peer or "") .. "\\n" .. headers
    return upstream .. (base == "" and "/" or base) .. rest, upstream .. base .. "/" .. rest, tonumber(f[1])
end

-- The peers of the dynamic upstream by their ip:port, each parsed once (at most 1,000 kept;
-- past that the table starts over).
local peers, npeers = {}, 0

local function field(h, name)
    local v = h[name]
    if type(v) == "table" then return nil end -- repeated: not an answer of Smart Proxy's
    return v or ""
end

-- Asks the decision listener (the plain variant's subrequest). Returns the allow (what the
-- shared dict keeps: expiry and fields), or nil: the request goes via Smart Proxy (never kept,
-- as the plain variant keeps no 401).
local function decide(key)
    -- Concurrent misses for one key make one call: the others wait for its answer (bounded),
    -- then ask themselves if it was no allow (as nginx's proxy_cache_lock).
    local locked = locks:add(key, true, LOCK_S)
    if not locked then
        local waited, step = 0, 0.001
        while waited < LOCK_S do
            sleep(step)
            waited = waited + step
            local v = dict:get(key)
            if v ~= nil then return v end
            if locks:get(key) == nil then break end
            if step < 0.05 then step = step * 2 end
        end
    end
    local ok, res = pcall(capture, @DECISION_PATH@)
    if locked then locks:delete(key) end
    if not ok then error("decision subrequest failed: " .. tostring(res)) end
    if res.status ~= 200 then return nil end
    local h = {}
    for name, value in pairs(res.header) do h[lower(name)] = value end
    local upstream = field(h, "sp-upstream")
    if upstream == nil or upstream == "" then
        log(ERR, "smart proxy: an allow without SP-Upstream; sending the request via Smart Proxy")
        return nil
    end
    local fields = { upstream, field(h, "sp-host"), field(h, "sp-base"), field(h, "sp-user"), field(h, "sp-groups"), field(h, "sp-creds") }
    for i = 2, 6 do
        -- A CR or LF would end a line of the grant, or of the header block it makes.
        if fields[i] == nil or find(fields[i], "[\\r\\n]") then return nil end
    end
    -- The grant's life: the TTL, less when Smart Proxy says so (a JWT about to expire).
    local ttl = TTL_S
    local expires = tonumber(h["x-accel-expires"])
    if expires ~= nil and expires < ttl then ttl = expires end
    local v = format("%.3f\\n", now() + ttl) .. concat(fields, "\\n")
    if ttl > 0 then
        -- Evicts the least recently used entries when full; a failure only costs a decision.
        local stored, err = dict:set(key, v, ttl)
        if not stored then log(ERR, "smart proxy: decision not kept: ", err) end
    end
    return v
end

-- The grant of a copy's key from the shared dict's value v, kept in the copy until it ends.
local function fill(ck, route, cred, with_path, v)
    local root, path, expiry = grants_of(v, route, cred)
    local grant = with_path and path or root
    if expiry > now() then remember(ck, grant, expiry) end
    return grant
end

local M = {}

-- set_by_lua: arg[1] is the copy's key of the request. The grant, or "" (a miss).
function M.lookup(arg)
    if salt == nil then return "" end
    local ck = arg[1]
    local t = now()
    if t >= next_drop_check then check_drops(t) end
    local e = copy[ck]
    if e ~= nil then
        if t < e[2] then return e[1] end
        copy[ck] = nil
    end
    -- Not in this worker's copy: another worker's decision, or one this worker let go.
    local route, cred, with_path = split_ck(ck)
    local v = dict:get(key_of(route, cred))
    if v == nil then return "" end
    return fill(ck, route, cred, with_path, v)
end

-- The copy's key of this request, from its variables (off the warm path).
local function request_ck()
    local var = ngx.var
    local parts = {}
    for i = 1, NCRED do parts[i] = var[CRED_NAMES[i]] or "" end
    return var.smart_proxy_head .. " " .. concat(parts, "\\n")
end

-- access_by_lua after a miss: the decision (kept if it allows), or via Smart Proxy.
function M.miss()
    if salt == nil then salt = get_salt() end
    local var = ngx.var
    local ck = request_ck()
    local route, cred, with_path = split_ck(ck)
    local key = key_of(route, cred)
    local v = dict:get(key) or decide(key)
    if v == nil then return exec("@smart_proxy") end
    local grant = fill(ck, route, cred, with_path, v)
    local f = lines(grant, ${GRANT_FIELDS.length}, true)
    var.smart_proxy_grant = grant
@SET_FIELDS@
end

-- balancer_by_lua of the dynamic upstream: this request's peer, from its grant.
function M.balance()
    local peer = ngx.var.smart_proxy_peer
    local p = peers[peer]
    if p == nil then
        local ip, port = match(peer or "", "^(%d+%.%d+%.%d+%.%d+):(%d+)$")
        if ip == nil then return nil, "no peer in the grant: " .. tostring(peer) end
        if npeers >= 1000 then peers, npeers = {}, 0 end
        p = { ip, tonumber(port) }
        peers[peer] = p
        npeers = npeers + 1
    end
    return set_current_peer(p[1], p[2])
end

-- @smart_proxy after a failed direct forward: the decision is dropped here, in the shared
-- dict, and (through the drop mark) in the other workers' copies.
function M.drop()
    if salt == nil or ngx.var.smart_proxy_head == nil then return end
    local route, cred = split_ck(request_ck())
    -- Both of this worker's grants of the route and credential: with a path and without.
    copy[route .. " " .. cred] = nil
    copy[route .. "/ " .. cred] = nil
    dict:delete(key_of(route, cred))
    drops = drops + 1
    drop_mark = format("%d %.3f %d", ngx.worker.pid(), now(), drops)
    locks:set("dropped", drop_mark)
    log(ngx.NOTICE, "smart proxy: a direct forward failed (", ngx.var.upstream_status, "): decision dropped, the next request is decided afresh")
end

return M
`;
