/**
 * A hostile HTTP/1.1 client over raw TCP, against a warm resource, a cold one (its boot held by
 * the test) and a refused one (401): framing and smuggling, pipelining, expectations, Host,
 * half-closed and slow clients, and answers written straight to the socket (parse errors,
 * CONNECT, refused upgrades), which must be read by the client rather than turned into a reset.
 * The backend records the exact bytes it receives.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { Identify } from '../../src/proxy/server.ts';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { RawClient } from '../helpers/raw-client.ts';

const MiB = 1024 * 1024;

/** Polls `cond` once per event-loop turn; fails after `boundMs` (a bound on a wait, not a sleep). */
async function until(cond: () => boolean, what = 'a condition', boundMs = 10_000): Promise<void> {
  const deadline = performance.now() + boundMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** 401 without an Authorization header, for the resource `secret` only. */
const secretNeedsToken: Identify = (req, route) => (route.resourceId === 'secret' && req.headers.authorization === undefined
  ? new SmartProxyError('SP_ACCESS_UNAUTHENTICATED', 'a token is required')
  : { user: 'u', groups: route.groups });

interface Rig {
  h: Harness;
  cold: MimicProvider;
  /** Every byte the backends received, except the readiness probes' connections. */
  backendBytes(): string;
  /** Boots the cold resource's instance (its boot waits for this). */
  releaseCold(): Promise<void>;
}

/** `warm` is started before the test, `cold` boots when the test says, `secret` answers 401 without a token. */
async function rig(options: { headersTimeoutMs?: number; linger?: { timeMs?: number; idleMs?: number } } = {}): Promise<Rig> {
  const chunks: string[] = [];
  const recording = (key: string): ReturnType<typeof startEchoServer> => startEchoServer({ name: key }).then((e) => {
    e.server.on('connection', (s: Socket) => {
      const mine: string[] = [];
      s.on('data', (d: Buffer) => {
        mine.push(d.toString('latin1'));
        // The probe (GET / with the probe's user agent) is not the client's traffic.
        if (!mine.join('').startsWith('GET / HTTP/1.1\r\nuser-agent: smart-proxy-probe')) chunks.push(d.toString('latin1'));
      });
    });
    return e;
  });
  const warm = new MimicProvider({ backend: recording });
  const cold = new MimicProvider({ manual: true, backend: recording });
  const h = await startHarness({
    resources: [{ id: 'warm', provider: warm }, { id: 'cold', provider: cold }, { id: 'secret', provider: new MimicProvider({ backend: recording }) }],
    identify: secretNeedsToken,
    ...(options.headersTimeoutMs === undefined ? {} : { headersTimeoutMs: options.headersTimeoutMs }),
    ...(options.linger === undefined ? {} : { bounds: { linger: options.linger } }),
  });
  const res = await fetch(`${h.url}/smart_proxy/warm/-/`);
  assert.equal(res.status, 200);
  await res.text();
  chunks.length = 0;
  return {
    h, cold,
    backendBytes: () => chunks.join(''),
    async releaseCold() {
      await cold.started();
      await cold.release([...cold.instances.keys()][0] as string);
    },
  };
}

/** Every response in `text` (status lines at the start of a response), in order. */
function statuses(text: string): number[] {
  const out: number[] = [];
  let rest = text;
  for (;;) {
    const m = /^HTTP\/1\.1 (\d{3}) [^\r\n]*\r\n/.exec(rest);
    if (m === null) return out;
    out.push(Number(m[1]));
    const end = rest.indexOf('\r\n\r\n');
    const head = rest.slice(0, end);
    rest = rest.slice(end + 4);
    const len = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (len !== null) rest = rest.slice(Number(len[1]));
    else if (/\r\ntransfer-encoding: chunked/i.test(head)) {
      const last = rest.indexOf('\r\n0\r\n\r\n');
      rest = last === -1 && rest.startsWith('0\r\n\r\n') ? rest.slice(5) : rest.slice(last + 7);
    }
  }
}

/** Echo bodies' `url` fields in the order they were answered. */
function echoedUrls(text: string): string[] {
  return [...text.matchAll(/\{"method":"[A-Z]+","url":"([^"]*)"/g)].map((m) => m[1] as string);
}

/**
 * Writes `data` as a client that sends its whole request before it reads anything (Python's
 * http.client): resolves with the write error (EPIPE, ECONNRESET) or undefined.
 */
function sendAll(c: RawClient, data: Buffer): Promise<Error | undefined> {
  return new Promise((resolve) => {
    c.socket.once('error', resolve);
    c.socket.write(data, (err) => resolve(err ?? undefined));
  });
}

/** Resolves once the client's socket has closed: whether a FIN came, and any error (a reset). */
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

/**
 * Name, what follows the request line and Host, the answer. The last ones are malformed only in
 * their body: the head was valid, so a refused resource's 401 (which does not wait for the
 * body) is the answer, and a cold resource may have been woken by the head.
 */
const SMUGGLING: ReadonlyArray<readonly [string, string, number]> = [
  ['Content-Length with Transfer-Encoding', 'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smart_proxy/warm/-/smuggled HTTP/1.1\r\nHost: x\r\n\r\n', 400],
  ['two different Content-Lengths', 'Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!', 400],
  ['two equal Content-Lengths', 'Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello', 400],
  ['a Content-Length list', 'Content-Length: 5, 5\r\n\r\nhello', 400],
  ['a signed Content-Length', 'Content-Length: +5\r\n\r\nhello', 400],
  ['chunked, then identity', 'Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400],
  ['two Transfer-Encoding fields', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400],
  ['a space before the colon', 'Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400],
  ['xchunked', 'Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 501],
  ['identity, then chunked', 'Transfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 501],
  ['obs-fold', 'X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n', 400],
  ['a bare LF', 'X-A: 1\nContent-Length: 0\r\n\r\n', 400],
  ['NUL in a value', 'X-A: a\u0000b\r\nContent-Length: 0\r\n\r\n', 400],
  ['CR in a value', 'X-A: a\rb\r\nContent-Length: 0\r\n\r\n', 400],
];
const BODY_ERRORS: ReadonlyArray<readonly [string, string, number]> = [
  ['an invalid chunk size', 'Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n', 400],
  ['an overflowing chunk size', 'Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n', 400],
  ['a bare LF after a chunk size', 'Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n', 400],
];

describe('framing a backend could read two ways is refused, once, and nothing reaches the backend', { timeout: 60_000 }, () => {
  for (const target of ['warm', 'cold', 'secret']) {
    it(`to a ${target} resource`, async () => {
      const r = await rig();
      try {
        const send = async (cases: typeof SMUGGLING, bodyLevel: boolean): Promise<void> => {
          for (const [name, rest, status] of cases) {
            const c = await RawClient.open(r.h.url);
            try {
              c.write(`POST /smart_proxy/${target}/-/a HTTP/1.1\r\nHost: x\r\n${rest}`);
              const text = await c.until((_t, closed) => closed, `the close after ${name}`);
              const expected = bodyLevel && target === 'secret' ? 401 : status;
              assert.deepEqual(statuses(text), [expected], `${name}: one answer, then the close: ${JSON.stringify(text.slice(0, 200))}`);
              assert.match(text, /\r\nconnection: close\r\n/i, name);
            } finally {
              c.close();
            }
          }
        };
        await send(SMUGGLING, false);
        assert.equal(r.cold.calls.start, 0, 'nothing was woken');
        assert.equal(r.backendBytes(), '', 'no byte of any of them reached a backend');
        // A valid head may be on its way to a warm backend when the body breaks: the backend
        // sees an unfinished chunked body cut off, never the malformed bytes.
        await send(BODY_ERRORS, true);
        assert.doesNotMatch(r.backendBytes(), /zz|fffff|hello/);
      } finally {
        await r.h.close();
      }
    });
  }

  it('forwards chunked framing, re-framed by the proxy, with chunk extensions and trailers dropped', async () => {
    const r = await rig();
    try {
      const c = await RawClient.open(r.h.url);
      c.write('POST /smart_proxy/warm/-/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: evil\r\n\r\n');
      const res = await c.response();
      assert.equal(res.status, 200, res.body);
      assert.equal((JSON.parse(res.body) as Echo).body, 'hello');
      const sent = r.backendBytes();
      assert.match(sent, /\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n$/);
      assert.doesNotMatch(sent, /ext=1|X-Trailer|content-length/i);
      c.close();
    } finally {
      await r.h.close();
    }
  });

  it('cuts the connection when a body turns malformed after the answer began; no status line lands inside it', async () => {
    const mimic = new MimicProvider({ backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/') {
        res.end('ok');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first-part;');
      req.on('data', () => undefined);
      req.on('error', () => undefined);
      req.on('end', () => res.end('done'));
    } }) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const c = await RawClient.open(h.url);
    try {
      c.write('POST /smart_proxy/app/-/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
      await c.until((t) => t.includes('first-part;'), 'the first part of the answer');
      c.write('zz\r\nbad\r\n');
      const text = await c.until((_t, closed) => closed, 'the cut');
      assert.equal(text.match(/HTTP\/1\.1 /g)?.length, 1, `one status line only: ${JSON.stringify(text)}`);
      assert.ok(!text.endsWith('0\r\n\r\n'), 'the answer is not made to look complete');
    } finally {
      c.close();
      await h.close();
    }
  });
});

describe('pipelined requests', { timeout: 60_000 }, () => {
  const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`;
  const post = (path: string, body: string): string => `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}`;

  it('warm, held, refused and forwarded bodies in one write are answered in order, none lost or mixed', async () => {
    const r = await rig();
    const c = await RawClient.open(r.h.url);
    try {
      c.write(get('/smart_proxy/warm/-/1') + get('/smart_proxy/cold/-/2') + get('/smart_proxy/secret/-/3') + post('/smart_proxy/warm/-/4', 'body-4')
        + get('/smart_proxy/nope/-/5') + post('/smart_proxy/cold/-/6', 'body-6') + get('/smart_proxy/warm/-/7', 'connection: close\r\n'));
      await c.until((t) => statuses(t).length === 1, 'the first answer');
      await r.releaseCold();
      const text = await c.until((_t, closed) => closed, 'every answer');
      assert.deepEqual(statuses(text), [200, 200, 401, 200, 404, 200, 200]);
      assert.deepEqual(echoedUrls(text), ['/1', '/2', '/4', '/6', '/7']);
      assert.match(text, /"url":"\/4"[^]*"body":"body-4"/);
      assert.match(text, /"url":"\/6"[^]*"body":"body-6"/);
    } finally {
      c.close();
      await r.h.close();
    }
  });

  for (const first of ['warm', 'cold']) {
    it(`a malformed request behind a ${first} one: the ${first} answer first and whole, then the close (no 400 in its place)`, async () => {
      const r = await rig();
      const c = await RawClient.open(r.h.url);
      try {
        c.write(`${get(`/smart_proxy/${first}/-/1`)}GET /smart_proxy/warm/-/2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n`);
        if (first === 'cold') {
          await r.cold.started();
          assert.equal(c.received, '', 'nothing is answered while the first request is held');
          await r.releaseCold();
        }
        const text = await c.until((_t, closed) => closed, 'the close');
        assert.deepEqual(statuses(text), [200], JSON.stringify(text.slice(0, 300)));
        assert.deepEqual(echoedUrls(text), ['/1']);
      } finally {
        c.close();
        await r.h.close();
      }
    });
  }
});

describe('heads too large, slow or odd', { timeout: 60_000 }, () => {
  it('414 for a request line past maxHeaderBytes, 431 for large fields', async () => {
    const r = await rig();
    try {
      for (const [head, status] of [
        [`GET /smart_proxy/warm/-/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414],
        [`GET /smart_proxy/warm/-/a?q=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414],
        [`GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: x\r\nCookie: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
        [`GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: x\r\n${'X-A: 1\r\n'.repeat(3_000)}\r\n`, 431],
      ] as const) {
        const c = await RawClient.open(r.h.url);
        c.write(head);
        const text = await c.until((_t, closed) => closed, `the ${status}`);
        assert.deepEqual(statuses(text), [status]);
        c.close();
      }
      assert.equal(r.backendBytes(), '');
    } finally {
      await r.h.close();
    }
  });

  it('a client that uploads behind a head too large reads the 431, not a reset, and the drain is bounded', async () => {
    const r = await rig();
    const c = await RawClient.open(r.h.url);
    const closed = closedOf(c);
    try {
      const head = `PUT /smart_proxy/warm/-/up HTTP/1.1\r\nHost: x\r\nCookie: ${'a'.repeat(20_000)}\r\nContent-Length: ${8 * MiB}\r\n\r\n`;
      const err = await sendAll(c, Buffer.concat([Buffer.from(head), Buffer.alloc(8 * MiB, 0x61)]));
      assert.equal(err, undefined, `the upload was cut: ${String(err)}`);
      assert.deepEqual(statuses(await c.until((t) => t.includes('\r\n\r\n'), 'the answer')), [431]);
      c.socket.end();
      assert.deepEqual(await closed, { fin: true, error: undefined }, 'closed with FIN, never reset');
      await until(() => r.h.proxy.lingering.active === 0, 'the drain to end');
      assert.ok(r.h.proxy.lingering.discardedBytes > 0);
    } finally {
      c.close();
      await r.h.close();
    }
  });

  it('CONNECT: 405, what follows is drained, and a client that never closes is closed at the linger bound', async () => {
    const r = await rig({ linger: { timeMs: 1_000, idleMs: 1_000 } });
    try {
      const c = await RawClient.open(r.h.url);
      const closed = closedOf(c);
      const err = await sendAll(c, Buffer.concat([Buffer.from('CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n'), Buffer.alloc(4 * MiB, 0x16)]));
      assert.equal(err, undefined, `the client was reset: ${String(err)}`);
      assert.deepEqual(statuses(await c.until((t) => t.includes('\r\n\r\n'), 'the 405')), [405]);
      c.socket.end();
      assert.deepEqual(await closed, { fin: true, error: undefined });

      // A client that keeps its side open: the proxy's socket closes at the time bound.
      const proxySide = new Promise<void>((resolve) => {
        r.h.proxy.server.once('connection', (s: Socket) => s.once('close', () => resolve()));
      });
      const silent = await RawClient.open(r.h.url, { allowHalfOpen: true });
      silent.write('CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n');
      await silent.until((t) => t.includes('\r\n\r\n'), 'the 405');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([proxySide, new Promise((_r, reject) => { timer = setTimeout(() => reject(new Error('the CONNECT socket outlived the linger bound')), 5_000); })]);
      clearTimeout(timer);
      assert.equal(r.h.proxy.lingering.outcomes.time + r.h.proxy.lingering.outcomes.idle, 1);
      silent.close();
    } finally {
      await r.h.close();
    }
  });

  it('a refused WebSocket upgrade with bytes behind it: the client reads the 401, not a reset', async () => {
    const r = await rig();
    const c = await RawClient.open(r.h.url);
    const closed = closedOf(c);
    try {
      const head = 'GET /smart_proxy/secret/-/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n'
        + 'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';
      const err = await sendAll(c, Buffer.concat([Buffer.from(head), Buffer.alloc(4 * MiB, 0x82)]));
      assert.equal(err, undefined, `the client was reset: ${String(err)}`);
      assert.deepEqual(statuses(await c.until((t) => t.includes('\r\n\r\n'), 'the 401')), [401]);
      c.socket.end();
      assert.deepEqual(await closed, { fin: true, error: undefined });
    } finally {
      c.close();
      await r.h.close();
    }
  });

  it('a slow head (slowloris) is answered 408 and closed within headersTimeoutMs and a tenth', async () => {
    const r = await rig({ headersTimeoutMs: 1_000 });
    const c = await RawClient.open(r.h.url);
    try {
      const since = performance.now();
      c.write('GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: x\r\n');
      const drip = setInterval(() => c.write('X-A: 1\r\n'), 100);
      try {
        const text = await c.until((_t, closed) => closed, 'the 408', 3_000);
        assert.deepEqual(statuses(text), [408]);
      } finally {
        clearInterval(drip);
      }
      const took = performance.now() - since;
      assert.ok(took >= 900 && took < 1_800, `closed after ${Math.round(took)} ms`);
    } finally {
      c.close();
      await r.h.close();
    }
  });

  it('refuses a Host that is not a host name with an optional port, before anything is woken', async () => {
    const r = await rig();
    try {
      for (const target of ['warm', 'cold']) {
        for (const host of ['x y', 'evil.example/path', 'user@evil.example', 'x:99999999', 'é.example']) {
          const c = await RawClient.open(r.h.url);
          c.write(Buffer.from(`GET /smart_proxy/${target}/-/a HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`, 'utf8'));
          const res = await c.response();
          assert.equal(res.status, 400, `${host}: ${res.body}`);
          assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_ROUTE_BAD_HOST');
          c.close();
        }
      }
      for (const host of ['warm.example:8080', '[::1]:80', '127.0.0.1', 'xn--bcher-kva.example']) {
        const c = await RawClient.open(r.h.url);
        c.write(`GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
        const res = await c.response();
        assert.equal(res.status, 200, host);
        assert.equal((JSON.parse(res.body) as Echo).headers['x-forwarded-host'], host);
        c.close();
      }
      assert.equal(r.cold.calls.start, 0);
    } finally {
      await r.h.close();
    }
  });

  it('an unknown expectation gets 417 with a problem body; its body is drained, nothing forwarded or woken', async () => {
    const r = await rig();
    try {
      for (const target of ['warm', 'cold', 'secret']) {
        const c = await RawClient.open(r.h.url);
        const closed = closedOf(c);
        const err = await sendAll(c, Buffer.concat([
          Buffer.from(`PUT /smart_proxy/${target}/-/a HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: ${2 * MiB}\r\n\r\n`), Buffer.alloc(2 * MiB, 0x61)]));
        assert.equal(err, undefined, `the upload was cut: ${String(err)}`);
        const res = await c.response();
        assert.equal(res.status, 417, res.body);
        assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_EXPECTATION_FAILED');
        assert.match(res.head, /\r\nconnection: close/i);
        assert.deepEqual(await closed, { fin: true, error: undefined });
      }
      assert.equal(r.backendBytes(), '');
      assert.equal(r.cold.calls.start, 0);
    } finally {
      await r.h.close();
    }
  });
});

describe('a client that half-closes (shutdown(SHUT_WR)) after its request', { timeout: 60_000 }, () => {
  async function halfClosed(h: Harness, request: string): Promise<string> {
    const socket = connect({ port: Number(new URL(h.url).port), host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => { text += d; });
    socket.on('error', () => undefined);
    socket.end(request);
    await Promise.race([once(socket, 'close'), new Promise((_r, reject) => setTimeout(() => reject(new Error('no close in 5 s')), 5_000).unref())]);
    return text;
  }

  it('still reads the answer of a warm request, with or without a body, and of a refused one', async () => {
    const r = await rig();
    try {
      const get = await halfClosed(r.h, 'GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.deepEqual(statuses(get), [200]);
      const post = await halfClosed(r.h, 'POST /smart_proxy/warm/-/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc');
      assert.deepEqual(statuses(post), [200]);
      assert.match(post, /"body":"abc"/);
      const two = await halfClosed(r.h, 'GET /smart_proxy/warm/-/c HTTP/1.1\r\nHost: x\r\n\r\nGET /smart_proxy/warm/-/d HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.deepEqual(echoedUrls(two), ['/c', '/d']);
      assert.deepEqual(statuses(await halfClosed(r.h, 'GET /smart_proxy/secret/-/e HTTP/1.1\r\nHost: x\r\n\r\n')), [401]);
    } finally {
      await r.h.close();
    }
  });

  it('gives up a held request, as when its client leaves: nothing is forwarded once the resource is ready', async () => {
    const r = await rig();
    try {
      const text = await halfClosed(r.h, 'DELETE /smart_proxy/cold/-/held HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(text, '');
      await r.releaseCold();
      const res = await fetch(`${r.h.url}/smart_proxy/cold/-/after`);
      assert.equal(res.status, 200);
      await res.text();
      assert.doesNotMatch(r.backendBytes(), /DELETE/);
    } finally {
      await r.h.close();
    }
  });
});

describe('a client that reads a large download slowly', { timeout: 60_000 }, () => {
  it('holds the backend back (backpressure): what is in flight stays bounded, and every byte arrives', async () => {
    const total = 256 * MiB;
    let written = 0;
    const mimic = new MimicProvider({ backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/') {
        res.end('ok');
        return;
      }
      res.writeHead(200, { 'content-length': String(total) });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = (): void => {
        while (written < total) {
          written += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    } }) });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const socket = connect({ port: Number(new URL(h.url).port), host: '127.0.0.1' });
    try {
      await once(socket, 'connect');
      socket.pause();
      socket.write('GET /smart_proxy/app/-/download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      // The client reads nothing for a second (the slow reader): the backend must be held back
      // with most of the answer unsent (socket buffers and a stream high-water mark at each hop).
      // Without backpressure the proxy would take all 256 MiB into memory within that second.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const inFlight = written;
      assert.ok(inFlight < 32 * MiB, `${inFlight} bytes left the backend for a client that reads nothing`);
      let received = 0;
      socket.on('data', (d: Buffer) => { received += d.length; });
      socket.resume();
      await once(socket, 'end');
      assert.ok(received > total && received < total + 1_000, `received ${received}`);
    } finally {
      socket.destroy();
      await h.close();
    }
  });
});

describe('hop-by-hop fields', { timeout: 60_000 }, () => {
  it('a client cannot make the proxy drop its own fields by listing them in Connection', async () => {
    const r = await rig();
    try {
      const c = await RawClient.open(r.h.url);
      c.write('GET /smart_proxy/warm/-/a HTTP/1.1\r\nHost: h.example\r\nConnection: close, x-forwarded-for, x-forwarded-host, x-forwarded-proto, x-forwarded-prefix, host\r\n'
        + 'Keep-Alive: timeout=99\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-A\r\nUpgrade: h2c\r\n\r\n');
      const res = await c.response();
      assert.equal(res.status, 200);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.headers['x-forwarded-for'], '127.0.0.1');
      assert.equal(echo.headers['x-forwarded-host'], 'h.example');
      assert.equal(echo.headers['x-forwarded-proto'], 'http');
      assert.equal(echo.headers['x-forwarded-prefix'], '/smart_proxy/warm/-');
      for (const name of ['keep-alive', 'proxy-connection', 'trailer', 'upgrade']) assert.equal(echo.headers[name], undefined, name);
      // The client's own TE goes no further; the proxy asks for trailers itself, as it passes them on.
      assert.equal(echo.headers.te, 'trailers');
      c.close();
    } finally {
      await r.h.close();
    }
  });
});
