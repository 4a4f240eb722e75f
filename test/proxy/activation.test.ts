import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import type { Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';

/** Sends raw bytes and resolves with the whole answer (for targets fetch would normalise). */
function rawRequest(url: string, head: string): Promise<string> {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () => s.write(head));
    let out = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => { out += d; });
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
}

describe('activation path', () => {
  it('holds a cold request, starts once, then forwards path, query, method and body', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const pending = fetch(`${h.url}/smart_proxy/app/g1/api/items?x=1&y=%20z`, {
        method: 'POST', body: 'hello body', headers: { 'content-type': 'text/plain' },
      });
      await mimic.started();
      assert.equal(mimic.calls.start, 1);
      await mimic.release('*');
      const res = await pending;
      assert.equal(res.status, 200);
      const e = await res.json() as Echo;
      assert.equal(e.url, '/api/items?x=1&y=%20z');
      assert.equal(e.method, 'POST');
      assert.equal(e.body, 'hello body');
      assert.equal(mimic.calls.start, 1);
    } finally {
      await h.close();
    }
  });

  it('forwards the body intact to an echo backend and keeps method and headers', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      // Warm it up first, then check the forwarded request in detail on the real echo server.
      const server = await import('../helpers/echo-server.ts');
      const echo = await server.startEchoServer({ name: 'echo' });
      mimic.instances.set('*', { state: 'running', server: echo, answering: true, held: [] });
      const body = Buffer.alloc(200_000, 7);
      // node:http, not fetch: fetch refuses to send a Connection header.
      const res = await new Promise<{ status: number; json: () => Promise<unknown> }>((resolve, reject) => {
        const req = httpRequest(`${h.url}/smart_proxy/app/g1/up/load?q=1`, {
          method: 'PUT',
          headers: { 'x-custom': 'kept', connection: 'keep-alive, x-drop-me', 'x-drop-me': 'gone', 'x-forwarded-for': '6.6.6.6', 'content-length': body.length },
        }, (r) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, json: async () => JSON.parse(Buffer.concat(chunks).toString()) as unknown }));
        });
        req.on('error', reject);
        req.end(body);
      });
      assert.equal(res.status, 200);
      const e = await res.json() as { method: string; url: string; bodyBytes: number; headers: Record<string, string> };
      assert.equal(e.method, 'PUT');
      assert.equal(e.url, '/up/load?q=1');
      assert.equal(e.bodyBytes, body.length);
      assert.equal(e.headers['x-custom'], 'kept');
      assert.equal(e.headers['x-drop-me'], undefined, 'a header named in Connection is hop-by-hop');
      assert.equal(e.headers['x-forwarded-for'], '127.0.0.1', 'an untrusted client cannot set X-Forwarded-For');
      assert.equal(e.headers['x-forwarded-prefix'], '/smart_proxy/app/g1');
      assert.equal(e.headers['x-forwarded-proto'], 'http');
      assert.match(e.headers['x-forwarded-host'] ?? '', /^127\.0\.0\.1:\d+$/);
    } finally {
      await h.close();
    }
  });

  it('200 concurrent cold requests cause exactly one start and all get 200', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const all = Array.from({ length: 200 }, (_, i) => fetch(`${h.url}/smart_proxy/app/g1/r/${i}`));
      await mimic.started();
      await mimic.release('*');
      const responses = await Promise.all(all);
      assert.deepEqual(new Set(responses.map((r) => r.status)), new Set([200]));
      const echoes = await Promise.all(responses.map((r) => r.json() as Promise<Echo>));
      assert.deepEqual(echoes.map((e) => e.url), Array.from({ length: 200 }, (_, i) => `/r/${i}`));
      assert.equal(mimic.calls.start, 1);
    } finally {
      await h.close();
    }
  });

  it('a warm request makes no provider call', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      assert.equal((await fetch(`${h.url}/smart_proxy/app/g1/`)).status, 200);
      const before = { ...mimic.calls };
      for (let i = 0; i < 50; i++) {
        const r = await fetch(`${h.url}/smart_proxy/app/g1/x${i}`);
        assert.equal(r.status, 200);
        await r.text();
      }
      assert.deepEqual(mimic.calls, before);
    } finally {
      await h.close();
    }
  });

  it('answers every held request 504 at the boot timeout', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, bootTimeoutMs: 300 }] });
    try {
      const t0 = Date.now();
      const all = await Promise.all(Array.from({ length: 10 }, () => fetch(`${h.url}/smart_proxy/app/g1/`)));
      const elapsed = Date.now() - t0;
      assert.deepEqual(all.map((r) => r.status), Array(10).fill(504));
      const problem = await all[0]!.json() as { code: string; status: number };
      assert.equal(problem.code, 'SP_BOOT_TIMEOUT');
      assert.equal(all[0]!.headers.get('content-type'), 'application/problem+json');
      assert.ok(all[0]!.headers.get('retry-after'));
      assert.ok(elapsed >= 290 && elapsed < 5000, `took ${elapsed} ms`);
      await Promise.all(all.slice(1).map((r) => r.text()));
    } finally {
      await h.close();
    }
  });

  it('a client that leaves while held does not disturb the others', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const stay = fetch(`${h.url}/smart_proxy/app/g1/stay`);
      await mimic.started();
      const leaver = httpRequest(`${h.url}/smart_proxy/app/g1/leave`);
      leaver.on('error', () => undefined);
      leaver.end();
      // Wait until both are held, then the leaver goes.
      while (h.manager.heldTotal < 2) await new Promise((r) => setImmediate(r));
      leaver.destroy();
      while (h.manager.heldTotal > 1) await new Promise((r) => setImmediate(r));
      await mimic.release('*');
      const res = await stay;
      assert.equal(res.status, 200);
      assert.equal((await res.json() as Echo).url, '/stay');
      assert.equal(h.manager.heldTotal, 0);
    } finally {
      await h.close();
    }
  });

  it('an unknown resource is 404 with no provider call', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const res = await fetch(`${h.url}/smart_proxy/nope/g1/`);
      assert.equal(res.status, 404);
      assert.equal((await res.json() as { code: string }).code, 'SP_ROUTE_NOT_FOUND');
      assert.deepEqual(mimic.calls, { start: 0, inspect: 0, stop: 0 });
    } finally {
      await h.close();
    }
  });

  describe('malformed targets are 400 before any routing', () => {
    let h: Harness;
    const mimic = new MimicProvider();
    before(async () => { h = await startHarness({ resources: [{ id: 'app', provider: mimic }] }); });
    after(async () => { await h.close(); });
    const targets = [
      '/smart_proxy/app/g1/../secret',
      '/smart_proxy/app/g1/%2e%2e/secret',
      '/smart_proxy/app/g1/.%2E/secret',
      '/smart_proxy/app/g1/./x',
      '/smart_proxy/app/g1/x/..',
      '/smart_proxy/app/g1//x',
      '/smart_proxy/app/g1/a\\b',
      '/smart_proxy/app/g1/a%5Cb',
      '/smart_proxy/app/g1/bad%zz',
      '/smart_proxy/app/g1/trunc%4',
      '/smart_proxy/app/g1/nul%00',
      // An absolute-form target is accepted (hostile-headers.test.ts), but not one that
      // smuggles a dot segment past the rewrite, nor another scheme or userinfo.
      'http://evil.example/smart_proxy/app/g1/../../admin',
      'ftp://evil.example/smart_proxy/app/g1/',
      'http://user:pw@evil.example/smart_proxy/app/g1/',
      '*',
      '/smart_proxy/app/g1%2Fg2/x',
      '/smart_proxy/app/bad group/x',
    ];
    for (const target of targets) {
      it(`rejects ${JSON.stringify(target)}`, async () => {
        const answer = await rawRequest(h.url, `GET ${target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`);
        assert.match(answer, /^HTTP\/1\.1 400 /, answer.slice(0, 200));
        assert.deepEqual(mimic.calls, { start: 0, inspect: 0, stop: 0 });
      });
    }
    it('rejects CONNECT with 405', async () => {
      const answer = await rawRequest(h.url, 'CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n');
      assert.match(answer, /^HTTP\/1\.1 405 /);
    });
  });

  it('a port that accepts before its HTTP service answers is not ready until the probe passes', async () => {
    const mimic = new MimicProvider({ acceptBeforeHttp: true, manual: true });
    const h = await startHarness({ resources: [{ id: 'vm', provider: mimic, probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 50 } }] });
    try {
      const pending = fetch(`${h.url}/smart_proxy/vm/g1/x`);
      await mimic.release('*');
      // The provider now says running and the port accepts, but HTTP is silent: still held.
      const inst = [...h.manager.instancesOf('vm')][0]!;
      while (inst.phase !== 'probing') await new Promise((r) => setImmediate(r));
      assert.equal(inst.status, 'starting');
      assert.equal(h.manager.heldTotal, 1);
      mimic.answer('*');
      const res = await pending;
      assert.equal(res.status, 200);
      assert.equal(inst.status, 'ready');
    } finally {
      await h.close();
    }
  });

  it('bounds held requests per resource: past it 503 with Retry-After', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, maxHeldRequests: 3 }] });
    try {
      const held = Array.from({ length: 3 }, () => fetch(`${h.url}/smart_proxy/app/g1/`));
      while (h.manager.heldTotal < 3) await new Promise((r) => setImmediate(r));
      const over = await fetch(`${h.url}/smart_proxy/app/g1/`);
      assert.equal(over.status, 503);
      assert.ok(Number(over.headers.get('retry-after')) >= 1);
      assert.equal((await over.json() as { code: string }).code, 'SP_HOLD_QUEUE_FULL');
      await mimic.release('*');
      assert.deepEqual((await Promise.all(held)).map((r) => r.status), [200, 200, 200]);
    } finally {
      await h.close();
    }
  });

  it('does not read a held request body until the backend is ready, then delivers it intact', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const { port } = new URL(h.url);
      const total = 48 * 1024 * 1024;
      let written = 0;
      let blocked = false;
      const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: '/smart_proxy/app/g1/upload', headers: { 'content-length': String(total) } });
      const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
        req.on('response', (res) => {
          let b = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => { b += d; });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
        });
        req.on('error', reject);
      });
      const chunk = Buffer.alloc(64 * 1024, 1);
      // Write until the socket pushes back: the proxy must not be draining the body.
      await new Promise<void>((resolve) => {
        const pump = (): void => {
          while (written < total) {
            written += chunk.length;
            if (!req.write(chunk)) {
              blocked = true;
              req.once('drain', pump);
              if (blocked) resolve();
              return;
            }
          }
          req.end();
          resolve();
        };
        pump();
      });
      assert.ok(blocked && written < total, `backpressure expected; wrote ${written} of ${total}`);
      await mimic.release('*');
      const res = await response;
      assert.equal(res.status, 200);
      const e = JSON.parse(res.body) as Echo;
      assert.equal(e.url, '/upload');
      assert.equal(e.bodyBytes, total);
      assert.equal(e.bodySha256, createHash('sha256').update(Buffer.alloc(total, 1)).digest('hex'));
    } finally {
      await h.close();
    }
  });

  it('answers a browser with HTML and an API client with problem+json', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const html = await fetch(`${h.url}/smart_proxy/none/g1/`, { headers: { accept: 'text/html,*/*' } });
      assert.equal(html.status, 404);
      assert.match(html.headers.get('content-type') ?? '', /text\/html/);
      const text = await html.text();
      assert.match(text, /<main>/);
      assert.doesNotMatch(text, /at .*\.ts:\d+/, 'no stack trace');
    } finally {
      await h.close();
    }
  });

  it('a single reset of an idempotent request is sent again, without restarting a healthy backend', async () => {
    let resets = 0;
    const mimic = new MimicProvider({
      bootMs: 0,
      handler: (req, res) => {
        // The first request after the probe is cut, as a stale keep-alive socket would be.
        if (req.url === '/flaky' && resets === 0) {
          resets++;
          req.socket.destroy();
          return;
        }
        res.end(`ok ${req.url}`);
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      assert.equal((await fetch(`${h.url}/smart_proxy/app/g1/warm`)).status, 200);
      const inst = [...h.manager.instancesOf('app')][0]!;
      const res = await fetch(`${h.url}/smart_proxy/app/g1/flaky`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'ok /flaky');
      assert.equal(resets, 1);
      assert.equal(inst.status, 'ready', 'one reset is not a crash');
      assert.equal(mimic.calls.start, 1, 'no restart');
    } finally {
      await h.close();
    }
  });
});
