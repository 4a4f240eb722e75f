/**
 * `smart-proxy nginx-config` (both decision caches) and `haproxy-config` print configs that the real nginx and
 * HAProxy accept (`nginx -t`, `haproxy -c`), for a config using every identity kind, fixed and
 * dynamic backends and renamed identity headers.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { NGINX_LUA_MODULES } from '../../src/front/nginx-lua.ts';
import { upstreamName } from '../../src/front/upstreams.ts';
import { requireNginxLua } from './nginx-front-suite.ts';
import '../helpers/test-caches.ts';

const cli = new URL('../../bin/smart-proxy.js', import.meta.url).pathname;

function configFile(dir: string): string {
  const file = join(dir, 'smart-proxy.yaml');
  writeFileSync(file, `
listen: { host: 0.0.0.0, port: 8080 }
identities:
  - kind: token
    tokens: [{ user: a, groups: [g], hash: "sha256:${'a'.repeat(64)}" }]
  - kind: header
    fromAddresses: [10.0.0.0/8]
    userHeader: x-auth-user
    groupsHeader: x-auth-groups
access:
  backendHeaders: { user: X-User, groups: X-Groups }
providers:
  fixed: { kind: static, endpoint: "https://localhost:8443/base/" }
  local: { kind: process, command: [/bin/true], port: 9001 }
  dyn: { kind: process, command: [/bin/true] }
resources:
  a: { provider: fixed, access: { anyOf: [g] } }
  b: { provider: local, access: { anyOf: [g], passCredentials: true } }
  c: { provider: dyn, access: { public: true } }
  # A cors policy: cross-origin requests go via the data plane. "default" is one of nginx's map
  # words; 25 of them take two HAProxy ACL lines.
  default: { provider: fixed, access: { public: true }, cors: { allowedOrigins: ["https://x.example"] } }
${Array.from({ length: 24 }, (_, i) => `  cors${i}: { provider: fixed, access: { public: true }, cors: { allowedOrigins: ["https://x.example"] } }`).join('\n')}
front:
  enabled: true
  nginx: { listen: "127.0.0.1:18080", controlListen: "127.0.0.1:18081", cachePath: "${dir}/cache", resolver: "127.0.0.1" }
  haproxy: { listen: "127.0.0.1:18082", luaPath: "${dir}/sp.lua" }
`);
  return file;
}

void describe('front-proxy config commands', () => {
  void it('nginx-config prints a config nginx -t accepts, with the renamed headers and keep-alive upstreams', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-front-cli-'));
    try {
      const out = spawnSync(process.execPath, [cli, 'nginx-config', '--config', configFile(dir)], { encoding: 'utf8' });
      assert.equal(out.status, 0, out.stderr);
      const conf = out.stdout;
      assert.match(conf, /proxy_set_header X-User \$smart_proxy_user;/);
      assert.match(conf, /proxy_set_header x-auth-user "";/);
      assert.match(conf, /proxy_cache_key "\$smart_proxy_route\|\$http_authorization\|\$remote_addr\|\$http_x_auth_user\|\$http_x_auth_groups";/);
      assert.match(conf, /server localhost:8443;/);
      assert.match(conf, /server 127\.0\.0\.1:9001;/);
      assert.match(conf, /server 127\.0\.0\.1:8080;/, 'a wildcard listen is reached on loopback');
      assert.match(conf, /^ {4}\\default 1;$/m, 'a resource named like a map word is escaped');
      assert.match(conf, /^ {4}cors23 1;$/m);
      assert.doesNotMatch(conf, /^ {4}a 1;$/m, 'a resource without a policy keeps the direct path');
      writeFileSync(join(dir, 'nginx.conf'), `pid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents {}\nhttp {\n${conf}\n}\n`);
      const t = spawnSync('/usr/sbin/nginx', ['-t', '-q', '-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], { encoding: 'utf8' });
      assert.equal(t.status, 0, t.stderr + readFileSync(join(dir, 'error.log'), 'utf8'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('nginx-config --cache lua prints a config nginx -t accepts with the Lua modules loaded, keyed on a hash of the credential', () => {
    requireNginxLua();
    const dir = mkdtempSync(join(tmpdir(), 'sp-front-cli-'));
    try {
      const out = spawnSync(process.execPath, [cli, 'nginx-config', '--config', configFile(dir), '--cache', 'lua'], { encoding: 'utf8' });
      assert.equal(out.status, 0, out.stderr);
      const conf = out.stdout;
      assert.match(conf, /lua_shared_dict smart_proxy_decisions 10m;/);
      assert.match(conf, /access_by_lua_block/);
      assert.doesNotMatch(conf, /auth_request |proxy_cache /, 'no subrequest per request, no proxy_cache');
      assert.doesNotMatch(conf, new RegExp(`${dir}/cache`), 'no cache files');
      // The key: the route and every credential part the identities read (a salted SHA-1 of
      // them in the shared dict).
      assert.match(conf, /set_by_lua \$smart_proxy_grant '[^']*' "\$smart_proxy_head \$http_authorization\\n\$remote_addr\\n\$http_x_auth_user\\n\$http_x_auth_groups";/);
      assert.match(conf, /local CRED_NAMES = \{ "http_authorization", "remote_addr", "http_x_auth_user", "http_x_auth_groups" \}/);
      assert.match(conf, /return route \.\. "\\0" \.\. sha1_bin\(salt \.\. cred\)/);
      // The configured identity headers come from the grant's header block after Host; a
      // client's own are dropped.
      assert.match(conf, /proxy_set_header Host \$smart_proxy_headers;\n\s+proxy_set_header X-User "";\n\s+proxy_set_header X-Groups "";/);
      assert.match(conf, /local USER_HEADER, GROUPS_HEADER = "X-User", "X-Groups"/);
      writeFileSync(join(dir, 'nginx.conf'), `${NGINX_LUA_MODULES}\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents {}\nhttp {\n${conf}\n}\n`);
      const t = spawnSync('/usr/sbin/nginx', ['-t', '-q', '-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], { encoding: 'utf8' });
      assert.equal(t.status, 0, t.stderr + readFileSync(join(dir, 'error.log'), 'utf8'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('nginx-config refuses an unknown --cache, and haproxy-config any --cache', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-front-cli-'));
    try {
      const bad = spawnSync(process.execPath, [cli, 'nginx-config', '--config', configFile(dir), '--cache', 'redis'], { encoding: 'utf8' });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /--cache is one of proxy, lua, not "redis"/);
      assert.equal(bad.stdout, '');
      const haproxy = spawnSync(process.execPath, [cli, 'haproxy-config', '--config', configFile(dir), '--cache', 'lua'], { encoding: 'utf8' });
      assert.equal(haproxy.status, 2);
      assert.match(haproxy.stderr, /--cache is an option of nginx-config only/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('haproxy-config writes the Lua helper and a config haproxy -c accepts', { skip: !existsSync('/usr/sbin/haproxy') && 'haproxy is not installed' }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-front-cli-'));
    try {
      const lua = join(dir, 'sp.lua');
      const out = spawnSync(process.execPath, [cli, 'haproxy-config', '--config', configFile(dir), '--lua', lua], { encoding: 'utf8' });
      assert.equal(out.status, 0, out.stderr);
      assert.ok(existsSync(lua));
      writeFileSync(join(dir, 'haproxy.cfg'), out.stdout);
      const c = spawnSync('/usr/sbin/haproxy', ['-c', '-f', join(dir, 'haproxy.cfg')], { encoding: 'utf8' });
      assert.equal(c.status, 0, c.stdout + c.stderr);
      const acls = out.stdout.split('\n').filter((l) => l.includes('acl sp_cors_resource'));
      assert.equal(acls.length, 2);
      assert.match(acls.join(' '), /cors9 default$/);
      assert.match(out.stdout, /use_backend smart_proxy_data if \{ req\.hdr\(origin\) -m found \} sp_cors_resource/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('with a cors policy on every resource (resourceDefaults), sends every request with an Origin via the data plane, with no list of resources', { skip: !existsSync('/usr/sbin/haproxy') && 'haproxy is not installed' }, () => {
    requireNginxLua();
    const dir = mkdtempSync(join(tmpdir(), 'sp-front-cli-'));
    try {
      const file = join(dir, 'smart-proxy.yaml');
      writeFileSync(file, `
resourceDefaults: { access: { public: true }, cors: { allowedOrigins: ["https://x.example"] } }
providers:
  fixed: { kind: static, endpoint: "http://127.0.0.1:9000" }
resources:
  a: { provider: fixed }
  b: { provider: fixed }
front:
  enabled: true
  nginx: { listen: "127.0.0.1:18080", controlListen: "127.0.0.1:18081", cachePath: "${dir}/cache" }
  haproxy: { listen: "127.0.0.1:18082", luaPath: "${dir}/sp.lua" }
`);
      for (const cache of ['proxy', 'lua']) {
        const out = spawnSync(process.execPath, [cli, 'nginx-config', '--config', file, '--cache', cache], { encoding: 'utf8' });
        assert.equal(out.status, 0, out.stderr);
        assert.match(out.stdout, /map \$http_origin \$smart_proxy_cors_via \{\n {4}"" "";\n {4}default 1;\n\}/);
        assert.doesNotMatch(out.stdout, /smart_proxy_cors_resource/);
        writeFileSync(join(dir, 'nginx.conf'), `${cache === 'lua' ? NGINX_LUA_MODULES : ''}\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents {}\nhttp {\n${out.stdout}\n}\n`);
        const t = spawnSync('/usr/sbin/nginx', ['-t', '-q', '-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], { encoding: 'utf8' });
        assert.equal(t.status, 0, t.stderr + readFileSync(join(dir, 'error.log'), 'utf8'));
      }
      const h = spawnSync(process.execPath, [cli, 'haproxy-config', '--config', file, '--lua', join(dir, 'sp.lua')], { encoding: 'utf8' });
      assert.equal(h.status, 0, h.stderr);
      assert.match(h.stdout, /use_backend smart_proxy_data if \{ req\.hdr\(origin\) -m found \}\n/);
      assert.doesNotMatch(h.stdout, /sp_cors_resource/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('needs --config', () => {
    const out = spawnSync(process.execPath, [cli, 'nginx-config'], { encoding: 'utf8' });
    assert.equal(out.status, 2);
    assert.match(out.stderr, /needs --config FILE/);
  });
});

describe('upstream block names', () => {
  it('are short, and longer for an origin whose short name another origin took', () => {
    const taken = new Set<string>();
    const a = 'a1b2c3d4e5'.padEnd(64, '0');
    const b = 'a1b2c3d4e5'.padEnd(64, '1'); // the same first 40 bits: another origin
    assert.equal(upstreamName(a, taken), 'sp_a1b2c3d4e5');
    const second = upstreamName(b, taken);
    assert.notEqual(second, 'sp_a1b2c3d4e5', 'two origins never share a block');
    assert.equal(second, `sp_${b.slice(0, 16)}`);
    // Even the very same hash twice (impossible for two origins) ends in two names.
    assert.notEqual(upstreamName(a, taken), 'sp_a1b2c3d4e5');
    assert.equal(taken.size, 3);
  });
});
