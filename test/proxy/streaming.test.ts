import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startEchoServer, type Echo, type EchoServer } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

const MiB = 1024 * 1024;

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

/**
 * A backend whose streaming responses the test drives: each request to /stream opens a
 * response, and `send(text)` writes to the open one.
 */
function drivenBackend(contentType: string): { factory: (key: string) => Promise<EchoServer>; open: Promise<ServerResponse>; } {
  let resolveOpen: (res: ServerResponse) => void = () => undefined;
  const open = new Promise<ServerResponse>((resolve) => { resolveOpen = resolve; });
  const factory = (key: string): Promise<EchoServer> => startEchoServer({
    name: key,
    handler: (req: IncomingMessage, res: ServerResponse) => {
      if (req.url !== '/stream') {
        res.end('ok');
        return;
      }
      res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-cache' });
      res.flushHeaders();
      resolveOpen(res);
    },
  });
  return { factory, open };
}

/** A GET whose body chunks are collected as they arrive. */
function streamingGet(url: string): Promise<{ res: IncomingMessage; text: () => string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { text += d; });
      resolve({ res, text: () => text });
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends `body` chunks with backpressure; resolves with the response and its JSON. */
function upload(url: string, headers: Record<string, string | number>, chunks: Iterable<Buffer>): Promise<{ status: number; headers: IncomingMessage['headers']; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'PUT', headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    void (async () => {
      for (const c of chunks) {
        if (!req.write(c)) await once(req, 'drain');
      }
      req.end();
    })().catch(reject);
  });
}

describe('streaming', () => {
  it('delivers SSE events one by one through a cold start', async () => {
    const backend = drivenBackend('text/event-stream');
    const mimic = new MimicProvider({ manual: true, backend: backend.factory });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const pending = streamingGet(`${h.url}/smart_proxy/app/g1/stream`);
      await mimic.release('*');
      const { res, text } = await pending;
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['content-type'], 'text/event-stream');
      const upstream = await backend.open;
      for (let i = 1; i <= 5; i++) {
        const event = `id: ${i}\ndata: event ${i}\n\n`;
        upstream.write(event);
        // The event must reach the client while the backend has sent nothing after it.
        await until(() => text().endsWith(event));
      }
      assert.equal(text().split('\n\n').length - 1, 5);
      upstream.end();
      await once(res, 'end');
    } finally {
      await h.close();
    }
  });

  it('delivers a chunked response chunk by chunk', async () => {
    const backend = drivenBackend('text/plain');
    const mimic = new MimicProvider({ bootMs: 0, backend: backend.factory });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const { res, text } = await streamingGet(`${h.url}/smart_proxy/app/g1/stream`);
      const upstream = await backend.open;
      let expected = '';
      for (let i = 0; i < 20; i++) {
        const part = `line ${i}\n`;
        expected += part;
        upstream.write(part);
        await until(() => text() === expected);
      }
      upstream.end();
      await once(res, 'end');
      assert.equal(res.headers['transfer-encoding'], 'chunked');
    } finally {
      await h.close();
    }
  });

  it('passes a backend\'s trailer fields on after a chunked body, and asks for them when the client does (TE: trailers)', async () => {
    const seenTe: Array<string | string[] | undefined> = [];
    const factory = (key: string): Promise<EchoServer> => startEchoServer({
      name: key,
      handler: (req: IncomingMessage, res: ServerResponse) => {
        if (req.url === '/t') seenTe.push(req.headers.te);
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum, grpc-status' });
        res.write('part 1\n');
        // Allowed fields pass; framing and cookies in a trailer section never do (RFC 9110 §6.5.1).
        res.addTrailers([['x-checksum', 'sha256=abc'], ['grpc-status', '0'], ['set-cookie', 'a=1'], ['cache-control', 'no-store'], ['__proto__', 'p']]);
        res.end('part 2\n');
      },
    });
    const mimic = new MimicProvider({ bootMs: 0, backend: factory });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const get = (headers: Record<string, string>): Promise<{ res: IncomingMessage; body: string }> => new Promise((resolve, reject) => {
        const req = httpRequest(`${h.url}/smart_proxy/app/g1/t`, { headers }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => { body += d; });
          res.on('end', () => resolve({ res, body }));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
      const asked = await get({ te: 'trailers', connection: 'TE' });
      assert.equal(asked.body, 'part 1\npart 2\n');
      assert.equal(asked.res.headers['transfer-encoding'], 'chunked');
      // (A field named __proto__ must not break the answer; Node's client drops it on reading.)
      assert.deepEqual({ ...asked.res.trailers }, { 'x-checksum': 'sha256=abc', 'grpc-status': '0' });
      const plain = await get({});
      assert.equal(plain.res.trailers['x-checksum'], 'sha256=abc', 'trailers reach a client that did not ask (it may discard them)');
      assert.deepEqual(seenTe, ['trailers', undefined], 'TE: trailers is asked for only when the client asked');
    } finally {
      await h.close();
    }
  });

  it('charges held bodies against the global budget: 503 past it, 413 for a body larger than it', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], maxHeldBytes: MiB, heldBodyEstimateBytes: 200 * 1024 });
    try {
      const url = `${h.url}/smart_proxy/app/g1/up`;
      const bodyA = randomBytes(700 * 1024);
      const a = upload(url, { 'content-length': bodyA.length }, [bodyA]);
      await until(() => h.manager.heldTotal === 1);
      assert.equal(h.proxy.heldBytes, bodyA.length);

      const b = await upload(url, { 'content-length': 400 * 1024 }, []);
      assert.equal(b.status, 503);
      assert.ok(Number(b.headers['retry-after']) >= 1);
      assert.equal((JSON.parse(b.body) as { code: string }).code, 'SP_HOLD_BYTES_FULL');
      const c = await upload(url, { 'content-length': 2 * MiB }, []);
      assert.equal(c.status, 413);
      assert.equal((JSON.parse(c.body) as { code: string }).code, 'SP_BODY_TOO_LARGE');

      // A chunked body counts the estimate; a bodiless request counts nothing.
      const bodyD = randomBytes(300 * 1024);
      const d = upload(url, { 'transfer-encoding': 'chunked' }, [bodyD.subarray(0, 1000), bodyD.subarray(1000)]);
      await until(() => h.manager.heldTotal === 2);
      assert.equal(h.proxy.heldBytes, bodyA.length + 200 * 1024);
      const e = fetch(url);
      await until(() => h.manager.heldTotal === 3);
      assert.equal(h.proxy.heldBytes, bodyA.length + 200 * 1024);

      await mimic.release('*');
      const [ra, rd, re] = await Promise.all([a, d, e]);
      assert.equal(ra.status, 200);
      assert.equal((JSON.parse(ra.body) as Echo).bodySha256, createHash('sha256').update(bodyA).digest('hex'));
      assert.equal(rd.status, 200);
      assert.equal((JSON.parse(rd.body) as Echo).bodySha256, createHash('sha256').update(bodyD).digest('hex'));
      assert.equal(re.status, 200);
      await re.arrayBuffer();
      assert.equal(h.proxy.heldBytes, 0);
    } finally {
      await h.close();
    }
  });

  it('releases the budget when a held uploader leaves', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], maxHeldBytes: MiB });
    try {
      const req = httpRequest(`${h.url}/smart_proxy/app/g1/up`, { method: 'POST', headers: { 'content-length': 900 * 1024 } });
      req.on('error', () => undefined);
      req.write(Buffer.alloc(1000));
      await until(() => h.proxy.heldBytes === 900 * 1024);
      req.destroy();
      await until(() => h.proxy.heldBytes === 0 && h.manager.heldTotal === 0);
    } finally {
      await h.close();
    }
  });

  it('holds ten 50 MiB uploads during a boot with bounded proxy memory; each arrives intact', { timeout: 300_000 }, async () => {
    const uploads = 10;
    const chunksPerUpload = 50;
    const bodyBytes = chunksPerUpload * MiB;
    const maxHeldBytes = uploads * bodyBytes + MiB;
    const backend = await startEchoServer({ name: 'big' });
    const child = fork(fileURLToPath(new URL('../fixtures/held-uploads-proxy.ts', import.meta.url)), [backend.url, String(maxHeldBytes)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const exited = once(child, 'exit');
    try {
      const ask = async <T>(msg: { type: string }, answer: string): Promise<T> => {
        const reply = new Promise<T>((resolve) => {
          const on = (m: { type: string }): void => {
            if (m.type !== answer) return;
            child.off('message', on);
            resolve(m as T);
          };
          child.on('message', on);
        });
        child.send(msg);
        return reply;
      };
      const [listening] = await once(child, 'message') as [{ type: string; url: string }];
      assert.equal(listening.type, 'listening');
      const url = `${listening.url}/smart_proxy/up/-/upload`;
      const memory = (): { rssKiB: number; hwmKiB: number } => {
        const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
        const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
        return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
      };
      const before = memory();

      // Deterministic content, never whole in this process either: 1 MiB of random bytes
      // per upload, each chunk stamped with its index.
      const hashes: string[] = [];
      const results = Array.from({ length: uploads }, (_, u) => {
        const base = randomBytes(MiB);
        const hash = createHash('sha256');
        function* chunks(): Generator<Buffer> {
          for (let i = 0; i < chunksPerUpload; i++) {
            const c = Buffer.from(base);
            c.writeUInt32BE(i, 0);
            hash.update(c);
            yield c;
          }
          hashes[u] = hash.digest('hex');
        }
        return upload(url, { 'content-length': bodyBytes }, chunks());
      });
      let status = await ask<{ heldTotal: number; heldBytes: number }>({ type: 'status' }, 'status');
      while (status.heldTotal < uploads) status = await ask({ type: 'status' }, 'status');
      assert.equal(status.heldBytes, uploads * bodyBytes);

      // One more does not fit the budget.
      const over = await upload(url, { 'content-length': bodyBytes }, []);
      assert.equal(over.status, 503);
      assert.equal((JSON.parse(over.body) as { code: string }).code, 'SP_HOLD_BYTES_FULL');
      const during = memory();

      child.send({ type: 'release' });
      const done = await Promise.all(results);
      const after = memory();
      for (const [u, r] of done.entries()) {
        assert.equal(r.status, 200, r.body);
        const echo = JSON.parse(r.body) as Echo;
        assert.equal(echo.bodyBytes, bodyBytes);
        assert.equal(echo.bodySha256, hashes[u], `upload ${u} arrived intact`);
      }
      const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;
      process.stdout.write(`# proxy memory: RSS before ${mib(before.rssKiB)}, while ${uploads} x ${bodyBytes / MiB} MiB held ${mib(during.rssKiB)}, `
        + `peak (VmHWM) over the whole run ${mib(after.hwmKiB)}; bodies total ${uploads * bodyBytes / MiB} MiB, budget ${(maxHeldBytes / MiB).toFixed(0)} MiB\n`);
      // Held bodies are not buffered: holding them costs little, and even forwarding all ten
      // at once stays far below what buffering them (500 MiB) would take.
      assert.ok(during.rssKiB - before.rssKiB < 64 * 1024, `holding grew RSS by ${mib(during.rssKiB - before.rssKiB)}`);
      assert.ok(after.hwmKiB * 1024 < maxHeldBytes, `peak RSS ${mib(after.hwmKiB)} within the budget`);
      assert.ok(after.hwmKiB - before.rssKiB < 160 * 1024, `peak RSS grew by ${mib(after.hwmKiB - before.rssKiB)}`);
    } finally {
      if (child.connected) child.send({ type: 'close' });
      await exited;
      await backend.close();
    }
  });
});
