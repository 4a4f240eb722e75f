/**
 * Refused requests with bodies, as real clients see them (src/proxy/linger.ts): a client still
 * uploading when the proxy refuses it must read the refusal, not a connection reset; the body
 * is drained within bounds (bytes, time, silence) after `Connection: close`; a refused request
 * without a body keeps its connection.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { connect as h2connect } from 'node:http2';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { performance } from 'node:perf_hooks';
import { ManualClock } from '../../src/core/clock.ts';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { Identify } from '../../src/proxy/server.ts';
import type { LingerOptions } from '../../src/proxy/linger.ts';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { requireBinary } from '../helpers/system.ts';

const MiB = 1024 * 1024;

/** Polls `cond` once per event-loop turn; fails after `boundMs` (a bound on a wait, not a sleep). */
async function until(cond: () => boolean, what = 'a condition', boundMs = 10_000): Promise<void> {
  const deadline = performance.now() + boundMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** `p`, or a failure naming `what` after `boundMs`. */
async function within<T>(p: Promise<T>, what: string, boundMs = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_r, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), boundMs); });
  try {
    return await Promise.race([p, bound]);
  } finally {
    clearTimeout(timer);
  }
}

/** 401 without an Authorization header, as an access rule would answer. */
const tokenRequired: Identify = (req, route) => (req.headers.authorization === undefined
  ? new SmartProxyError('SP_ACCESS_UNAUTHENTICATED', 'a token is required')
  : { user: 'u', groups: route.groups });

/** `open` is warm (its backend echoes), `cold` never becomes ready (uploads to it are held, or refused at the held-bytes bounds). */
async function harness(linger?: Partial<LingerOptions>, clock?: ManualClock, tls?: { certFile: string; keyFile: string }): Promise<{ h: Harness; cold: MimicProvider }> {
  const cold = new MimicProvider({ manual: true });
  const warm = new MimicProvider();
  const h = await startHarness({
    resources: [{ id: 'open', provider: warm }, { id: 'cold', provider: cold }],
    identify: tokenRequired,
    bounds: { maxHeldBytesPerRequest: MiB, ...(linger === undefined ? {} : { linger }) },
    heldBodyEstimateBytes: 2 * MiB,
    ...(clock === undefined ? {} : { clock }),
    tls,
  });
  return { h, cold };
}

/**
 * Writes `data` as a client that sends its whole request before it reads anything (Python's
 * http.client): resolves with the write error (EPIPE, ECONNRESET) or undefined when
 * every byte was taken.
 */
function sendAll(c: RawClient, data: Buffer): Promise<Error | undefined> {
  return new Promise((resolve) => {
    c.socket.once('error', resolve);
    c.socket.write(data, (err) => resolve(err ?? undefined));
  });
}

function chunked(total: number, chunk = 64 * 1024): Buffer {
  const parts: Buffer[] = [];
  for (let left = total; left > 0; left -= chunk) {
    const n = Math.min(chunk, left);
    parts.push(Buffer.from(`${n.toString(16)}\r\n`), Buffer.alloc(n, 0x61), Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(parts);
}

/** Resolves when the proxy's side of its next accepted connection has closed. */
function nextConnectionClosed(h: Harness): Promise<void> {
  return new Promise((resolve) => {
    h.proxy.server.once('connection', (s: Socket) => s.once('close', () => resolve()));
  });
}

/** Resolves once the client's socket has closed: 'end' (FIN) seen or not, and any error. */
function closedOf(c: RawClient): Promise<{ fin: boolean; error: string | undefined }> {
  let fin = false;
  let error: string | undefined;
  c.socket.on('end', () => { fin = true; });
  c.socket.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message; });
  return new Promise((resolve) => {
    if (c.socket.closed) resolve({ fin, error });
    else c.socket.once('close', () => resolve({ fin, error }));
  });
}

describe('a refused upload: the client reads the refusal, not a reset', { timeout: 60_000 }, () => {
  it('401 to a client that sends 8 MiB before reading: the whole answer, then a clean FIN', async () => {
    const { h } = await harness();
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    try {
      const body = Buffer.alloc(8 * MiB, 0x61);
      const head = `PUT /smart_proxy/open/g1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\n\r\n`;
      const err = await sendAll(c, Buffer.concat([Buffer.from(head), body]));
      assert.equal(err, undefined, `the upload was cut: ${String(err)}`);
      const res = await c.response();
      assert.equal(res.status, 401);
      assert.match(res.head, /\r\nconnection: close/i);
      assert.deepEqual(await within(closed, 'the close'), { fin: true, error: undefined }, 'closed with FIN, never reset');
      await until(() => h.proxy.lingering.active === 0);
      assert.equal(h.proxy.lingering.discardedBytes, body.length);
      assert.equal(h.proxy.lingering.outcomes.drained, 1);
    } finally {
      c.close();
      await h.close();
    }
  });

  it('a refused request without a body keeps its connection: the next request is served on it', async () => {
    const { h } = await harness();
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    try {
      for (const head of ['GET /smart_proxy/open/g1/a HTTP/1.1\r\nhost: x\r\n\r\n', 'POST /smart_proxy/open/g1/b HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n']) {
        c.write(head);
        const res = await c.response();
        assert.equal(res.status, 401);
        assert.doesNotMatch(res.head, /\r\nconnection: close/i);
        c.received = '';
      }
      c.write('GET /smart_proxy/open/g1/c HTTP/1.1\r\nhost: x\r\nauthorization: t\r\n\r\n');
      assert.equal((await c.response()).status, 200, 'served on the same connection');
      assert.equal(c.socket.closed, false);
      assert.equal(h.proxy.lingering.active, 0);
    } finally {
      c.close();
      await closed;
      await h.close();
    }
  });

  it('a client that stops sending its announced body once refused (Node\'s http client) gets its answer and a fresh connection next', async () => {
    const { h } = await harness();
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const put = (path: string, headers: Record<string, string>): Promise<number> => new Promise((resolve, reject) => {
        const req = httpRequest(`${h.url}${path}`, { method: 'PUT', agent, headers }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        // Announces 400 KiB and sends none of it.
        req.end();
      });
      assert.equal(await put('/smart_proxy/open/g1/a', { 'content-length': String(400 * 1024) }), 401);
      // The agent would reuse a kept connection; the next head must not be read as the first body.
      assert.equal(await within(put('/smart_proxy/cold/g1/b', { authorization: 'Bearer t', 'content-length': String(2 * MiB) }), 'the second answer'), 413);
    } finally {
      agent.destroy();
      await h.close();
    }
  });

  it('413 to a chunked upload: `connection: close`, the body drained after the answer, then a clean FIN', async () => {
    const { h, cold } = await harness();
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    try {
      const head = 'POST /smart_proxy/cold/g1/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\ntransfer-encoding: chunked\r\n\r\n';
      const err = await sendAll(c, Buffer.concat([Buffer.from(head), chunked(8 * MiB)]));
      assert.equal(err, undefined, `the upload was cut: ${String(err)}`);
      const res = await c.response();
      assert.equal(res.status, 413, res.body);
      assert.match(res.head, /\r\nconnection: close/i);
      const end = await within(closed, 'the close');
      assert.deepEqual(end, { fin: true, error: undefined }, 'closed with FIN after the body, never reset');
      await until(() => h.proxy.lingering.active === 0);
      assert.equal(h.proxy.lingering.discardedBytes, 8 * MiB);
      assert.equal(cold.calls.start, 0, 'nothing was started for it');
    } finally {
      c.close();
      await h.close();
    }
  });

  it('Expect: 100-continue refused: no 100, and a body sent anyway (curl does after 1 s) is drained, then FIN', async () => {
    const { h } = await harness();
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    try {
      c.write(`PUT /smart_proxy/open/g1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: ${4 * MiB}\r\nexpect: 100-continue\r\n\r\n`);
      const res = await c.response();
      assert.equal(res.status, 401);
      assert.doesNotMatch(c.received, /^HTTP\/1\.1 100/);
      assert.match(res.head, /\r\nconnection: close/i, 'the client may or may not send its body: the connection is not reused');
      const err = await sendAll(c, Buffer.alloc(4 * MiB, 0x61));
      assert.equal(err, undefined, `the body sent anyway was cut: ${String(err)}`);
      assert.deepEqual(await within(closed, 'the close'), { fin: true, error: undefined });
      await until(() => h.proxy.lingering.active === 0);
      assert.equal(h.proxy.lingering.outcomes.drained, 1);
    } finally {
      c.close();
      await h.close();
    }
  });

  it('a forward that failed mid-body (the backend closed without reading it) drains the rest, then FIN', async () => {
    const early = new MimicProvider({
      backend: (key) => startEchoServer({
        name: key,
        handler: (req, res) => {
          if (req.method === 'GET') {
            res.end('ok');
            return;
          }
          // Answers and closes at once, never reading the upload.
          res.writeHead(413, { 'content-length': '4', connection: 'close' });
          res.end('nope');
        },
      }),
    });
    const h = await startHarness({ resources: [{ id: 'early', provider: early }] });
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    try {
      c.write('GET /smart_proxy/early/g1/ HTTP/1.1\r\nhost: x\r\n\r\n');
      assert.equal((await c.response()).status, 200);
      c.received = '';
      const body = Buffer.alloc(8 * MiB, 0x61);
      const head = `PUT /smart_proxy/early/g1/up HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\n\r\n`;
      const err = await sendAll(c, Buffer.concat([Buffer.from(head), body]));
      assert.equal(err, undefined, `the upload was cut: ${String(err)}`);
      const res = await c.response();
      assert.ok(res.status >= 400, res.head);
      assert.match(res.head, /\r\nconnection: close/i);
      assert.deepEqual(await within(closed, 'the close'), { fin: true, error: undefined });
      await until(() => h.proxy.lingering.active === 0, 'the drain to end');
      assert.equal(h.proxy.lingering.outcomes.drained, 1, JSON.stringify(h.proxy.lingering.outcomes));
    } finally {
      c.close();
      await h.close();
    }
  });

  it('curl -T (with and without Expect: 100-continue) gets the 401 and the 413', async () => {
    const curl = requireBinary('curl', 'curl');
    const dir = mkdtempSync(join(tmpdir(), 'sp-refused-'));
    const file = join(dir, 'upload.bin');
    writeFileSync(file, Buffer.alloc(8 * MiB, 0x62));
    const { h } = await harness();
    try {
      const run = (args: string[]): Promise<string> => new Promise((resolve, reject) => {
        execFile(curl, ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-T', file, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
          if (err !== null) reject(new Error(`curl failed: ${stderr}`));
          else resolve(stdout);
        });
      });
      for (const expect of [[], ['-H', 'expect:']]) {
        assert.equal(await run([...expect, `${h.url}/smart_proxy/open/g1/up`]), '401');
        assert.equal(await run([...expect, '-H', 'authorization: Bearer t', `${h.url}/smart_proxy/cold/g1/up`]), '413');
      }
    } finally {
      await h.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an authorized upload to a warm resource is forwarded whole, as before', async () => {
    const { h } = await harness();
    const c = await RawClient.open(h.url);
    try {
      c.write('GET /smart_proxy/open/g1/warm-up HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n\r\n');
      assert.equal((await c.response()).status, 200);
      c.received = '';
      const body = Buffer.alloc(4 * MiB, 0x63);
      c.write(`PUT /smart_proxy/open/g1/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\ncontent-length: ${body.length}\r\n\r\n`);
      c.write(body);
      const res = await c.response(20_000);
      assert.equal(res.status, 200, res.body);
      assert.equal((JSON.parse(res.body) as Echo).bodyBytes, body.length);
      assert.equal(h.proxy.lingering.discardedBytes, 0);
    } finally {
      c.close();
      await h.close();
    }
  });
});

describe('the drain is bounded', { timeout: 60_000 }, () => {
  it('a client that keeps sending forever is cut once it has sent maxBytes past its refusal', async () => {
    const { h } = await harness({ maxBytes: MiB });
    const c = await RawClient.open(h.url);
    const closed = closedOf(c);
    let sent = 0;
    const chunk = Buffer.from(`${(16 * 1024).toString(16)}\r\n${'a'.repeat(16 * 1024)}\r\n`);
    const pump = (): void => {
      while (!c.socket.destroyed && c.socket.write(chunk)) sent += chunk.length;
    };
    c.socket.on('drain', pump);
    try {
      c.write('PUT /smart_proxy/open/g1/forever HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n');
      pump();
      await within(closed, 'the cut');
      assert.match(c.received, /^HTTP\/1\.1 401 /, 'the refusal came first');
      assert.equal(h.proxy.lingering.active, 0);
      const read = h.proxy.lingering.discardedBytes;
      assert.ok(read > MiB && read <= MiB + 64 * 1024, `read ${read} bytes`);
      assert.ok(sent > read, 'the client was still sending when it was cut');
      assert.equal(h.proxy.lingering.outcomes.bytes, 1);
    } finally {
      c.close();
      await h.close();
    }
  });

  it('a client dripping bytes is cut at the time bound; a silent one at the idle bound', async () => {
    const clock = new ManualClock();
    const { h } = await harness({ timeMs: 30_000, idleMs: 5_000 }, clock);
    try {
      // Ignores the proxy's FIN and goes on sending, as a hostile client would.
      const proxySide = nextConnectionClosed(h);
      const drip = await RawClient.open(h.url, { allowHalfOpen: true });
      drip.write('PUT /smart_proxy/open/g1/drip HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n');
      await drip.response();
      let read = 0;
      // A byte every 4 s never trips the 5 s idle bound; the 30 s in all does.
      for (let t = 0; t < 28_000; t += 4_000) {
        drip.write('1\r\na\r\n');
        read += 1;
        await until(() => h.proxy.lingering.discardedBytes >= read);
        await clock.advance(4_000);
        assert.equal(drip.closed, false, `still open at ${t + 4_000} ms`);
      }
      drip.write('1\r\na\r\n');
      read += 1;
      await until(() => h.proxy.lingering.discardedBytes >= read);
      await clock.advance(1_999);
      assert.equal(h.proxy.lingering.active, 1, 'open until the 30 s are over');
      await clock.advance(1);
      await until(() => h.proxy.lingering.active === 0);
      assert.equal(h.proxy.lingering.outcomes.time, 1, JSON.stringify(h.proxy.lingering.outcomes));
      await within(proxySide, 'the proxy to close its side');
      drip.close();

      const proxySide2 = nextConnectionClosed(h);
      const silent = await RawClient.open(h.url, { allowHalfOpen: true });
      silent.write('PUT /smart_proxy/open/g1/silent HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc');
      await silent.response();
      await until(() => h.proxy.lingering.discardedBytes === read + 3);
      await clock.advance(4_999);
      assert.equal(h.proxy.lingering.active, 1);
      await clock.advance(1);
      await within(proxySide2, 'the proxy to close its side');
      silent.close();
      assert.equal(h.proxy.lingering.active, 0);
      assert.equal(h.proxy.lingering.outcomes.idle, 1);
    } finally {
      await h.close();
    }
  });

  it('past maxConnections lingering at once, a refusal closes at once', async () => {
    const { h } = await harness({ maxConnections: 1 });
    // Keeps its side open after the proxy's FIN: its drain lasts.
    const a = await RawClient.open(h.url, { allowHalfOpen: true });
    const b = await RawClient.open(h.url);
    const bClosed = closedOf(b);
    try {
      a.write('PUT /smart_proxy/open/g1/a HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n');
      await a.response();
      await until(() => h.proxy.lingering.active === 1);
      b.write('PUT /smart_proxy/open/g1/b HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n');
      const res = await b.response();
      assert.equal(res.status, 401);
      assert.match(res.head, /\r\nconnection: close/i);
      await within(bClosed, 'the close');
      assert.equal(h.proxy.lingering.active, 1, 'only the first lingers');
      assert.equal(h.proxy.lingering.outcomes.full, 1);
    } finally {
      a.close();
      b.close();
      await h.close();
    }
  });
});

describe('HTTP/2: a refused stream with a body', { timeout: 60_000 }, () => {
  it('gets its answer and RST_STREAM(NO_ERROR), and the session goes on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-refused-h2-'));
    execFileSync(requireBinary('openssl', 'openssl'), ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', 'k.pem', '-out', 'c.pem', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { cwd: dir, stdio: 'ignore' });
    const { h } = await harness(undefined, undefined, { certFile: join(dir, 'c.pem'), keyFile: join(dir, 'k.pem') });
    const session = h2connect(h.url, { rejectUnauthorized: false });
    session.on('error', () => undefined);
    try {
      const upload = async (headers: Record<string, string>): Promise<{ status: number; rstCode: number | undefined }> => {
        const stream = session.request({ ':method': 'PUT', ':path': '/smart_proxy/cold/g1/up', ...headers });
        let status = 0;
        stream.on('response', (hd) => { status = Number(hd[':status']); });
        stream.on('error', () => undefined);
        stream.resume();
        // Sends until the proxy stops it: 8 MiB, or the stream's end.
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        let sent = 0;
        const pump = (): void => {
          while (sent < 8 * MiB && !stream.destroyed && stream.write(chunk)) sent += chunk.length;
        };
        stream.on('drain', pump);
        pump();
        await within(new Promise((r) => stream.once('close', r)), 'the stream to close');
        return { status, rstCode: stream.rstCode };
      };
      assert.deepEqual(await upload({}), { status: 401, rstCode: 0 });
      assert.deepEqual(await upload({ authorization: 'Bearer t', 'content-length': String(8 * MiB) }), { status: 413, rstCode: 0 });
      assert.equal(session.closed || session.destroyed, false, 'the session carries on');
    } finally {
      session.destroy();
      await h.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
