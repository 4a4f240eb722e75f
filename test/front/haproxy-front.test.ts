/**
 * Front-proxy mode with HAProxy (the second front proxy): the generated config and Lua
 * helper in a real HAProxy in front of a real Smart Proxy. Cold wake, warm traffic that does
 * not reach Smart Proxy, access refused as Smart Proxy refuses it, identity headers, a backend
 * that dies (sent to Smart Proxy, unchanged, by the second hop), and the busy check of an open
 * request.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { generateHaproxyConfig, HAPROXY_LUA } from '../../src/front/haproxy-config.ts';
import { startApp, type App } from '../../src/main.ts';
import type { Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
import { freePort, startHaproxy, type FrontProcess, bearer, echo, get, send, sha, type Answer } from './front-kit.ts';

const ALICE = 'alice-token-0123456789abcdef';
const EVE = 'eve-token-0123456789abcdef';





void describe('front-proxy mode: HAProxy in front (generated config and Lua helper)', { skip: !existsSync('/usr/sbin/haproxy') && 'haproxy is not installed (scripts/install-system-deps.sh)' }, () => {
  let app: App;
  let haproxy: FrontProcess;
  let port: number;
  let dataPlaneRequests = 0;
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
  const logs: Harness['logs'] = [];

  before(async () => {
    const [listen, decision, control] = [await freePort(), await freePort(), await freePort()];
    port = await freePort();
    const config = parseConfig(`
listen: { host: 127.0.0.1, port: ${listen} }
state: { kind: memory }
identities:
  - kind: token
    tokens:
      - { user: alice, groups: [staff], hash: "${sha(ALICE)}" }
      - { user: eve, groups: [guests], hash: "${sha(EVE)}" }
providers:
  m: { kind: static, endpoint: "http://127.0.0.1:9" }
resources:
  app: { provider: m, access: { anyOf: [staff] }, idleStopMs: 600000, bootTimeoutMs: 10000 }
  corspub: { provider: m, access: { public: true }, cors: { allowedOrigins: ["https://app.example"] }, idleStopMs: 600000, bootTimeoutMs: 10000 }
front:
  enabled: true
  decision: { host: 127.0.0.1, port: ${decision} }
  grantTtlMs: 5000
  nginx: { controlListen: "127.0.0.1:${control}" }
  haproxy: { listen: "127.0.0.1:${port}" }
`);
    app = await startApp(config, { logger: collectingLogger(logs), providers: new Map([['m', mimic]]) });
    app.proxy.server.on('request', () => { dataPlaneRequests++; });
    haproxy = await startHaproxy((dir) => generateHaproxyConfig(config, { luaPath: `${dir}/smart-proxy.lua` }), HAPROXY_LUA, port);
  });

  after(async () => {
    await haproxy?.close();
    await app?.close();
    await mimic.close();
  });

  void it('wakes a cold resource, then serves it warm without asking Smart Proxy', async () => {
    const cold = await get(port, '/smart_proxy/app/-/hello?x=1', bearer(ALICE));
    assert.equal(cold.status, 200, cold.body + haproxy.output());
    assert.equal((JSON.parse(cold.body) as Echo).url, '/hello?x=1');
    assert.equal(mimic.calls.start, 1);
    const before = { data: dataPlaneRequests, decisions: app.front!.decisions.counts.direct };
    const warm: Answer[] = [];
    for (let i = 0; i < 50; i++) warm.push(await get(port, `/smart_proxy/app/-/w/${i}`, bearer(ALICE)));
    assert.deepEqual([...new Set(warm.map((w) => w.status))], [200], JSON.stringify(warm[0]) + haproxy.output());
    assert.equal(dataPlaneRequests - before.data, 0, 'no warm request reached the data plane');
    assert.ok(app.front!.decisions.counts.direct - before.decisions <= 2, 'one decision per grant');
    const echo = JSON.parse(warm[7]!.body) as Echo;
    assert.equal(echo.url, '/w/7');
  });

  void it('sends CORS preflights to the data plane, whose cors policy answers them, also on a warm granted route', async () => {
    assert.equal((await get(port, '/smart_proxy/corspub/-/x')).status, 200);
    assert.equal((await get(port, '/smart_proxy/corspub/-/x')).status, 200);
    const before = dataPlaneRequests;
    const pre = await send(port, '/smart_proxy/corspub/-/x', 'OPTIONS', '', { origin: 'https://app.example', 'access-control-request-method': 'PUT' });
    assert.equal(pre.status, 204, pre.body);
    assert.equal(pre.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(dataPlaneRequests - before, 1, 'answered by the data plane, not the backend');
  });

  void it('sends a cross-origin request to a resource with a cors policy via the data plane (the policy\'s fields, not the backend\'s); others stay direct', async () => {
    assert.equal((await get(port, '/smart_proxy/corspub/-/x')).status, 200);
    assert.equal((await get(port, '/smart_proxy/corspub/-/x')).status, 200);
    assert.equal((await get(port, '/smart_proxy/app/-/x', bearer(ALICE))).status, 200);
    assert.equal((await get(port, '/smart_proxy/app/-/x', bearer(ALICE))).status, 200);
    const origin = { origin: 'https://app.example', 'x-echo-cors': '1' };
    let before = dataPlaneRequests;
    const cross = await get(port, '/smart_proxy/corspub/-/x', origin);
    assert.equal(cross.status, 200, cross.body);
    assert.equal(cross.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(cross.headers['access-control-expose-headers'], undefined, 'the backend\'s own field is dropped');
    assert.match(String(cross.headers.vary), /origin/i);
    assert.equal(dataPlaneRequests - before, 1, 'answered through the data plane');
    // Without an Origin, and with one to a resource that has no policy: the direct path.
    before = dataPlaneRequests;
    const plain = await get(port, '/smart_proxy/corspub/-/x', { 'x-echo-cors': '1' });
    assert.equal(plain.status, 200);
    const other = await get(port, '/smart_proxy/app/-/x', { ...origin, ...bearer(ALICE) });
    assert.equal(other.status, 200);
    assert.equal(other.headers['access-control-allow-origin'], '*', 'a resource without a policy: the backend\'s fields');
    assert.equal(dataPlaneRequests - before, 0, 'neither reached the data plane');
  });

  void it('sets the identity headers Smart Proxy sets, and strips spoofed ones', async () => {
    const spoof = { 'x-forwarded-user': 'root', 'x_forwarded_user': 'root2', 'x-forwarded-groups': 'admin' };
    const viaHaproxy = JSON.parse((await get(port, '/smart_proxy/app/-/id', { ...bearer(ALICE), ...spoof })).body) as Echo;
    const direct = JSON.parse((await get(Number(new URL(app.proxyUrl).port), '/smart_proxy/app/-/id', { ...bearer(ALICE), ...spoof })).body) as Echo;
    for (const h of ['x-forwarded-user', 'x-forwarded-groups', 'x-forwarded-prefix', 'authorization', 'x_forwarded_user']) {
      assert.equal(viaHaproxy.headers[h], direct.headers[h], h);
    }
    assert.equal(viaHaproxy.headers['x-forwarded-user'], 'alice');
    // Set by the outer hop, which sees the client's connection.
    assert.equal(viaHaproxy.headers['x-forwarded-proto'], 'http');
    assert.equal(viaHaproxy.headers['x-forwarded-proto'], direct.headers['x-forwarded-proto']);
  });

  void it('refuses as Smart Proxy refuses', async () => {
    const anonymous = await get(port, '/smart_proxy/app/-/x');
    assert.equal(anonymous.status, 401, anonymous.body + haproxy.output());
    assert.match(String(anonymous.headers['www-authenticate']), /Bearer/);
    const eve = await get(port, '/smart_proxy/app/-/x', bearer(EVE));
    const eveDirect = await get(Number(new URL(app.proxyUrl).port), '/smart_proxy/app/-/x', bearer(EVE));
    assert.equal(eve.status, eveDirect.status);
    assert.equal((await get(port, '/smart_proxy/app/-/a/../b', bearer(ALICE))).status, 400);
    // A warm resource's TRACE would echo the identity headers: it goes to the data plane, which
    // refuses it (nginx refuses TRACE by itself).
    const before = dataPlaneRequests;
    const trace = await send(port, '/smart_proxy/app/-/x', 'TRACE', '', bearer(ALICE));
    assert.equal(trace.status, 405, trace.body + haproxy.output());
    assert.equal((JSON.parse(trace.body) as { code: string }).code, 'SP_ROUTE_METHOD_NOT_FORWARDED');
    assert.equal(dataPlaneRequests, before + 1);
  });

  void it('a backend that dies is woken again by the next request: idempotent requests see no error', async () => {
    assert.equal((await get(port, '/smart_proxy/app/-/before', bearer(ALICE))).status, 200);
    const startsBefore = mimic.calls.start;
    const [inst] = app.manager.instancesOf('app');
    await mimic.crash(inst!.key);
    // HAProxy still holds the grant naming the dead backend: refused → sent, unchanged, to Smart Proxy.
    const dataBefore = dataPlaneRequests;
    const after: Answer[] = [];
    for (let i = 0; i < 5; i++) after.push(await get(port, `/smart_proxy/app/-/after/${i}?q=${i}`, bearer(ALICE)));
    assert.deepEqual([...new Set(after.map((a) => a.status))], [200], JSON.stringify(after[0]) + haproxy.output());
    assert.ok(dataPlaneRequests > dataBefore, 'the data plane saw the retried request');
    assert.equal(mimic.calls.start, startsBefore + 1, 'woken once');
    assert.equal((JSON.parse(after[3]!.body) as Echo).url, '/after/3?q=3');
    assert.equal((JSON.parse(after[3]!.body) as Echo).headers['x-forwarded-user'], 'alice');
    // A POST is not sent again: HAProxy cannot tell a refused connection from a dropped one.
    // It gets HAProxy's 502 until the grant ends; the next decision finds the backend gone (it
    // checks before granting), so the request goes via Smart Proxy, which wakes it.
    const [again] = app.manager.instancesOf('app');
    await mimic.crash(again!.key);
    const startsBeforePost = mimic.calls.start;
    const crashedAt = Date.now();
    let post = await send(port, '/smart_proxy/app/-/upload', 'POST', 'payload-1', bearer(ALICE));
    assert.equal(post.status, 502, post.body);
    while (post.status === 502) {
      assert.ok(Date.now() - crashedAt < 5_000 + 2_000, 'POSTs still fail past the grant (5 s)');
      await new Promise((r) => setImmediate(r));
      post = await send(port, '/smart_proxy/app/-/upload', 'POST', 'payload-2', bearer(ALICE));
    }
    assert.equal(post.status, 200, post.body);
    assert.equal((JSON.parse(post.body) as Echo).body, 'payload-2');
    assert.equal(mimic.calls.start, startsBeforePost + 1, 'woken once');
    // Until the grant naming the dead backend ends, requests go the long way round; then
    // HAProxy serves the new backend directly again (each request is the next look).
    const until = Date.now() + 10_000;
    for (;;) {
      const before = dataPlaneRequests;
      assert.equal((await get(port, '/smart_proxy/app/-/direct-again', bearer(ALICE))).status, 200);
      if (dataPlaneRequests === before) break;
      assert.ok(Date.now() < until, 'not served directly again within 10 s (grant TTL 5 s)');
      await new Promise((r) => setImmediate(r));
    }
  });

  void it('never sends a POST twice when the backend dropped it after receiving it', async () => {
    assert.equal((await get(port, '/smart_proxy/app/-/warm', bearer(ALICE))).status, 200);
    const before = resets;
    const dataBefore = dataPlaneRequests;
    const post = await send(port, '/smart_proxy/app/-/reset', 'POST', 'once', bearer(ALICE));
    assert.equal(post.status, 502);
    assert.equal(resets - before, 1, 'the backend saw it once');
    assert.equal(dataPlaneRequests, dataBefore, 'not sent to Smart Proxy either');
  });

  void it('answers busy checks from its open-request count', async () => {
    assert.equal(await app.front!.busy.check('app'), 'idle');
    // A held-open request: the backend answers only when told.
    const [inst] = app.manager.instancesOf('app');
    assert.ok(inst !== undefined);
    const open = request({ host: '127.0.0.1', port, path: '/smart_proxy/app/-/upload', method: 'POST', headers: { ...bearer(ALICE), 'content-length': '10' } });
    open.on('error', () => undefined);
    open.write('12345');
    // The request reaches HAProxy's stick table as its headers arrive: ask until it shows.
    let answer = await app.front!.busy.check('app');
    for (let i = 0; i < 200 && answer !== 'busy'; i++) answer = await app.front!.busy.check('app');
    assert.equal(answer, 'busy');
    open.destroy();
    for (let i = 0; i < 200 && answer !== 'idle'; i++) answer = await app.front!.busy.check('app');
    assert.equal(answer, 'idle');
  });
});
