/**
 * Front-proxy mode end to end, for each decision cache of the generated nginx config
 * (nginx-front.test.ts: proxy_cache; nginx-lua.test.ts: Lua): a real nginx running the
 * generated config in front of a real Smart Proxy (startApp, in-memory state) whose backends
 * are real HTTP servers. Cold wake through nginx, warm traffic that never reaches Smart Proxy,
 * access refused as Smart Proxy refuses it, revocation within the grant TTL, idle stop with
 * traffic only through nginx, and a backend that dies without a 502 reaching the client.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, createServer, request, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { exportJWK, SignJWT } from 'jose';
import { parseConfig } from '../../src/config/load.ts';
import { generateNginxConfig, type NginxCache } from '../../src/front/nginx-config.ts';
import { DROP_CHECK_S, NGINX_LUA_MODULES, NGINX_LUA_PACKAGE } from '../../src/front/nginx-lua.ts';
import { startApp, type App } from '../../src/main.ts';
import type { Provider } from '../../src/core/ports.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
import { freePort, startNginx, type FrontProcess, bearer, echo, get, send, sha, type Answer } from './front-kit.ts';

const ALICE = 'alice-token-0123456789abcdef';
const EVE = 'eve-token-0123456789abcdef';






/** Fails at once, naming the Debian package, when nginx's Lua module is missing. */
export function requireNginxLua(): void {
  for (const file of ['/usr/lib/nginx/modules/ndk_http_module.so', '/usr/lib/nginx/modules/ngx_http_lua_module.so', '/usr/share/lua/5.1/resty/core.lua']) {
    if (!existsSync(file)) throw new Error(`${file} is missing: apt-get install ${NGINX_LUA_PACKAGE} (or sudo scripts/install-system-deps.sh)`);
  }
}

export function nginxFrontSuite(cache: NginxCache): void {
  void describe(`front-proxy mode: nginx in front (generated config, --cache ${cache})`, () => {
    let app: App;
    let config: ReturnType<typeof parseConfig>;
    let nginx: FrontProcess;
    let nginxPort: number;
    let jwks: Server;
    let jwksBody: string;
    let signJwt: (groups: string[]) => Promise<string>;
    const logs: Harness['logs'] = [];
    // Slow responses of the "idle" resource stay open until the test ends them.
    const openSlow = new Set<() => void>();
    let resets = 0;
    const mimic = new MimicProvider({
      bootMs: 150,
      handler: (req, res) => {
        // A backend that dies mid-request: it reads the request, then drops the connection.
        if (req.url?.startsWith('/reset') === true) {
          resets++;
          req.socket.destroy();
          return;
        }
        echo(req, res);
      },
    });
    const slowMimic = new MimicProvider({
      bootMs: 50,
      handler: (req, res) => {
        if (req.url?.includes('/slow') === true) {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.write('first chunk\n');
          openSlow.add(() => res.end('done\n'));
          return;
        }
        res.end('ok');
      },
    });
    let dataPlaneRequests = 0;
    // A backend reached under a path of its own (an endpoint like http://host:port/base).
    const basedMimic = new MimicProvider({ bootMs: 20, handler: echo });
    const based: Provider = {
      kind: 'mimic',
      start: (ref, signal) => basedMimic.start(ref, signal),
      stop: (ref) => basedMimic.stop(ref),
      inspect: async (ref) => {
        const r = await basedMimic.inspect(ref);
        return r.endpoint === undefined ? r : { ...r, endpoint: `${r.endpoint}/base` };
      },
    };

    before(async () => {
      const [listen, decision, control] = [await freePort(), await freePort(), await freePort()];
      nginxPort = await freePort();
      const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
      jwksBody = JSON.stringify({ keys: [jwk] });
      jwks = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(jwksBody));
      jwks.listen(0, '127.0.0.1');
      await once(jwks, 'listening');
      const jwksPort = (jwks.address() as { port: number }).port;
      signJwt = (groups) => new SignJWT({ groups }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setSubject('jwt-user')
        .setIssuer('test').setAudience('sp').setExpirationTime('10m').sign(privateKey);
      config = parseConfig(`
listen: { host: 127.0.0.1, port: ${listen} }
state: { kind: memory }
trustedProxies: [127.0.0.1]
identities:
  - kind: token
    tokens:
      - { user: alice, groups: [staff], hash: "${sha(ALICE)}" }
      - { user: eve, groups: [guests], hash: "${sha(EVE)}" }
  - kind: jwt
    issuer: test
    audience: sp
    algorithms: [ES256]
    jwksUrl: "http://127.0.0.1:${jwksPort}/jwks"
    jwksCacheMaxAgeMs: 1
    jwksCooldownMs: 1
# Smart Proxy's own cache of verified JWTs adds up to jwtRecheckMs to the revocation window.
access: { credentials: { jwtRecheckMs: 500 } }
providers:
  m: { kind: static, endpoint: "http://127.0.0.1:9" }
  slow: { kind: static, endpoint: "http://127.0.0.1:9" }
  based: { kind: static, endpoint: "http://127.0.0.1:9" }
resources:
  based: { provider: based, access: { anyOf: [staff] }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  app: { provider: m, access: { anyOf: [staff] }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  pub: { provider: m, access: { public: true }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  corspub: { provider: m, access: { public: true }, cors: { allowedOrigins: ["https://app.example"] }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  creds: { provider: m, access: { anyOf: [staff], passCredentials: true }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  idle: { provider: slow, access: { anyOf: [staff] }, idleStopMs: 1500, bootTimeoutMs: 10000 }
front:
  enabled: true
  decision: { host: 127.0.0.1, port: ${decision} }
  grantTtlMs: 1000
  busyCheckIntervalMs: 200
  nginx: { listen: "127.0.0.1:${nginxPort}", controlListen: "127.0.0.1:${control}", cachePath: "@DIR@/decisions" }
`);
      app = await startApp(config, { logger: collectingLogger(logs), providers: new Map<string, Provider>([['m', mimic], ['slow', slowMimic], ['based', based]]) });
      app.proxy.server.on('request', () => { dataPlaneRequests++; });
      nginx = await startNginx((dir) => generateNginxConfig(config, { cache }).replace('@DIR@', dir), nginxPort, cache === 'lua' ? NGINX_LUA_MODULES : '');
    });

    after(async () => {
      for (const end of openSlow) end();
      await nginx?.close();
      await app?.close();
      await mimic.close();
      await slowMimic.close();
      await basedMimic.close();
      jwks?.close();
    });

    void it('wakes a cold resource through nginx, then serves it warm without asking Smart Proxy', async () => {
      const cold = await get(nginxPort, '/smart_proxy/app/-/hello?x=1', bearer(ALICE));
      assert.equal(cold.status, 200, cold.body + nginx.output());
      assert.equal(mimic.calls.start, 1);
      assert.equal((JSON.parse(cold.body) as Echo).url, '/hello?x=1');

      const before = { data: dataPlaneRequests, direct: app.front!.decisions.counts.direct };
      const started = Date.now();
      const warm: Answer[] = [];
      for (let i = 0; i < 100; i++) warm.push(await get(nginxPort, `/smart_proxy/app/-/w/${i}?q=${i}`, bearer(ALICE)));
      const elapsedS = (Date.now() - started) / 1000;
      assert.deepEqual([...new Set(warm.map((w) => w.status))], [200]);
      assert.equal(dataPlaneRequests - before.data, 0, 'no warm request reached the data plane');
      const asked = app.front!.decisions.counts.direct - before.direct;
      // One decision per grant (1 s) at most, plus the one that may be due as the run starts.
      assert.ok(asked <= Math.ceil(elapsedS) + 1, `${asked} decisions for 100 requests in ${elapsedS} s`);
      assert.equal((JSON.parse(warm[42]!.body) as Echo).url, '/w/42?q=42');
    });

    void it('sends CORS preflights to the data plane, whose cors policy answers them, also on a warm granted route', async () => {
      // Warm and granted (public: the preflight's credential key is the same, empty one).
      assert.equal((await get(nginxPort, '/smart_proxy/corspub/-/x')).status, 200);
      assert.equal((await get(nginxPort, '/smart_proxy/corspub/-/x')).status, 200);
      const before = dataPlaneRequests;
      const pre = await send(nginxPort, '/smart_proxy/corspub/-/x', 'OPTIONS', '', { origin: 'https://app.example', 'access-control-request-method': 'PUT' });
      assert.equal(pre.status, 204, pre.body);
      assert.equal(pre.headers['access-control-allow-origin'], 'https://app.example');
      assert.equal(dataPlaneRequests - before, 1, 'answered by the data plane, not the backend');
    });

    void it('sends a cross-origin request to a resource with a cors policy via the data plane (the policy\'s fields, not the backend\'s); others stay direct', async () => {
      // (app, not pub: another test counts pub's first decisions.)
      assert.equal((await get(nginxPort, '/smart_proxy/corspub/-/x')).status, 200);
      assert.equal((await get(nginxPort, '/smart_proxy/corspub/-/x')).status, 200);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/x', bearer(ALICE))).status, 200);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/x', bearer(ALICE))).status, 200);
      const origin = { origin: 'https://app.example', 'x-echo-cors': '1' };
      let before = dataPlaneRequests;
      const cross = await get(nginxPort, '/smart_proxy/corspub/-/x', origin);
      assert.equal(cross.status, 200, cross.body);
      assert.equal(cross.headers['access-control-allow-origin'], 'https://app.example');
      assert.equal(cross.headers['access-control-expose-headers'], undefined, 'the backend\'s own field is dropped');
      assert.match(String(cross.headers.vary), /origin/i);
      assert.equal(dataPlaneRequests - before, 1, 'answered through the data plane');
      // Without an Origin, and with one to a resource that has no policy: the direct path.
      before = dataPlaneRequests;
      const plain = await get(nginxPort, '/smart_proxy/corspub/-/x', { 'x-echo-cors': '1' });
      assert.equal(plain.status, 200);
      const other = await get(nginxPort, '/smart_proxy/app/-/x', { ...origin, ...bearer(ALICE) });
      assert.equal(other.status, 200);
      assert.equal(other.headers['access-control-allow-origin'], '*', 'a resource without a policy: the backend\'s fields');
      assert.equal(dataPlaneRequests - before, 0, 'neither reached the data plane');
    });

    void it('gives the backend the identity headers Smart Proxy gives it, and strips spoofed ones', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      const spoof = { 'x-forwarded-user': 'root', 'x-forwarded-groups': 'admin', 'x_forwarded_user': 'root2', 'x-forwarded-for': '6.6.6.6' };
      const viaNginx = JSON.parse((await get(nginxPort, '/smart_proxy/app/-/id', { ...bearer(ALICE), ...spoof })).body) as Echo;
      const viaSmartProxy = JSON.parse((await get(Number(new URL(app.proxyUrl).port), '/smart_proxy/app/-/id', { ...bearer(ALICE), ...spoof })).body) as Echo;
      for (const h of ['x-forwarded-user', 'x-forwarded-groups', 'x-forwarded-prefix', 'authorization', 'x_forwarded_user']) {
        assert.equal(viaNginx.headers[h], viaSmartProxy.headers[h], h);
      }
      assert.equal(viaNginx.headers['x-forwarded-user'], 'alice');
      assert.equal(viaNginx.headers['x-forwarded-groups'], 'staff');
      assert.equal(viaNginx.headers.authorization, undefined);
      assert.equal(viaNginx.headers['x-forwarded-prefix'], '/smart_proxy/app/-');
      // nginx believes no client's X-Forwarded-For (this test's client is a trusted proxy of
      // Smart Proxy, so the two differ here on purpose).
      assert.equal(viaNginx.headers['x-forwarded-for'], '127.0.0.1');
    });

    void it('refuses as Smart Proxy refuses: 401 with a challenge, 403, 404, 400 for unsafe paths', async () => {
      const anonymous = await get(nginxPort, '/smart_proxy/app/-/x');
      assert.equal(anonymous.status, 401);
      assert.match(String(anonymous.headers['www-authenticate']), /Bearer/);
      const eve = await get(nginxPort, '/smart_proxy/app/-/x', bearer(EVE));
      const eveDirect = await get(Number(new URL(app.proxyUrl).port), '/smart_proxy/app/-/x', bearer(EVE));
      assert.equal(eve.status, eveDirect.status);
      assert.equal(eve.body, eveDirect.body);
      assert.equal(eve.status, 404, 'a resource eve may not see does not exist for her (revealExistence: false)');
      assert.equal((await get(nginxPort, '/smart_proxy/nope/-/x', bearer(ALICE))).status, 404);
      // A warm, granted route: an unsafe path still never reaches the backend directly.
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      for (const path of ['/smart_proxy/app/-/a/../b', '/smart_proxy/app/-/a/%2e%2e/b', '/smart_proxy/app/-/a//b', '/smart_proxy/app/-/a/.']) {
        const r = await get(nginxPort, path, bearer(ALICE));
        assert.equal(r.status, 400, `${path}: ${r.body}`);
      }
      // Encoded characters are Smart Proxy's to judge: the same answer either way.
      const encoded = '/smart_proxy/app/-/a%2fb%20c';
      const direct = JSON.parse((await get(Number(new URL(app.proxyUrl).port), encoded, bearer(ALICE))).body) as Echo;
      const viaNginx = JSON.parse((await get(nginxPort, encoded, bearer(ALICE))).body) as Echo;
      assert.equal(viaNginx.url, direct.url);
    });

    void it('forwards plain targets directly, byte for byte, and every other target via Smart Proxy with its answer', async () => {
      const dataPort = Number(new URL(app.proxyUrl).port);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      // Direct: the backend gets what Smart Proxy would send it, and Smart Proxy sees nothing.
      for (const target of ['/smart_proxy/app/-', '/smart_proxy/app/-/', '/smart_proxy/app/-?q=1', '/smart_proxy/app/-/?q=/1', '/smart_proxy/app/-/x??y', '/smart_proxy/app/-/a%20b/c/?q=%2e%2e&x=..', '/smart_proxy/app/-/a.b/.c/..d/...', "/smart_proxy/app/-/x;y=1/(z)!$&'*+,=:@~"]) {
        const before = dataPlaneRequests;
        const viaNginx = await get(nginxPort, target, bearer(ALICE));
        assert.equal(viaNginx.status, 200, `${target}: ${viaNginx.body}`);
        assert.equal(dataPlaneRequests, before, `${target} went via Smart Proxy`);
        const direct = await get(dataPort, target, bearer(ALICE));
        assert.equal((JSON.parse(viaNginx.body) as Echo).url, (JSON.parse(direct.body) as Echo).url, target);
      }
      // Via Smart Proxy: dot segments in any spelling Smart Proxy reads as one, encoded
      // separators and controls, double encoding, non-ASCII encodings (judged there), encoded
      // route segments. The answer is Smart Proxy's own.
      for (const target of ['/smart_proxy/app/-/a/%252e%252e/b', '/smart_proxy/app/-/a/..;x/b', '/smart_proxy/app/-/a/.;x', '/smart_proxy/app/-/a/%c0%ae%c0%ae/b',
        '/smart_proxy/app/-/a/%ef%bc%8e%ef%bc%8e/b', '/smart_proxy/app/-/a/%2E%2e/b', '/smart_proxy/app/-/a%5cb', '/smart_proxy/app/-/a%1fb', '/smart_proxy/app/-/caf%C3%A9',
        '/smart_proxy/%61pp/-/x', '/smart_proxy/app/%2d/x', '/smart_proxy/app/-/x?a#b', '/smart_proxy/app/-%41/x', '/smart_proxy/app/-%2fx', '/smart_proxy/app/-//x', '/smart_proxy/app/-/..?x']) {
        const before = dataPlaneRequests;
        const viaNginx = await get(nginxPort, target, bearer(ALICE));
        assert.equal(dataPlaneRequests, before + 1, `${target} did not go via Smart Proxy (${viaNginx.status})`);
        const direct = await get(dataPort, target, bearer(ALICE));
        assert.equal(viaNginx.status, direct.status, target);
        if (direct.status === 200) assert.equal((JSON.parse(viaNginx.body) as Echo).url, (JSON.parse(direct.body) as Echo).url, target);
      }
    });

    void it('joins an endpoint path with the forwarded path as the data plane does', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/based/-/wake', bearer(ALICE))).status, 200);
      const dataPort = Number(new URL(app.proxyUrl).port);
      for (const [target, expected] of [['/smart_proxy/based/-', '/base'], ['/smart_proxy/based/-/', '/base'], ['/smart_proxy/based/-?q=1', '/base?q=1'], ['/smart_proxy/based/-/x/y/?z=2', '/base/x/y/?z=2']] as const) {
        const before = dataPlaneRequests;
        const viaNginx = await get(nginxPort, target, bearer(ALICE));
        assert.equal(viaNginx.status, 200, `${target}: ${viaNginx.body}`);
        assert.equal(dataPlaneRequests, before, `${target} went via Smart Proxy`);
        assert.equal((JSON.parse(viaNginx.body) as Echo).url, expected, target);
        assert.equal((JSON.parse((await get(dataPort, target, bearer(ALICE))).body) as Echo).url, expected, `${target} through Smart Proxy alone`);
      }
    });

    void it('serves a public resource to anonymous callers directly once warm', async () => {
      const cold = await get(nginxPort, '/smart_proxy/pub/-/wake');
      assert.equal(cold.status, 200, cold.body);
      const before = { data: dataPlaneRequests, direct: app.front!.decisions.counts.direct };
      const started = Date.now();
      for (let i = 0; i < 10; i++) {
        const r = await get(nginxPort, `/smart_proxy/pub/-/anon/${i}`);
        assert.equal(r.status, 200, r.body);
        assert.equal((JSON.parse(r.body) as Echo).headers['x-forwarded-user'], undefined);
      }
      const elapsedS = (Date.now() - started) / 1000;
      assert.equal(dataPlaneRequests - before.data, 0, 'no anonymous request reached the data plane');
      const asked = app.front!.decisions.counts.direct - before.direct;
      assert.ok(asked >= 1 && asked <= Math.ceil(elapsedS) + 1, `${asked} decisions for 10 requests in ${elapsedS} s`);
    });

    void it('makes one decision call for concurrent first requests of a route and credential', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      // A route nobody asked for yet (the URL's groups are part of it): a fresh key.
      const route = `/smart_proxy/app/staff`;
      const before = { direct: app.front!.decisions.counts.direct, via: app.front!.decisions.counts.viaProxy, data: dataPlaneRequests };
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(nginxPort, `${route}/burst/${i}`, bearer(ALICE))));
      assert.deepEqual([...new Set(answers.map((a) => a.status))], [200]);
      assert.equal(app.front!.decisions.counts.direct - before.direct, 1, 'one decision for 20 concurrent requests');
      assert.equal(app.front!.decisions.counts.viaProxy - before.via, 0);
      assert.equal(dataPlaneRequests - before.data, 0);
    });

    void it('stops serving a revoked credential within the grant TTL', async () => {
      const token = await signJwt(['staff']);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/jwt', bearer(token))).status, 200);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/jwt', bearer(token))).status, 200);
      // The identity provider drops the signing key: the token is revoked.
      jwksBody = JSON.stringify({ keys: [{ ...(JSON.parse(jwksBody) as { keys: Array<Record<string, unknown>> }).keys[0], kid: 'other' }] });
      const revokedAt = Date.now();
      let status = 200;
      let served = 0;
      while (status === 200) {
        status = (await get(nginxPort, '/smart_proxy/app/-/jwt', bearer(token))).status;
        if (status === 200) served++;
        assert.ok(Date.now() - revokedAt < 5_000, 'still served 5 s after revocation');
      }
      const tookMs = Date.now() - revokedAt;
      assert.equal(status, 401);
      // nginx keeps whole seconds: the 1 s grant ends at most 2 s after it was made.
      assert.ok(tookMs <= 3_000, `revoked after ${tookMs} ms (${served} served meanwhile)`);
    });

    void it('never idle-stops a resource while nginx streams a long response, and stops it after', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/idle/-/x', bearer(ALICE))).status, 200);
      const [inst] = app.manager.instancesOf('idle');
      assert.equal(inst?.status, 'ready');
      // A long response through nginx only: Smart Proxy sees no request of it.
      const dataBefore = dataPlaneRequests;
      const slowStarted = Date.now();
      const slow = new Promise<Answer>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: nginxPort, path: '/smart_proxy/idle/-/slow', headers: bearer(ALICE) }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => { body += d; });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        });
        req.on('error', reject);
        req.end();
      });
      while (openSlow.size === 0) await new Promise((r) => setImmediate(r));
      // Busy checks keep it: wait for them (events) until well past idleStopMs + the grant.
      const busy = app.front!.busy;
      let busyAnswers = 0;
      // A stop while the response is open ends the wait at once (and fails the test).
      let offEarly: () => void = () => undefined;
      const stoppedEarly = new Promise<'stopped'>((resolve) => {
        offEarly = app.manager.onEvent((e) => {
          if (e.type === 'instance-changed' && e.instance === inst && e.instance.status !== 'ready') resolve('stopped');
        });
      });
      try {
        while (Date.now() - slowStarted < 1_500 + 1_000 + 1_000) {
          const next = await Promise.race([once(busy.events, 'check') as Promise<[string, string]>, stoppedEarly]);
          assert.notEqual(next, 'stopped', 'stopped while nginx was streaming');
          if (next[1] === 'busy') busyAnswers++;
        }
      } finally {
        offEarly();
      }
      assert.equal(inst?.status, 'ready');
      assert.ok(busyAnswers >= 2, `${busyAnswers} busy answers`);
      assert.equal(slowMimic.calls.stop, 0);
      assert.equal(dataPlaneRequests, dataBefore, 'the long response went through nginx only');
      // The response ends: now it is idle, and stopped.
      const stopped = new Promise<void>((resolve) => {
        const off = app.manager.onEvent((e) => {
          if (e.type === 'instance-changed' && e.instance === inst && e.instance.status === 'stopped') { off(); resolve(); }
        });
      });
      for (const end of openSlow) end();
      openSlow.clear();
      assert.equal((await slow).status, 200);
      await stopped;
      assert.equal(slowMimic.calls.stop, 1);
      // The next request through nginx wakes it again.
      const again = await get(nginxPort, '/smart_proxy/idle/-/again', bearer(ALICE));
      assert.equal(again.status, 200, again.body);
      assert.equal(slowMimic.calls.start, 2);
    });

    void it('a backend that dies is woken again by the next request, with no 502 to the client', async () => {
      const ok = await get(nginxPort, '/smart_proxy/app/-/before', bearer(ALICE));
      assert.equal(ok.status, 200);
      const startsBefore = mimic.calls.start;
      const [inst] = app.manager.instancesOf('app');
      await mimic.crash(inst!.key);
      // nginx still holds the grant naming the dead backend: refused → via Smart Proxy.
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) statuses.push((await get(nginxPort, `/smart_proxy/app/-/after/${i}`, bearer(ALICE))).status);
      assert.deepEqual([...new Set(statuses)], [200], nginx.output());
      assert.equal(mimic.calls.start, startsBefore + 1, 'woken once');
      // A POST to a backend that refuses (gone) is safe to send again: nothing was sent.
      const [again] = app.manager.instancesOf('app');
      await mimic.crash(again!.key);
      const post = await send(nginxPort, '/smart_proxy/app/-/upload', 'POST', 'payload-1', bearer(ALICE));
      assert.equal(post.status, 200, post.body);
      assert.equal((JSON.parse(post.body) as Echo).body, 'payload-1');
    });

    void it('never sends a POST twice when the backend dropped it after receiving it', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      const before = resets;
      const post = await send(nginxPort, '/smart_proxy/app/-/reset', 'POST', 'once', bearer(ALICE));
      assert.equal(post.status, 502);
      assert.equal(resets - before, 1, 'the backend saw it once');
    });

    if (cache !== 'lua') return;

    void it('keeps a decision for every method, not only those proxy_cache can cache', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      const before = { data: dataPlaneRequests, direct: app.front!.decisions.counts.direct };
      const started = Date.now();
      for (const method of ['PUT', 'DELETE', 'PATCH', 'POST', 'OPTIONS', 'PUT', 'DELETE', 'PATCH']) {
        const r = await send(nginxPort, `/smart_proxy/app/-/m/${method}`, method, 'x', bearer(ALICE));
        assert.equal(r.status, 200, `${method}: ${r.body}`);
        assert.equal((JSON.parse(r.body) as Echo).method, method);
      }
      const elapsedS = (Date.now() - started) / 1000;
      assert.equal(dataPlaneRequests - before.data, 0, 'no request reached the data plane');
      const asked = app.front!.decisions.counts.direct - before.direct;
      assert.ok(asked <= Math.ceil(elapsedS) + 1, `${asked} decisions for 8 requests in ${elapsedS} s`);
    });

    void it('drops the decision of a backend that failed, so the next request is decided afresh', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      const [inst] = app.manager.instancesOf('app');
      await mimic.crash(inst!.key);
      const errorLog = join(nginx.dir, 'error.log');
      const drops = (): number => readFileSync(errorLog, 'utf8').split('decision dropped').length - 1;
      // Requests sent via Smart Proxy before any forward (refused after a decision, unsafe
      // paths, WebSockets, unknown resources) drop nothing.
      const dropsBefore = drops();
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/x', bearer(EVE))).status, 404);
      assert.equal((await get(nginxPort, '/smart_proxy/nope/-/x', bearer(ALICE))).status, 404);
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/a/../b', bearer(ALICE))).status, 400);
      assert.equal(drops(), dropsBefore);
      const data0 = dataPlaneRequests;
      const first = await get(nginxPort, '/smart_proxy/app/-/after-crash', bearer(ALICE));
      assert.equal(first.status, 200, first.body);
      assert.equal(dataPlaneRequests - data0, 1, 'the failed direct forward went via Smart Proxy');
      assert.equal(drops(), dropsBefore + 1, 'nginx dropped the decision');
      // Decided afresh (not the dropped allow, which names the dead address): one decision call,
      // and the request goes directly to the backend Smart Proxy woke.
      const data1 = dataPlaneRequests;
      const direct0 = app.front!.decisions.counts.direct;
      const next = await get(nginxPort, '/smart_proxy/app/-/next', bearer(ALICE));
      assert.equal(next.status, 200, next.body);
      assert.equal(dataPlaneRequests, data1, 'the next request went directly');
      assert.equal(app.front!.decisions.counts.direct - direct0, 1, 'one fresh decision');
    });

    void it('drops the decision of a failed backend in every worker, not only in the one whose forward failed', async () => {
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      // Two workers, each with its own copy of the decision. Grants that outlive the test (so
      // no copy ends on its own), and the drop mark read on every request rather than every
      // DROP_CHECK_S: the second worker's next request must see the drop.
      const [port, control] = [await freePort(), await freePort()];
      const longGrants = { ...config, front: { ...config.front, grantTtlMs: 60_000 } };
      const conf = (dir: string): string => {
        const generated = generateNginxConfig(longGrants, { cache }).replace('@DIR@', dir);
        const marked = generated.replace(`local DROP_CHECK_S = ${DROP_CHECK_S}\n`, 'local DROP_CHECK_S = 0\n');
        assert.notEqual(marked, generated, 'the generated Lua names DROP_CHECK_S');
        // The worker that answered, in every answer; reuseport spreads connections over both.
        return `add_header X-Test-Worker $pid always;\n${marked
          .replace(`listen ${config.front.nginx.listen};`, `listen 127.0.0.1:${port} reuseport;`)
          .replace(`listen ${config.front.nginx.controlListen};`, `listen 127.0.0.1:${control};`)}`;
      };
      const two = await startNginx(conf, port, NGINX_LUA_MODULES, 2);
      const agents: Agent[] = [];
      try {
        // One kept-alive connection per agent: each is served by one worker for its life.
        const on = (agent: Agent, path: string): Promise<Answer> => get(port, path, bearer(ALICE), agent);
        const byWorker = new Map<string, Agent>();
        // Each connection lands on either worker: 64 all on one happens with odds of 2^-63.
        for (let i = 0; i < 64 && byWorker.size < 2; i++) {
          const agent = new Agent({ keepAlive: true, maxSockets: 1 });
          agents.push(agent);
          const r = await on(agent, `/smart_proxy/app/-/spread/${i}`);
          assert.equal(r.status, 200, r.body + two.output());
          const worker = String(r.headers['x-test-worker']);
          if (!byWorker.has(worker)) byWorker.set(worker, agent);
        }
        assert.equal(byWorker.size, 2, 'connections reached both workers');
        const [[pidA, a], [pidB, b]] = [...byWorker] as [[string, Agent], [string, Agent]];
        // Both workers hold a copy: each answers directly.
        const data0 = dataPlaneRequests;
        for (const [pid, agent] of [[pidA, a], [pidB, b]] as const) {
          const r = await on(agent, '/smart_proxy/app/-/copy');
          assert.equal(r.headers['x-test-worker'], pid);
          assert.equal(r.status, 200);
        }
        assert.equal(dataPlaneRequests, data0, 'both answered from their copies');
        const [inst] = app.manager.instancesOf('app');
        await mimic.crash(inst!.key);
        // A's forward fails: via Smart Proxy, which wakes the backend again; A drops the decision.
        const failed = await on(a, '/smart_proxy/app/-/a-fails');
        assert.equal(failed.headers['x-test-worker'], pidA);
        assert.equal(failed.status, 200, failed.body);
        assert.equal(dataPlaneRequests - data0, 1, 'the failed forward went via Smart Proxy');
        // B never saw the failure, yet decides afresh and goes directly to the new backend.
        const data1 = dataPlaneRequests;
        const direct0 = app.front!.decisions.counts.direct;
        const next = await on(b, '/smart_proxy/app/-/b-next');
        assert.equal(next.headers['x-test-worker'], pidB);
        assert.equal(next.status, 200, next.body);
        assert.equal(dataPlaneRequests, data1, "B did not try the dropped decision's dead backend");
        assert.equal(app.front!.decisions.counts.direct - direct0, 1, 'B asked for a fresh decision');
      } finally {
        for (const agent of agents) agent.destroy();
        await two.close();
      }
      // The suite's own nginx may still hold the dead backend's decision: its next request
      // drops it (answered via Smart Proxy), so the tests after this one see direct forwards.
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/settle', bearer(ALICE))).status, 200);
    });

    void it('keeps connections to a backend whose address is known only at run time', async () => {
      // The mimic backends listen on ports of their own choosing: Smart Proxy grants their
      // plain address, which nginx reaches through the dynamic upstream.
      assert.equal((await get(nginxPort, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
      const data0 = dataPlaneRequests;
      const ports: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await get(nginxPort, `/smart_proxy/app/-/kept/${i}`, bearer(ALICE));
        assert.equal(r.status, 200, r.body);
        ports.push((JSON.parse(r.body) as Echo & { remotePort: number }).remotePort);
      }
      assert.equal(dataPlaneRequests, data0, 'served directly');
      assert.deepEqual(new Set(ports).size, 1, `one connection for three requests (${ports.join(', ')})`);
    });

    void it('gives the backend exactly what the plain variant (proxy_cache) gives it', async () => {
      const [plainPort, plainControl] = [await freePort(), await freePort()];
      const plainConf = (dir: string): string => generateNginxConfig(config).replace('@DIR@', dir)
        .replace(`listen ${config.front.nginx.listen};`, `listen 127.0.0.1:${plainPort};`)
        .replace(`listen ${config.front.nginx.controlListen};`, `listen 127.0.0.1:${plainControl};`);
      const plain = await startNginx(plainConf, plainPort);
      try {
        const spoof = { 'x-forwarded-user': 'root', 'x-forwarded-groups': 'admin', 'x_forwarded_user': 'root2', 'x-forwarded-for': '6.6.6.6', forwarded: 'for=6.6.6.6' };
        // Warm: the public resource may not be running yet (then the first answer comes via Smart Proxy).
        assert.equal((await get(nginxPort, '/smart_proxy/pub/-/warm')).status, 200);
        assert.equal((await get(nginxPort, '/smart_proxy/creds/-/warm', bearer(ALICE))).status, 200);
        for (const [path, headers] of [['/smart_proxy/app/-/id?a=1', bearer(ALICE)], ['/smart_proxy/app/-/id', { ...bearer(ALICE), ...spoof }], ['/smart_proxy/based/-/x/y', bearer(ALICE)], ['/smart_proxy/app/-', bearer(ALICE)], ['/smart_proxy/pub/-/anon', spoof], ['/smart_proxy/creds/-/x?y=1', bearer(ALICE)]] as const) {
          const viaLua = await get(nginxPort, path, headers);
          const viaPlain = await get(plainPort, path, headers);
          assert.equal(viaLua.status, 200, viaLua.body);
          assert.equal(viaPlain.status, 200, viaPlain.body + plain.output());
          const [l, p] = [JSON.parse(viaLua.body) as Echo, JSON.parse(viaPlain.body) as Echo];
          assert.equal(l.url, p.url, path);
          // X-Forwarded-Host is the Host the client sent: the two nginx listen on different ports.
          const omit = (h: Echo['headers']): Echo['headers'] => Object.fromEntries(Object.entries(h).filter(([k]) => k !== 'x-forwarded-host'));
          assert.deepEqual(omit(l.headers), omit(p.headers), path);
          assert.equal(l.headers['x-forwarded-host'], `127.0.0.1:${nginxPort}`);
          // An anonymous caller: no identity lines in the grant's header block, spoofed ones dropped.
          if (path.startsWith('/smart_proxy/pub/')) assert.equal(l.headers['x-forwarded-user'], undefined);
          // The client's credential only where the resource passes it on (passCredentials).
          assert.equal(l.headers.authorization, path.startsWith('/smart_proxy/creds/') ? bearer(ALICE).authorization : undefined, path);
          assert.equal(l.headers['x-forwarded-prefix'], /^\/smart_proxy\/[^/]+\/-/.exec(path)?.[0], path);
        }
      } finally {
        await plain.close();
      }
    });
  
    void it('logged no Lua error while serving this suite', () => {
      const errors = readFileSync(join(nginx.dir, 'error.log'), 'utf8').split('\n').filter((l) => /\[error\].*lua/.test(l));
      assert.deepEqual(errors, []);
    });

    void it('a Lua error sends the request to Smart Proxy, which answers it, and is logged', async () => {
      const [port, control] = [await freePort(), await freePort()];
      // Without its shared dicts the decision's Lua fails on every miss.
      const broken = (dir: string): string => generateNginxConfig(config, { cache }).replace('@DIR@', dir)
        .replace(/^lua_shared_dict .*$/gm, '')
        .replace(`listen ${config.front.nginx.listen};`, `listen 127.0.0.1:${port};`)
        .replace(`listen ${config.front.nginx.controlListen};`, `listen 127.0.0.1:${control};`);
      const other = await startNginx(broken, port, NGINX_LUA_MODULES);
      try {
        for (let i = 0; i < 2; i++) {
          const before = dataPlaneRequests;
          const r = await get(port, `/smart_proxy/app/-/lua-error/${i}`, bearer(ALICE));
          assert.equal(r.status, 200, r.body);
          assert.equal((JSON.parse(r.body) as Echo).url, `/lua-error/${i}`);
          assert.equal(dataPlaneRequests - before, 1, 'answered by the data plane');
        }
        assert.match(readFileSync(join(other.dir, 'error.log'), 'utf8'), /\[error\] .*lua entry thread aborted: runtime error: access_by_lua/);
      } finally {
        await other.close();
      }
    });
  });
}
