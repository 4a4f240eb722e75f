import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { effectiveResources, parseConfig } from '../../src/config/load.ts';
import { startEchoServer, type EchoServer } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';

/** What the WebSocket backend saw, for assertions on the far side of the proxy. */
interface WsBackendLog {
  received: string[];
  pings: string[];
  closes: Array<{ code: number; reason: string }>;
  headers: Array<Record<string, string | string[] | undefined>>;
}

/** A mimic backend: the echo server plus a ws echo endpoint on the same port. */
function wsBackend(log: WsBackendLog): (key: string) => Promise<EchoServer> {
  return async (key) => {
    const echo = await startEchoServer({ name: key });
    const wss = new WebSocketServer({ server: echo.server });
    wss.on('connection', (ws, req) => {
      log.headers.push(req.headers);
      ws.on('message', (data, isBinary) => {
        const text = (data as Buffer).toString();
        log.received.push(text);
        if (text === 'close-me') ws.close(4002, 'server says bye');
        else if (text === 'ping-me') ws.ping('from-server');
        else ws.send(data, { binary: isBinary });
      });
      ws.on('ping', (data) => log.pings.push(data.toString()));
      ws.on('close', (code, reason) => log.closes.push({ code, reason: reason.toString() }));
    });
    return echo;
  };
}

const newLog = (): WsBackendLog => ({ received: [], pings: [], closes: [], headers: [] });

/** Resolves once `cond()` holds, checking on every turn of the event loop. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

function wsUrl(h: Harness, rest = '/ws'): string {
  return `${h.url.replace(/^http/, 'ws')}/smart_proxy/app/g1${rest}`;
}

/** Writes a raw request and collects the answer until the proxy closes the connection. */
function raw(h: Harness, head: string): { socket: Socket; answer: Promise<string> } {
  const { port } = new URL(h.url);
  const socket = connect(Number(port), '127.0.0.1', () => socket.write(head));
  let out = '';
  socket.setEncoding('utf8');
  const answer = new Promise<string>((resolve, reject) => {
    socket.on('data', (d: string) => { out += d; });
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
  });
  return { socket, answer };
}

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const upgradeHead = (path: string, extra = ''): string =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n${extra}\r\n`;

describe('WebSocket', () => {
  it('is held through a cold start, then echoes 1,000 messages each way with pings and close codes passed through', async () => {
    const log = newLog();
    const mimic = new MimicProvider({ manual: true, backend: wsBackend(log) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const ws = new WebSocket(wsUrl(h, '/ws?room=1'));
      let opened = false;
      ws.on('open', () => { opened = true; });
      await mimic.started();
      await until(() => h.manager.heldTotal === 1);
      assert.equal(opened, false, 'no 101 before the backend is ready');
      await mimic.release('*');
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      assert.equal(mimic.calls.start, 1);
      assert.equal(log.headers[0]?.['x-forwarded-prefix'], '/smart_proxy/app/g1');
      const inst = [...h.manager.instancesOf('app')][0]!;
      assert.equal(inst.activeConnections, 1, 'an open tunnel counts as activity');

      const echoed: string[] = [];
      ws.on('message', (d) => echoed.push((d as Buffer).toString()));
      for (let i = 0; i < 1000; i++) ws.send(`msg ${i} ${'x'.repeat(i % 200)}`);
      await until(() => echoed.length === 1000);
      assert.deepEqual(log.received.slice(0, 1000), echoed, 'every message arrived, in order, both ways');
      assert.equal(echoed[999], `msg 999 ${'x'.repeat(999 % 200)}`);

      // Client ping → backend sees it (and its ws answers the pong, which comes back).
      const pong = new Promise<string>((resolve) => ws.once('pong', (d) => resolve(d.toString())));
      ws.ping('from-client');
      assert.equal(await pong, 'from-client');
      assert.deepEqual(log.pings, ['from-client']);
      // Backend ping → client sees it.
      const ping = new Promise<string>((resolve) => ws.once('ping', (d) => resolve(d.toString())));
      ws.send('ping-me');
      assert.equal(await ping, 'from-server');

      // Close code and reason from the client reach the backend, and its echo comes back.
      const closed = new Promise<[number, string]>((resolve) => ws.once('close', (code, reason) => resolve([code, reason.toString()])));
      ws.close(4001, 'client says bye');
      assert.deepEqual(await closed, [4001, 'client says bye']);
      await until(() => log.closes.length === 1);
      assert.deepEqual(log.closes[0], { code: 4001, reason: 'client says bye' });
      await until(() => inst.activeConnections === 0);
    } finally {
      await h.close();
    }
  });

  it('passes a backend-initiated close code to the client', async () => {
    const log = newLog();
    const mimic = new MimicProvider({ bootMs: 0, backend: wsBackend(log) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const ws = new WebSocket(wsUrl(h));
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      const closed = new Promise<[number, string]>((resolve) => ws.once('close', (code, reason) => resolve([code, reason.toString()])));
      ws.send('close-me');
      assert.deepEqual(await closed, [4002, 'server says bye']);
    } finally {
      await h.close();
    }
  });

  it('survives a client reset during the hold, and serves the next WebSocket', async () => {
    const log = newLog();
    const mimic = new MimicProvider({ manual: true, backend: wsBackend(log) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const { socket } = raw(h, upgradeHead('/smart_proxy/app/g1/ws'));
      socket.on('error', () => undefined);
      await until(() => h.manager.heldTotal === 1);
      socket.resetAndDestroy();
      await until(() => h.manager.heldTotal === 0);
      await mimic.release('*');
      const ws = new WebSocket(wsUrl(h));
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve((d as Buffer).toString())));
      ws.send('still here');
      assert.equal(await echoed, 'still here');
      // A reset of an open tunnel is survived too.
      const inst = [...h.manager.instancesOf('app')][0]!;
      assert.equal(inst.activeConnections, 1);
      ws.terminate();
      await until(() => inst.activeConnections === 0);
    } finally {
      await h.close();
    }
  });

  it('passes a non-101 answer back as a normal response and opens no tunnel', async () => {
    const asked: Array<{ url: string | undefined; upgrade: string | undefined }> = [];
    const mimic = new MimicProvider({
      bootMs: 0,
      backend: async (key) => {
        const echo = await startEchoServer({ name: key });
        // A backend that refuses this WebSocket with an ordinary response.
        echo.server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
          asked.push({ url: req.url, upgrade: req.headers.upgrade });
          socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nx-why: policy\r\n\r\nnot for you\n');
        });
        return echo;
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const { answer } = raw(h, upgradeHead('/smart_proxy/app/g1/not-ws?q=1'));
      const text = await answer;
      assert.match(text, /^HTTP\/1\.1 403 Forbidden\r\n/);
      assert.match(text, /\r\nconnection: close\r\n/i);
      assert.match(text, /\r\nx-why: policy\r\n/i);
      assert.equal(text.slice(text.indexOf('\r\n\r\n') + 4), 'not for you\n');
      assert.deepEqual(asked, [{ url: '/not-ws?q=1', upgrade: 'websocket' }], 'the upgrade was asked of the backend');
      const inst = [...h.manager.instancesOf('app')][0]!;
      await until(() => inst.activeConnections === 0);
      assert.equal(h.proxy.ws.openTunnels, 0);
    } finally {
      await h.close();
    }
  });

  it('refuses improper handshakes with 400 before any provider call', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const cases = [
        `POST /smart_proxy/app/g1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\ncontent-length: 0\r\n\r\n`,
        'GET /smart_proxy/app/g1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n',
        `GET /smart_proxy/app/g1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: ${KEY}\r\n\r\n`,
        `GET /smart_proxy/app/g1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n`,
      ];
      for (const head of cases) {
        const text = await raw(h, head).answer;
        assert.match(text, /^HTTP\/1\.1 400 /, head);
        assert.match(text, /SP_WS_BAD_UPGRADE/);
      }
      // A malformed target in an upgrade is refused like any request.
      assert.match(await raw(h, upgradeHead('/smart_proxy/app/g1/../x')).answer, /^HTTP\/1\.1 400 [^]*SP_ROUTE_BAD_TARGET/);
      assert.equal(mimic.calls.start, 0);
    } finally {
      await h.close();
    }
  });

  it('serves other Upgrade values (h2c) as plain HTTP', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const text = await raw(h, 'GET /smart_proxy/app/g1/plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n').answer;
      assert.match(text, /^HTTP\/1\.1 200 OK\r\n/);
      const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as { headers: Record<string, string> };
      assert.equal(body.headers.upgrade, undefined, 'Upgrade is hop-by-hop');
      assert.equal(body.headers['http2-settings'], undefined);
    } finally {
      await h.close();
    }
  });

  it('enforces the per-resource Origin allow-list before any side effect', async () => {
    const log = newLog();
    const mimic = new MimicProvider({ bootMs: 0, backend: wsBackend(log) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, websocket: { allowedOrigins: ['https://app.example.com'] } }] });
    try {
      const denied = await raw(h, upgradeHead('/smart_proxy/app/g1/ws', 'Origin: https://evil.example\r\n')).answer;
      assert.match(denied, /^HTTP\/1\.1 403 [^]*SP_WS_ORIGIN_DENIED/);
      assert.equal(mimic.calls.start, 0);
      for (const origin of ['https://APP.example.com', undefined]) {
        const ws = new WebSocket(wsUrl(h), origin === undefined ? {} : { origin });
        await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
        const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
        ws.close();
        await closed;
      }
    } finally {
      await h.close();
    }
  });

  it('answers 504 on the raw socket when the hold times out, then closes', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, holdTimeoutMs: 300 }] });
    try {
      const text = await raw(h, upgradeHead('/smart_proxy/app/g1/ws')).answer;
      assert.match(text, /^HTTP\/1\.1 504 Gateway Timeout\r\n/);
      assert.match(text, /retry-after: \d+/i);
      assert.match(text, /SP_BOOT_TIMEOUT/);
      assert.equal(h.manager.heldTotal, 0);
    } finally {
      await h.close();
    }
  });
});

describe('WebSocket and held-bytes configuration', () => {
  const base = { providers: { p: { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' } } };

  it('merges allowedOrigins from resourceDefaults and names a bad origin in the error', () => {
    const cfg = parseConfig(JSON.stringify({
      ...base,
      resourceDefaults: { websocket: { allowedOrigins: ['https://a.example'] } },
      resources: { one: { provider: 'p' }, two: { provider: 'p', websocket: { allowedOrigins: ['https://b.example:8443'] } } },
    }));
    const byId = new Map(effectiveResources(cfg).map((r) => [r.id, r]));
    assert.deepEqual(byId.get('one')?.websocketAllowedOrigins, ['https://a.example']);
    assert.deepEqual(byId.get('two')?.websocketAllowedOrigins, ['https://b.example:8443']);
    assert.equal(cfg.limits.maxHeldBytes, 1024 ** 3);
    assert.throws(
      () => parseConfig(JSON.stringify({ ...base, resources: { one: { provider: 'p', websocket: { allowedOrigins: ['a.example/path'] } } } })),
      /resources\.one\.websocket\.allowedOrigins\.0: an origin like/,
    );
    assert.throws(() => parseConfig(JSON.stringify({ ...base, tls: { certFile: 'x.pem' }, resources: {} })), /tls\.keyFile/);
  });
});
