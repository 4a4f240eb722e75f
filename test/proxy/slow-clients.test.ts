/**
 * Slow and stuck clients are bounded (issue 11, item 3): a request body that goes silent,
 * uploads that hold every backend connection, one client announcing a huge body, idle
 * HTTP/2 sessions. Real sockets throughout; raw TCP where the stall is the point.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { RawClient } from '../helpers/raw-client.ts';

const MiB = 1024 * 1024;

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

/** Makes the resource ready and returns its backend's origin. */
async function warmUp(h: Harness, mimic: MimicProvider): Promise<string> {
  const c = await RawClient.open(h.url);
  try {
    c.write('GET /smart_proxy/app/g1/warm HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
    assert.equal((await c.response()).status, 200);
  } finally {
    c.close();
  }
  const inst = [...mimic.instances.values()][0];
  assert.ok(inst?.server !== undefined);
  return new URL(inst.server.url).origin;
}

/** Starts an upload that announces `length` bytes and sends only `sent` of them. */
async function stuckUpload(h: Harness, length: number, sent: number, extraHeaders = ''): Promise<RawClient> {
  const c = await RawClient.open(h.url);
  c.write(`POST /smart_proxy/app/g1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: ${length}\r\n${extraHeaders}\r\n`);
  if (sent > 0) c.write(Buffer.alloc(sent, 0x61));
  return c;
}

function problemCode(body: string): string {
  return (JSON.parse(body) as { code: string }).code;
}

describe('slow and stuck clients are bounded', { timeout: 60_000 }, () => {
  it('a request body that goes silent gets 408 and frees its backend connection', async () => {
    const mimic = new MimicProvider();
    // One connection to the backend: a stuck upload that kept it would block everyone.
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], upstream: { connectionsPerBackend: 1 }, bounds: { bodyIdleTimeoutMs: 300 } });
    const clients: RawClient[] = [];
    try {
      await warmUp(h, mimic);
      const c = await stuckUpload(h, 1000, 10);
      clients.push(c);
      const res = await c.response(5_000);
      assert.equal(res.status, 408);
      assert.equal(problemCode(res.body), 'SP_CLIENT_BODY_TIMEOUT');
      assert.match(res.head, /\r\nconnection: close/i);
      const next = await fetch(`${h.url}/smart_proxy/app/g1/after`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(next.status, 200, 'the connection the stuck upload held is free again');
      await next.text();
    } finally {
      for (const c of clients) c.close();
      await h.close();
    }
  });

  it('uploads holding every connection make others wait a bounded time in a bounded queue', { timeout: 20_000 }, async () => {
    const mimic = new MimicProvider();
    // No body idle timeout here: the uploads trickle (one byte a minute), never silent long enough.
    const h = await startHarness({
      resources: [{ id: 'app', provider: mimic }],
      upstream: { connectionsPerBackend: 2, maxQueuedPerBackend: 1, queueTimeoutMs: 300 },
      bounds: { bodyIdleTimeoutMs: 0 },
    });
    const clients: RawClient[] = [];
    try {
      const origin = await warmUp(h, mimic);
      const gate = h.proxy.pools.gate(origin);
      clients.push(await stuckUpload(h, 1000, 1), await stuckUpload(h, 1000, 1));
      await until(() => gate.inFlight === 2);
      const queued = RawClient.open(h.url);
      const q = await queued;
      clients.push(q);
      q.write('GET /smart_proxy/app/g1/queued HTTP/1.1\r\nhost: x\r\n\r\n');
      await until(() => gate.queued === 1);
      const full = await RawClient.open(h.url);
      clients.push(full);
      full.write('GET /smart_proxy/app/g1/full HTTP/1.1\r\nhost: x\r\n\r\n');
      const fullRes = await full.response();
      assert.equal(fullRes.status, 503);
      assert.equal(problemCode(fullRes.body), 'SP_UPSTREAM_QUEUE_FULL');
      assert.match(fullRes.head, /\r\nretry-after: \d+/i);
      const queuedRes = await q.response();
      assert.equal(queuedRes.status, 503);
      assert.equal(problemCode(queuedRes.body), 'SP_UPSTREAM_QUEUE_TIMEOUT');
      assert.match(queuedRes.head, /\r\nretry-after: \d+/i);
      assert.equal(gate.queued, 0);
      // Once an upload completes, its connection serves the next request at once.
      (clients[0] as RawClient).write(Buffer.alloc(999, 0x61));
      assert.equal((await (clients[0] as RawClient).response()).status, 200);
      const next = await fetch(`${h.url}/smart_proxy/app/g1/next`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(next.status, 200);
      await next.text();
    } finally {
      for (const c of clients) c.close();
      await h.close();
    }
  });

  it('a client that leaves the backend queue is dropped from it and never sent', async () => {
    const seen: string[] = [];
    const mimic = new MimicProvider({
      backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
        if (req.url !== '/') seen.push(`${req.method} ${req.url}`);
        req.resume();
        req.on('end', () => res.end('ok'));
      } }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], upstream: { connectionsPerBackend: 1 }, bounds: { bodyIdleTimeoutMs: 0 } });
    const clients: RawClient[] = [];
    try {
      const origin = await warmUp(h, mimic);
      const gate = h.proxy.pools.gate(origin);
      const upload = await stuckUpload(h, 100, 1);
      clients.push(upload);
      await until(() => gate.inFlight === 1);
      const queued = await RawClient.open(h.url);
      clients.push(queued);
      queued.write('DELETE /smart_proxy/app/g1/queued HTTP/1.1\r\nhost: x\r\n\r\n');
      await until(() => gate.queued === 1);
      queued.close();
      await until(() => gate.queued === 0);
      upload.write(Buffer.alloc(99, 0x61));
      assert.equal((await upload.response()).status, 200);
      const next = await fetch(`${h.url}/smart_proxy/app/g1/next`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(next.status, 200);
      await next.text();
      assert.deepEqual(seen, ['GET /warm', 'POST /upload', 'GET /next']);
    } finally {
      for (const c of clients) c.close();
      await h.close();
    }
  });

  it('one announced Content-Length cannot take the held-bytes budget: per-request cap and per-client share', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({
      resources: [{ id: 'app', provider: mimic }],
      maxHeldBytes: 10 * MiB,
      bounds: { maxHeldBytesPerRequest: 3 * MiB, maxHeldBytesPerClient: 4 * MiB },
      // Behind a trusted front proxy, the client is the X-Forwarded-For hop it vouches for.
      trustedProxies: ['127.0.0.1'],
    });
    const clients: RawClient[] = [];
    try {
      const huge = await stuckUpload(h, 5 * MiB, 0, 'x-forwarded-for: 10.0.0.1\r\n');
      clients.push(huge);
      const hugeRes = await huge.response();
      assert.equal(hugeRes.status, 413);
      assert.equal(problemCode(hugeRes.body), 'SP_BODY_TOO_LARGE');

      const first = await stuckUpload(h, 3 * MiB, 0, 'x-forwarded-for: 10.0.0.1\r\n');
      clients.push(first);
      await until(() => h.manager.heldTotal === 1);
      const second = await stuckUpload(h, 2 * MiB, 0, 'x-forwarded-for: 10.0.0.1\r\n');
      clients.push(second);
      const secondRes = await second.response();
      assert.equal(secondRes.status, 503);
      assert.equal(problemCode(secondRes.body), 'SP_HOLD_BYTES_FULL');
      assert.match(secondRes.head, /\r\nretry-after: \d+/i);

      // Another client still gets its share.
      const other = await stuckUpload(h, 3 * MiB, 0, 'x-forwarded-for: 10.0.0.2\r\n');
      clients.push(other);
      await until(() => h.manager.heldTotal === 2);
      assert.equal(h.proxy.heldBytes, 6 * MiB);
    } finally {
      for (const c of clients) c.close();
      await h.close();
    }
  });

  it('defaults a hung backend cannot abuse: 60 s for a response head, bounded queue, body idle timeout', () => {
    const cfg = parseConfig(JSON.stringify({ resources: { a: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:1' }, access: { public: true } } } }), 'test');
    assert.equal(cfg.upstream.headersTimeoutMs, 60_000);
    assert.equal(cfg.upstream.queueTimeoutMs, 10_000);
    assert.equal(cfg.upstream.maxQueuedPerBackend, 1024);
    assert.equal(cfg.server.bodyIdleTimeoutMs, 60_000);
    assert.ok(cfg.limits.maxHeldBytesPerRequest < cfg.limits.maxHeldBytes);
    assert.ok(cfg.limits.maxHeldBytesPerClient < cfg.limits.maxHeldBytes);
  });
});

describe('HTTP/2 clients', { timeout: 60_000 }, () => {
  let dir: string;
  let ca: Buffer;
  let cert: string;
  let key: string;
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sp-h2idle-'));
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test CA');
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=localhost');
    openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '1', '-extfile', 'san.ext');
    ca = readFileSync(join(dir, 'ca.pem'));
    cert = join(dir, 'leaf.pem');
    key = join(dir, 'leaf.key');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('Expect: 100-continue over HTTP/2: 100 after admission, the body reaches the backend, Expect is not forwarded', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: cert, keyFile: key } });
    const session = h2connect(h.url, { ca });
    session.on('error', () => undefined);
    try {
      await once(session, 'connect');
      const body = Buffer.alloc(300 * 1024, 0x63);
      const stream = session.request({ ':method': 'PUT', ':path': '/smart_proxy/app/g1/blob', expect: '100-continue', 'content-length': String(body.length) }, { endStream: false });
      let text = '';
      let status = 0;
      stream.setEncoding('utf8');
      stream.on('response', (hd) => { status = Number(hd[':status']); });
      stream.on('data', (d: string) => { text += d; });
      await once(stream, 'continue');
      stream.end(body);
      await once(stream, 'end');
      assert.equal(status, 200, text);
      const echo = JSON.parse(text) as Echo;
      assert.equal(echo.bodyBytes, body.length);
      assert.equal(echo.headers.expect, undefined);
    } finally {
      session.destroy();
      await h.close();
    }
  });

  it('refuses a Host that contradicts :authority (RFC 9113 §8.3.1)', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: cert, keyFile: key } });
    const session = h2connect(h.url, { ca });
    session.on('error', () => undefined);
    try {
      await once(session, 'connect');
      const stream = session.request({ ':path': '/smart_proxy/app/g1/x', ':authority': 'a.example', host: 'b.example' });
      let status = 0;
      stream.on('response', (hd) => { status = Number(hd[':status']); });
      stream.resume();
      await once(stream, 'end');
      assert.equal(status, 400);
      assert.equal(mimic.calls.start, 0);
    } finally {
      session.destroy();
      await h.close();
    }
  });

  it('closes a session idle past http2SessionIdleTimeoutMs, never one with a held stream', { timeout: 15_000 }, async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: cert, keyFile: key }, bounds: { http2SessionIdleTimeoutMs: 200 } });
    const session = h2connect(h.url, { ca });
    const idle = h2connect(h.url, { ca });
    session.on('error', () => undefined);
    idle.on('error', () => undefined);
    try {
      await once(session, 'connect');
      // A held stream keeps the session, however long the boot takes.
      const held = session.request({ ':path': '/smart_proxy/app/g1/slow' });
      let status = 0;
      held.on('response', (hd) => { status = Number(hd[':status']); });
      held.resume();
      const ended = once(held, 'end');
      await until(() => h.manager.heldTotal === 1);
      let heldSessionGoaway = false;
      session.once('goaway', () => { heldSessionGoaway = true; });
      // A session opened later, with no stream, is told to go away after the idle timeout:
      // by then the held session's own timer would have fired too, had it counted.
      await once(idle, 'goaway');
      assert.equal(heldSessionGoaway, false, 'no GOAWAY while a stream is open');
      await mimic.release('*');
      await ended;
      assert.equal(status, 200);
      // Now idle: GOAWAY follows.
      if (!heldSessionGoaway) await once(session, 'goaway');
    } finally {
      session.destroy();
      idle.destroy();
      await h.close();
    }
  });
});
