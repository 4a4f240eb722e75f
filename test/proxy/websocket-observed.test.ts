/**
 * WebSocket upgrades as operators see them: one access log line and one request in the
 * metrics per upgrade (101 or the refusal's status, the tunnel's lifetime, bytes both ways),
 * and a sign-in session renewed by an upgrade as by any request (sliding expiry).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { systemClock } from '../../src/core/clock.ts';
import type { Clock } from '../../src/core/ports.ts';
import { freePort, go, signIn, startIssuer, startOidcApp } from '../access/oidc-helpers.ts';
import { startEchoServer, type EchoServer } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { parseScrape } from '../helpers/prometheus.ts';
import { startTestApp, testConfig } from '../metrics/metrics-app.ts';

/** Resolves with `check()`'s first defined answer, asking again on each turn of the event loop (bounded). */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** The echo server with a WebSocket echo on the same port. */
async function wsBackend(key: string): Promise<EchoServer> {
  const echo = await startEchoServer({ name: key });
  const wss = new WebSocketServer({ server: echo.server });
  wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
  return echo;
}

interface Opened {
  readonly ws: WebSocket;
  readonly upgrade: IncomingMessage;
}

/** Opens a WebSocket; resolves with its handshake answer, or rejects with the refusal's status. */
function open(url: string, headers: Record<string, string> = {}): Promise<Opened> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  return new Promise((resolve, reject) => {
    let upgrade: IncomingMessage | undefined;
    ws.once('upgrade', (res) => { upgrade = res; });
    ws.once('open', () => resolve({ ws, upgrade: upgrade as IncomingMessage }));
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      reject(Object.assign(new Error(`status ${res.statusCode ?? 0}`), { status: res.statusCode }));
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

/** Echoes `count` messages of `size` bytes, then closes; resolves when closed. */
async function exchange(ws: WebSocket, count: number, size: number): Promise<void> {
  const payload = 'x'.repeat(size);
  for (let i = 0; i < count; i++) {
    const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve((d as Buffer).toString())));
    ws.send(payload);
    assert.equal(await echoed, payload);
  }
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  ws.close(1000);
  await closed;
}

describe('WebSocket upgrades in the access log and the metrics', () => {
  it('counts and logs each upgrade with its status, the tunnel lifetime and the bytes both ways', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sp-wslog-'));
    const path = join(dir, 'access.log');
    const p = new MimicProvider({ backend: wsBackend });
    const t = await startTestApp(testConfig({
      accessLog: { enabled: true, format: 'json', path },
      resources: { app: { provider: 'p', websocket: { allowedOrigins: ['https://ok.example'] } } },
    }, ['p']), { p });
    const timing = { tunnelMs: 0 };
    try {
      const metrics = t.app.metrics;
      assert.ok(metrics !== undefined);
      const base = `${t.app.proxyUrl.replace(/^http/, 'ws')}/smart_proxy`;
      // Cold: held through the boot, then 10 messages of 1,000 bytes each way.
      const cold = await open(`${base}/app/-/ws`);
      assert.equal(cold.upgrade.statusCode, 101);
      const t0 = performance.now();
      await exchange(cold.ws, 10, 1000);
      timing.tunnelMs = performance.now() - t0;
      // Warm: forwarded at once.
      const warm = await open(`${base}/app/-/ws?w=1`);
      await exchange(warm.ws, 1, 10);
      // Refused: an Origin outside the allow-list (403), an unknown resource (404).
      await assert.rejects(open(`${base}/app/-/ws`, { origin: 'https://evil.example' }), { status: 403 });
      await assert.rejects(open(`${base}/nope/-/ws`), { status: 404 });

      // Each upgrade is counted when its connection has closed (the server side may close last).
      const seen = await eventually('4 upgrades counted', async () => {
        const s = parseScrape((await metrics.render()).body);
        const v = {
          one: s.value('smart_proxy_requests_total', { resource: 'app', status_class: '1xx' }) ?? 0,
          four: s.value('smart_proxy_requests_total', { resource: 'app', status_class: '4xx' }) ?? 0,
          unrouted: s.value('smart_proxy_requests_total', { resource: '_unrouted', status_class: '4xx' }) ?? 0,
          warm: s.value('smart_proxy_warm_forward_duration_seconds_count', { resource: 'app' }) ?? 0,
        };
        return v.one + v.four + v.unrouted >= 4 ? v : undefined;
      });
      assert.deepEqual(seen, { one: 2, four: 1, unrouted: 1, warm: 1 }, 'only the warm upgrade is a warm forward (time to its 101)');
    } finally {
      await t.close();
    }
    try {
      const lines = (await readFile(path, 'utf8')).trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(lines.length, 4);
      const byUrl = (url: string, status: number): Record<string, unknown> => {
        const l = lines.find((x) => x.url === url && x.status === status);
        assert.ok(l !== undefined, `a line for ${url} ${status}: ${JSON.stringify(lines)}`);
        return l;
      };
      const cold = byUrl('/smart_proxy/app/-/ws', 101);
      assert.equal(cold.upgrade, 'websocket');
      assert.equal(cold.resource, 'app');
      assert.equal(cold.warm, false);
      assert.equal(typeof cold.wokeMs, 'number');
      // 10 masked frames of 1,000 bytes and a close frame in; 10 frames and a close frame out.
      const bytesIn = cold.bytesIn as number;
      const bytesOut = cold.bytes as number;
      assert.ok(bytesIn >= 10 * 1008 && bytesIn <= 10 * 1008 + 16, `bytes in: ${bytesIn}`);
      assert.ok(bytesOut >= 10 * 1004 && bytesOut <= 10 * 1004 + 8, `bytes out: ${bytesOut}`);
      assert.ok((cold.durationMs as number) >= Math.floor(timing.tunnelMs), `duration ${String(cold.durationMs)} covers the tunnel's ${timing.tunnelMs} ms`);
      const warm = byUrl('/smart_proxy/app/-/ws?w=1', 101);
      assert.equal(warm.warm, true);
      assert.equal(warm.wokeMs, undefined);
      const denied = byUrl('/smart_proxy/app/-/ws', 403);
      assert.equal(denied.upgrade, 'websocket');
      assert.equal(denied.resource, 'app');
      assert.equal(denied.bytesIn, 0);
      assert.ok((denied.bytes as number) > 0, 'the problem body was sent');
      const missing = byUrl('/smart_proxy/nope/-/ws', 404);
      assert.equal(missing.resource, undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('writes an upgrade in the combined format like any request', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sp-wslog-'));
    const path = join(dir, 'access.log');
    const p = new MimicProvider({ backend: wsBackend });
    const t = await startTestApp(testConfig({ accessLog: { enabled: true, format: 'combined', path }, resources: { app: { provider: 'p' } } }, ['p']), { p });
    try {
      const { ws } = await open(`${t.app.proxyUrl.replace(/^http/, 'ws')}/smart_proxy/app/-/c`, { 'user-agent': 'tester' });
      await exchange(ws, 1, 100);
      await eventually('the line is written', async () => ((await readFile(path, 'utf8')).length > 0 ? true : undefined));
    } finally {
      await t.close();
    }
    try {
      const text = await readFile(path, 'utf8');
      assert.match(text, /^127\.0\.0\.1 - - \[[^\]]+\] "GET \/smart_proxy\/app\/-\/c HTTP\/1\.1" 101 \d+ "-" "tester"\n$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** Real timers, a `now()` the test moves forward (sessions see the future). */
class OffsetClock implements Clock {
  offsetMs = 0;
  now(): number {
    return Date.now() + this.offsetMs;
  }
  setTimeout(fn: () => void, ms: number): ReturnType<Clock['setTimeout']> {
    return systemClock.setTimeout(fn, ms);
  }
}

describe('WebSocket upgrades and sign-in sessions', () => {
  it('renews a session on the 101 (sliding expiry), as any request does', async () => {
    const MIN = 60_000;
    const port = await freePort();
    const issuer = await startIssuer(port, { accessTokenTtlS: 7200, idTokenTtlS: 7200 });
    const clock = new OffsetClock();
    const proxy = await startOidcApp({
      port, issuerUrl: issuer.url, clock, provider: new MimicProvider({ bootMs: 50, backend: wsBackend }),
      sessions: { idleTimeoutMs: 30 * MIN, absoluteTimeoutMs: 240 * MIN, touchIntervalMs: MIN },
    });
    try {
      const target = '/smart_proxy/r1/g1/ws';
      const { jar } = await signIn(proxy.url, target, 'alice', 'alice-pw');
      const origin = new URL(proxy.url).origin;
      const wsUrl = `${proxy.url.replace(/^http/, 'ws')}${target}`;
      const first = jar.get(origin, 'smart_proxy_session') as string;
      const opened = await open(wsUrl, { cookie: jar.header(origin) });
      await exchange(opened.ws, 1, 10);

      clock.offsetMs = 20 * MIN;
      const renewed = await open(wsUrl, { cookie: jar.header(origin) });
      const setCookie = renewed.upgrade.headers['set-cookie'] ?? [];
      await exchange(renewed.ws, 1, 10);
      const session = setCookie.map((c) => /^smart_proxy_session=([^;]+)/.exec(c)?.[1]).find((v) => v !== undefined);
      assert.ok(session !== undefined && session !== first, `the 101 renews the session cookie: ${JSON.stringify(setCookie)}`);

      // 45 min: the first cookie (last seen at 0) has been idle too long; the renewed one lives.
      clock.offsetMs = 45 * MIN;
      await assert.rejects(open(wsUrl, { cookie: `smart_proxy_session=${first}` }), { status: 401 });
      jar.set(origin, 'smart_proxy_session', session);
      const later = await open(wsUrl, { cookie: jar.header(origin) });
      await exchange(later.ws, 1, 10);
      const page = await go(jar, `${proxy.url}/smart_proxy/r1/g1/page`, { headers: { accept: 'application/json' } });
      assert.equal(page.status, 200);
      await page.text();
    } finally {
      await proxy.close();
      await issuer.close();
    }
  });
});
