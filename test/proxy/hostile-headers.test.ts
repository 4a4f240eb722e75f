/**
 * Headers and targets from untrusted clients (issue 11, item 5), over raw TCP: proxy-claim
 * headers are dropped unless the peer is a trusted proxy, an ambiguous Host is refused,
 * and path forms that some backend resolves as dot segments are refused.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { describe, it } from 'node:test';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';
import { RawClient } from '../helpers/raw-client.ts';

async function rawGet(url: string, target: string, headers: string, version = '1.1'): Promise<{ status: number; head: string; body: string }> {
  const c = await RawClient.open(url);
  try {
    c.write(`GET ${target} HTTP/${version}\r\n${headers}connection: close\r\n\r\n`);
    return await c.response();
  } finally {
    c.close();
  }
}

const SPOOFED = [
  'X-Forwarded-Email: boss@example.com',
  'X-Forwarded-Server: internal',
  'X-Forwarded-Preferred-Username: admin',
  'X_Forwarded_Access_Token: stolen',
  'X-Forwarded-For: 6.6.6.6',
  'X-Forwarded-Port: 443',
  'Forwarded: for=6.6.6.6;proto=https',
  'X-Real-IP: 6.6.6.6',
  'True-Client-IP: 6.6.6.6',
  'X-Original-URL: /admin',
].join('\r\n') + '\r\n';

describe('headers from untrusted clients', () => {
  it('drops every X-Forwarded-* claim, Forwarded and X-Real-IP from an untrusted peer', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const res = await rawGet(h.url, '/smart_proxy/app/g1/who', `host: x\r\n${SPOOFED}x-custom: kept\r\n`);
      assert.equal(res.status, 200, res.body);
      const echo = JSON.parse(res.body) as Echo;
      const names = echo.rawHeaders.filter((_v, i) => i % 2 === 0).map((n) => n.toLowerCase());
      for (const dropped of ['x-forwarded-email', 'x-forwarded-server', 'x-forwarded-preferred-username', 'x_forwarded_access_token', 'x-forwarded-port', 'forwarded', 'x-real-ip', 'true-client-ip', 'x-original-url']) {
        assert.ok(!names.includes(dropped), `${dropped} must not reach the backend`);
      }
      assert.equal(echo.headers['x-forwarded-for'], '127.0.0.1', 'the proxy says who connected');
      assert.equal(echo.headers['x-custom'], 'kept');
    } finally {
      await h.close();
    }
  });

  it('passes them from a trusted proxy, extending X-Forwarded-For', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], trustedProxies: ['127.0.0.0/8'] });
    try {
      const res = await rawGet(h.url, '/smart_proxy/app/g1/who', `host: x\r\n${SPOOFED}`);
      assert.equal(res.status, 200, res.body);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.headers['x-forwarded-email'], 'boss@example.com');
      assert.equal(echo.headers.forwarded, 'for=6.6.6.6;proto=https');
      assert.equal(echo.headers['x-real-ip'], '6.6.6.6');
      assert.equal(echo.headers['x-forwarded-for'], '6.6.6.6, 127.0.0.1');
    } finally {
      await h.close();
    }
  });

  it('refuses two Host headers with 400 and forwards nothing', async () => {
    let seen = 0;
    const mimic = new MimicProvider({
      backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
        if (req.url !== '/') seen++;
        res.end('ok');
      } }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      assert.equal((await rawGet(h.url, '/smart_proxy/app/g1/warm', 'host: x\r\n')).status, 200);
      const res = await rawGet(h.url, '/smart_proxy/app/g1/x', 'host: a.example\r\nhost: b.example\r\n');
      assert.equal(res.status, 400);
      assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_ROUTE_BAD_HOST');
      assert.equal(seen, 1);
    } finally {
      await h.close();
    }
  });

  it('answers 501 to a transfer coding other than chunked, wakes nothing, and still takes chunked', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const post = async (te: string, body: string): Promise<{ status: number; head: string; body: string }> => {
      const c = await RawClient.open(h.url);
      try {
        c.write(`POST /smart_proxy/app/g1/up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: ${te}\r\nconnection: close\r\n\r\n${body}`);
        return await c.response();
      } finally {
        c.close();
      }
    };
    try {
      // Node's parser passes these on de-chunked; the bytes left would still be gzip- or
      // otherwise coded, so forwarding them without the coding would change the body.
      for (const te of ['gzip, chunked', 'deflate,chunked', 'identity, chunked', 'x-\u00e9, chunked']) {
        const res = await post(te, '5\r\nhello\r\n0\r\n\r\n');
        assert.equal(res.status, 501, `${te}: ${res.body}`);
        const problem = JSON.parse(res.body) as { code: string; detail: string };
        assert.equal(problem.code, 'SP_BODY_UNSUPPORTED_CODING');
        assert.match(problem.detail, /^[\x20-\x7e]+$/, 'the detail stays printable');
      }
      assert.equal(mimic.calls.start, 0, 'a refused request wakes nothing');
      for (const te of ['chunked', 'Chunked', ' CHUNKED ']) {
        const res = await post(te, '5\r\nhello\r\n0\r\n\r\n');
        assert.equal(res.status, 200, `${te}: ${res.body}`);
        assert.equal((JSON.parse(res.body) as Echo).body, 'hello');
      }
    } finally {
      await h.close();
    }
  });

  it('refuses TRACE with 405 before anything wakes: an echo would show the headers added for the backend', async () => {
    let echoed = 0;
    const mimic = new MimicProvider({
      backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
        if (req.url !== '/') echoed++;
        res.end('echo');
      } }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const send = async (method: string, target: string): Promise<{ status: number; head: string; body: string }> => {
      const c = await RawClient.open(h.url);
      try {
        c.write(`${method} ${target} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer secret\r\nconnection: close\r\n\r\n`);
        return await c.response();
      } finally {
        c.close();
      }
    };
    try {
      for (const target of ['/smart_proxy/app/g1/x', '/smart_proxy/nope/g1/x', '*']) {
        const res = await send('TRACE', target);
        assert.equal(res.status, 405, `TRACE ${target}: ${res.head}`);
        assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_ROUTE_METHOD_NOT_FORWARDED');
        assert.doesNotMatch(res.body, /secret/);
      }
      // Node's HTTP/1 parser knows no TRACK (IIS's TRACE) and refuses it; over HTTP/2 any
      // method name can arrive, and TRACK gets the 405 above.
      assert.equal((await send('TRACK', '/smart_proxy/app/g1/x')).status, 400);
      assert.equal(mimic.calls.start, 0, 'a refused request wakes nothing');
      // Other methods, unknown ones included, still reach the backend.
      for (const method of ['OPTIONS', 'PROPFIND', 'PATCH']) {
        assert.equal((await send(method, '/smart_proxy/app/g1/x')).status, 200, method);
      }
      assert.equal(echoed, 3);
    } finally {
      await h.close();
    }
  });

  it('accepts an absolute-form target and takes its authority as Host (RFC 9112 §3.2.2)', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const res = await rawGet(h.url, 'http://front.example:8443/smart_proxy/app/g1/who?q=1', 'host: other.example\r\n');
      assert.equal(res.status, 200, res.body);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.url, '/who?q=1', 'forwarded in origin-form');
      assert.equal(echo.headers['x-forwarded-host'], 'front.example:8443', 'the target\'s authority, not the Host field');
      assert.equal(echo.headers['x-forwarded-prefix'], '/smart_proxy/app/g1');
      // HTTP/1.0 with no Host field at all, a scheme in capitals, an IPv6 literal: the same.
      const v6 = await rawGet(h.url, 'HTTPS://[::1]:9/smart_proxy/app/g1/', '', '1.0');
      assert.equal(v6.status, 200, v6.body);
      assert.equal((JSON.parse(v6.body) as Echo).headers['x-forwarded-host'], '[::1]:9');
    } finally {
      await h.close();
    }
  });

  it('refuses absolute-form targets with userinfo, no host or another scheme, and keeps two Host fields ambiguous', async () => {
    let seen = 0;
    const mimic = new MimicProvider({
      backend: (key) => startEchoServer({ name: key, handler: (_req: IncomingMessage, res: ServerResponse) => {
        seen++;
        res.end('ok');
      } }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      for (const target of ['http://user:secret@x.example/smart_proxy/app/g1/', 'http:///smart_proxy/app/g1/', 'http://x.example:8o/smart_proxy/app/g1/', 'ftp://x.example/smart_proxy/app/g1/']) {
        const res = await rawGet(h.url, target, 'host: x\r\n');
        assert.equal(res.status, 400, `${target} must be refused`);
        assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_ROUTE_BAD_TARGET', target);
        assert.ok(!res.body.includes('secret'), 'userinfo is not echoed back');
      }
      const two = await rawGet(h.url, 'http://x.example/smart_proxy/app/g1/', 'host: a.example\r\nhost: b.example\r\n');
      assert.equal(two.status, 400);
      assert.equal((JSON.parse(two.body) as { code: string }).code, 'SP_ROUTE_BAD_HOST');
      assert.equal(seen, 0, 'nothing was forwarded');
    } finally {
      await h.close();
    }
  });

  it('sends no empty X-Forwarded-Host for an HTTP/1.0 request without Host', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const res = await rawGet(h.url, '/smart_proxy/app/g1/old', '', '1.0');
      assert.equal(res.status, 200, res.body);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.url, '/old');
      assert.equal(echo.headers['x-forwarded-host'], undefined);
      assert.equal(echo.headers['x-forwarded-proto'], 'http');
    } finally {
      await h.close();
    }
  });

  it('refuses path forms that backends resolve as dot segments; keeps harmless look-alikes', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const refused = [
        '/smart_proxy/app/g1/..;/admin', // Tomcat/Spring path parameters
        '/smart_proxy/app/g1/a/..;jsessionid=1/b',
        '/smart_proxy/app/g1/.;/x',
        '/smart_proxy/app/g1/%252e%252e/admin', // decoded twice
        '/smart_proxy/app/g1/%25252E%25252e/admin', // three times
        '/smart_proxy/app/g1/a%252f..%252fb',
        '/smart_proxy/app/g1/%c0%ae%c0%ae/admin', // overlong UTF-8
        '/smart_proxy/app/g1/%25u002e%25u002e/admin', // IIS %u, double-encoded
        '/smart_proxy/app/g1/a/%ef%bc%8e%ef%bc%8e/b', // full-width dots (NFKC)
        '/smart_proxy/app/g1/%255c..%255cb',
      ];
      for (const target of refused) {
        const res = await rawGet(h.url, target, 'host: x\r\n');
        assert.equal(res.status, 400, `${target} must be refused`);
        assert.equal((JSON.parse(res.body) as { code: string }).code, 'SP_ROUTE_BAD_TARGET');
      }
      for (const target of ['/smart_proxy/app/g1/a;b/c', '/smart_proxy/app/g1/100%25', '/smart_proxy/app/g1/...', '/smart_proxy/app/g1/..a/.b']) {
        const res = await rawGet(h.url, target, 'host: x\r\n');
        assert.equal(res.status, 200, `${target} is a harmless path: ${res.body}`);
        assert.equal((JSON.parse(res.body) as Echo).url, target.slice('/smart_proxy/app/g1'.length), 'forwarded byte for byte');
      }
    } finally {
      await h.close();
    }
  });
});

describe('answers from a backend that breaks HTTP framing', () => {
  it('relays a 204 or a HEAD answer whole when the backend sends a length or a body after it; names a malformed answer', async () => {
    const mimic = new MimicProvider({
      backend: (key) => startEchoServer({ name: key, handler: (req: IncomingMessage, res: ServerResponse) => {
        // Raw bytes on the backend's socket: node:http would not send them.
        if (req.url === '/no-content') res.socket?.write('HTTP/1.1 204 No Content\r\ncontent-length: 5\r\nx-kept: yes\r\n\r\nhello');
        else if (req.url === '/head' && req.method === 'HEAD') res.socket?.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello');
        else if (req.url === '/cut') res.socket?.end('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc');
        else if (req.url === '/malformed') res.socket?.write('HTTP/1.1 200 OK\r\nx-a: a\u0000backend-secret\r\ncontent-length: 2\r\n\r\nok');
        else res.end('ok');
      } }),
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      for (let round = 0; round < 2; round++) {
        const res = await rawGet(h.url, '/smart_proxy/app/g1/no-content', 'host: x\r\n');
        assert.equal(res.status, 204, res.head);
        assert.match(res.head, /x-kept: yes/i);
        assert.doesNotMatch(res.head, /content-length/i, 'a 204 carries no Content-Length (RFC 9110 §8.6)');
        assert.equal(res.body, '');
      }
      const c = await RawClient.open(h.url);
      try {
        c.write('HEAD /smart_proxy/app/g1/head HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
        const head = await c.response(5_000, { noBody: true });
        assert.equal(head.status, 200);
        assert.match(head.head, /content-length: 5/i, 'HEAD keeps the length of what GET would send');
      } finally {
        c.close();
      }
      // Not HTTP at all: 502, saying what broke, without the backend's bytes.
      const bad = await rawGet(h.url, '/smart_proxy/app/g1/malformed', 'host: x\r\n');
      assert.equal(bad.status, 502);
      const problem = JSON.parse(bad.body) as { code: string; cause: string; detail: string };
      assert.equal(problem.cause, 'malformed-response');
      assert.match(problem.detail, /not valid HTTP\/1\.1 \(Invalid header value char\)/);
      assert.doesNotMatch(bad.body, /backend-secret/);
      // Broken off mid-body: the client's connection is cut (its only signal), and the
      // operator is told which backend did it.
      const cut = await RawClient.open(h.url);
      try {
        cut.write('GET /smart_proxy/app/g1/cut HTTP/1.1\r\nhost: x\r\n\r\n');
        await cut.until((_r, closed) => closed, 'the connection to be cut');
        assert.match(cut.received, /^HTTP\/1\.1 200 OK\r\n[\s\S]*content-length: 10\r\n[\s\S]*\r\n\r\nabc$/i);
      } finally {
        cut.close();
      }
      const broken = h.logs.filter((l) => l.msg?.startsWith('backend broke off its answer') === true);
      assert.equal(broken.length, 1, JSON.stringify(h.logs.map((l) => l.msg)));
      assert.match(JSON.stringify(broken[0]!.obj), /"backend":"http:\/\/127\.0\.0\.1:\d+"/);
      // The broken backend connections were dropped, not reused: the next answer is clean.
      const after = await rawGet(h.url, '/smart_proxy/app/g1/plain', 'host: x\r\n');
      assert.equal(after.status, 200);
      assert.equal(after.body, 'ok');
    } finally {
      await h.close();
    }
  });
});
