import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as h2connect, constants, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import WebSocket, { WebSocketServer } from 'ws';
import type { Echo } from '../helpers/echo-server.ts';
import { startEchoServer } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';
import { requireBinary } from '../helpers/system.ts';
import type { ReloadOutcome } from '../../src/proxy/tls.ts';

/** A throw-away CA and leaf certificates for 127.0.0.1/localhost, made with the openssl CLI. */
let dir: string;
let caPem: Buffer;

function openssl(...args: string[]): void {
  execFileSync(requireBinary('openssl', 'openssl'), args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeLeaf(name: string): { cert: string; key: string } {
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', 'san.ext');
  return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

/** The SHA-256 fingerprint of the certificate a new TLS handshake gets. */
async function servedFingerprint(url: string): Promise<string> {
  const { port } = new URL(url);
  const socket = tlsConnect({ host: '127.0.0.1', port: Number(port), ca: caPem, servername: 'localhost', ALPNProtocols: ['http/1.1'] });
  await once(socket, 'secureConnect');
  const fp = socket.getPeerCertificate().fingerprint256;
  socket.destroy();
  return fp;
}

function fingerprintOf(pemFile: string): string {
  return execFileSync(requireBinary('openssl', 'openssl'), ['x509', '-in', pemFile, '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' }).trim().split('=')[1] ?? '';
}

function h2request(session: ClientHttp2Session, headers: Record<string, string | string[]>, body?: Buffer): Promise<{ headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    let text = '';
    let head: IncomingHttpHeaders = {};
    stream.setEncoding('utf8');
    stream.on('response', (h) => { head = h; });
    stream.on('data', (d: string) => { text += d; });
    stream.on('end', () => resolve({ headers: head, body: text }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

describe('TLS front: HTTP/2 and HTTP/1.1 by ALPN', () => {
  let leafA: { cert: string; key: string };
  let leafB: { cert: string; key: string };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sp-tls-'));
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=smart-proxy test CA');
    caPem = readFileSync(join(dir, 'ca.pem'));
    leafA = makeLeaf('leaf-a');
    leafB = makeLeaf('leaf-b');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('serves an HTTP/2 client through TLS to a cold resource', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: leafA.cert, keyFile: leafA.key } });
    const session = h2connect(h.url, { ca: caPem });
    try {
      await once(session, 'connect');
      assert.equal(session.alpnProtocol, 'h2');
      const body = Buffer.from('x'.repeat(100_000));
      // No content-length: an HTTP/2 body is announced by the stream alone.
      const pending = h2request(session, {
        ':method': 'POST', ':path': '/smart_proxy/app/g1/api/items?x=1', 'content-type': 'text/plain', cookie: ['a=1', 'b=2'], 'x-custom': 'kept',
      }, body);
      await mimic.started();
      await until(() => h.manager.heldTotal === 1);
      assert.equal(h.proxy.heldBytes, 1024 * 1024, 'an HTTP/2 body of unknown length counts the estimate');
      // A second held stream that the client cancels: the hold ends, the session lives on.
      const cancelled = session.request({ ':path': '/smart_proxy/app/g1/cancelled' });
      cancelled.on('error', () => undefined);
      await until(() => h.manager.heldTotal === 2);
      cancelled.close(constants.NGHTTP2_CANCEL);
      await until(() => h.manager.heldTotal === 1);
      await mimic.release('*');
      const res = await pending;
      assert.equal(res.headers[':status'], 200);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.method, 'POST');
      assert.equal(echo.url, '/api/items?x=1');
      assert.equal(echo.bodySha256, createHash('sha256').update(body).digest('hex'));
      assert.equal(echo.headers['x-custom'], 'kept');
      assert.equal(echo.headers.cookie, 'a=1; b=2', 'split HTTP/2 cookies become one field (RFC 9113 §8.2.3)');
      assert.equal(echo.headers['x-forwarded-proto'], 'https');
      assert.match(String(echo.headers['x-forwarded-host']), /^127\.0\.0\.1:\d+$/, 'from :authority');
      assert.ok(!echo.rawHeaders.some((n, i) => i % 2 === 0 && n.startsWith(':')), 'no pseudo-header reaches the backend');

      // Errors are answered over HTTP/2 too; CONNECT has no place here either.
      const connectRes = await h2request(session, { ':method': 'CONNECT', ':authority': 'example.com:443' });
      assert.equal(connectRes.headers[':status'], 405);
      const missing = await h2request(session, { ':path': '/smart_proxy/nope/g1/' });
      assert.equal(missing.headers[':status'], 404);
      assert.equal(missing.headers['content-type'], 'application/problem+json');
    } finally {
      session.close();
      await h.close();
    }
  });

  it('serves HTTP/1.1 and WebSockets on the same port', async () => {
    const mimic = new MimicProvider({
      bootMs: 0,
      backend: async (key) => {
        const echo = await startEchoServer({ name: key });
        new WebSocketServer({ server: echo.server }).on('connection', (ws) => ws.on('message', (d) => ws.send(d)));
        return echo;
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: leafA.cert, keyFile: leafA.key } });
    try {
      const get = (alpn: string[] | undefined): Promise<{ status: number; alpn: string | false | null; body: string }> => new Promise((resolve, reject) => {
        const req = httpsRequest(`${h.url}/smart_proxy/app/g1/h1`, { ca: caPem, agent: false, ...(alpn ? { ALPNProtocols: alpn } : {}) }, (r) => {
          let body = '';
          r.setEncoding('utf8');
          r.on('data', (d: string) => { body += d; });
          r.on('end', () => resolve({ status: r.statusCode ?? 0, alpn: (r.socket as TLSSocket).alpnProtocol, body }));
        });
        req.on('error', reject);
        req.end();
      });
      const res = await get(['http/1.1']);
      assert.equal(res.status, 200);
      assert.equal(res.alpn, 'http/1.1');
      assert.equal((JSON.parse(res.body) as Echo).headers['x-forwarded-proto'], 'https');
      // A client that offers no ALPN at all gets HTTP/1.1 too.
      const noAlpn = await get(undefined);
      assert.equal(noAlpn.status, 200);
      assert.equal(noAlpn.alpn, false);

      const ws = new WebSocket(`${h.url.replace('https', 'wss')}/smart_proxy/app/g1/ws`, { ca: caPem });
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve((d as Buffer).toString())));
      ws.send('over tls');
      assert.equal(await echoed, 'over tls');
      const closed = once(ws, 'close');
      ws.close(1000);
      await closed;
    } finally {
      await h.close();
    }
  });

  it('streams SSE events one by one to an HTTP/2 client', async () => {
    let upstream: ServerResponse | undefined;
    const mimic = new MimicProvider({
      bootMs: 0,
      backend: (key) => startEchoServer({
        name: key,
        handler: (req, res) => {
          if (req.url !== '/events') return void res.end('ok');
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.flushHeaders();
          upstream = res;
        },
      }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: leafA.cert, keyFile: leafA.key } });
    const session = h2connect(h.url, { ca: caPem });
    try {
      const stream = session.request({ ':path': '/smart_proxy/app/g1/events' });
      const [head] = await once(stream, 'response') as [IncomingHttpHeaders];
      assert.equal(head[':status'], 200);
      assert.equal(head['content-type'], 'text/event-stream');
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => { text += d; });
      await until(() => upstream !== undefined);
      for (let i = 1; i <= 3; i++) {
        const event = `data: ${i}\n\n`;
        upstream!.write(event);
        await until(() => text.endsWith(event));
      }
      upstream!.end();
      await once(stream, 'end');
    } finally {
      session.close();
      await h.close();
    }
  });

  it('passes a backend\'s trailer fields to an HTTP/2 client, and forwards its TE: trailers', async () => {
    const seenTe: Array<string | string[] | undefined> = [];
    const mimic = new MimicProvider({
      bootMs: 0,
      backend: (key) => startEchoServer({
        name: key,
        handler: (req, res) => {
          if (req.url !== '/rpc') return void res.end('ok');
          seenTe.push(req.headers.te);
          res.writeHead(200, { 'content-type': 'application/grpc' });
          res.write('message');
          res.addTrailers({ 'grpc-status': '0', 'grpc-message': 'fine', 'set-cookie': 'a=1' });
          res.end();
        },
      }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: leafA.cert, keyFile: leafA.key } });
    const session = h2connect(h.url, { ca: caPem });
    try {
      const stream = session.request({ ':method': 'POST', ':path': '/smart_proxy/app/g1/rpc', te: 'trailers', 'content-type': 'application/grpc' });
      let t: IncomingHttpHeaders = {};
      stream.on('trailers', (got: IncomingHttpHeaders) => { t = got; });
      const ended = once(stream, 'end');
      stream.end('request');
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => { text += d; });
      await ended;
      assert.equal(text, 'message');
      assert.equal(t['grpc-status'], '0');
      assert.equal(t['grpc-message'], 'fine');
      assert.equal(t['set-cookie'], undefined, 'no Set-Cookie from a trailer section');
      assert.deepEqual(seenTe, ['trailers']);
    } finally {
      session.close();
      await h.close();
    }
  });

  it('picks up a new certificate without a restart; open sessions keep working', { timeout: 60_000 }, async () => {
    // Files the test may replace, like a certificate manager does (write beside, then rename).
    const live = mkdtempSync(join(dir, 'live-'));
    const certFile = join(live, 'tls.crt');
    const keyFile = join(live, 'tls.key');
    writeFileSync(certFile, readFileSync(leafA.cert));
    writeFileSync(keyFile, readFileSync(leafA.key));
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile, keyFile } });
    const session = h2connect(h.url, { ca: caPem });
    try {
      assert.equal(await servedFingerprint(h.url), fingerprintOf(leafA.cert));
      assert.equal((await h2request(session, { ':path': '/smart_proxy/app/g1/before' })).headers[':status'], 200);

      const outcomes: ReloadOutcome[] = [];
      h.proxy.tls?.onReload((o) => outcomes.push(o));
      // Key first, then certificate: in between the pair does not match, and a reload that
      // runs then must keep the old pair rather than fail handshakes.
      writeFileSync(join(live, 'tls.key.new'), readFileSync(leafB.key));
      renameSync(join(live, 'tls.key.new'), keyFile);
      writeFileSync(join(live, 'tls.crt.new'), readFileSync(leafB.cert));
      renameSync(join(live, 'tls.crt.new'), certFile);

      const wanted = fingerprintOf(leafB.cert);
      let seen = 0;
      for (;;) {
        await until(() => outcomes.length > seen);
        seen = outcomes.length;
        if (outcomes.at(-1)?.ok === true && await servedFingerprint(h.url) === wanted) break;
      }
      // The session opened before the reload still works.
      assert.equal((await h2request(session, { ':path': '/smart_proxy/app/g1/after' })).headers[':status'], 200);
    } finally {
      session.close();
      await h.close();
    }
  });

  it('refuses to start with a certificate and key that do not match', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    await assert.rejects(
      startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: leafA.cert, keyFile: leafB.key } }),
      (err: Error & { code?: string }) => err.code === 'SP_CONFIG_INVALID' && /do not form a usable pair/.test(err.message),
    );
    await assert.rejects(
      startHarness({ resources: [{ id: 'app', provider: mimic }], tls: { certFile: join(dir, 'missing.pem'), keyFile: leafA.key } }),
      (err: Error & { code?: string }) => err.code === 'SP_CONFIG_INVALID' && /cannot read/.test(err.message),
    );
  });
});
