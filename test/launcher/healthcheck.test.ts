/**
 * The container health check (`node src/healthcheck.js`, the Containerfile's HEALTHCHECK), as
 * the container runtime runs it: a child process whose exit code is the verdict. It runs every
 * 10 s for the container's life, so it must also stay cheap: no TypeScript, no bundled undici.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../../src/healthcheck.js', import.meta.url));

function check(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [script, ...args], { env: { PATH: process.env.PATH, ...env }, timeout: 20_000 }, (err, out, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      if (code === -1) reject(err ?? new Error('no exit code'));
      else resolve({ code, out, err: stderr });
    });
  });
}

describe('health check (src/healthcheck.js)', { timeout: 60_000 }, () => {
  let server: Server;
  let base: string;
  const sockets = new Set<Socket>();
  before(async () => {
    server = createServer((req, res) => {
      if (req.url === '/hang') return; // accepted, never answered
      res.statusCode = req.url === '/down' ? 503 : 404;
      res.end();
    });
    server.on('connection', (s: Socket) => { sockets.add(s); s.once('close', () => sockets.delete(s)); });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });

  it('healthy on any answer below 500 (the proxy answers 404 at "/"), from --url or the environment', async () => {
    assert.deepEqual(await check(['--url', `${base}/`]), { code: 0, out: `${base}/: 404\n`, err: '' });
    const port = String((server.address() as AddressInfo).port);
    assert.equal((await check([], { SMART_PROXY_PORT: port })).code, 0);
    assert.equal((await check([], { SMART_PROXY_HEALTHCHECK_URL: `${base}/x` })).code, 0);
  });

  it('unhealthy on 5xx, on a refused connection, on a bad URL, and on no answer within 3 s', async () => {
    assert.equal((await check(['--url', `${base}/down`])).code, 1);
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const deadPort = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, 'close');
    const refused = await check(['--url', `http://127.0.0.1:${deadPort}/`]);
    assert.equal(refused.code, 1);
    assert.match(refused.err, /ECONNREFUSED/);
    assert.match((await check(['--url', 'not a url'])).err, /not a URL/);
    assert.match((await check(['--url', 'ftp://127.0.0.1/'])).err, /ftp: is not http: or https:/);
    const started = performance.now();
    const hung = await check(['--url', `${base}/hang`]);
    assert.equal(hung.code, 1);
    assert.match(hung.err, /no answer within 3 s/);
    assert.ok(performance.now() - started < 10_000, 'bounded');
  });

  it('loads neither a TypeScript file nor Node\'s bundled undici', async () => {
    const run = `const { healthcheck } = await import(${JSON.stringify(new URL('../../src/healthcheck.js', import.meta.url).href)});
      process.stdout.write(String(await healthcheck(${JSON.stringify(`${base}/`)})) + '\\n');
      process.stdout.write(JSON.stringify(process.moduleLoadList.filter((m) => m.includes('deps/undici') || m.includes('deps/amaro'))));`;
    // Asynchronously: this process's server must answer the child meanwhile.
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', run], { encoding: 'utf8', timeout: 30_000 }, (err, stdout) => (err === null ? resolve(stdout) : reject(new Error(err.message))));
    });
    const lines = out.trim().split('\n');
    assert.equal(lines.at(-2), '0', 'the check itself passed');
    assert.deepEqual(JSON.parse(lines.at(-1) ?? ''), []);
  });
});
