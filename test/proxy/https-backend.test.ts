/**
 * https:// backends, against a real TLS server with a CA made in the test: the probe and the
 * forward speak TLS, check the certificate against the resource's CA and name (SNI), and an
 * explicit opt-out accepts any certificate. WebSockets are tunnelled to a wss backend too.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { TLSSocket } from 'node:tls';
import WebSocket, { WebSocketServer } from 'ws';
import { createStaticProvider } from '../../src/providers/static/static-provider.ts';
import { startAccessApp, type AccessApp } from '../access/helpers.ts';

describe('https backends', () => {
  let dir: string;
  let backend: Server;
  let wss: WebSocketServer;
  let a: AccessApp;
  const seen: Array<{ url: string; servername: string | false }> = [];

  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sp-backend-tls-'));
    // The backend's certificate names only a host name, not the address it is dialled at.
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=DNS:backend.internal\n');
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=backend test CA');
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=backend.internal');
    openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '1', '-extfile', 'san.ext');
    backend = createServer({ cert: readFileSync(join(dir, 'leaf.pem')), key: readFileSync(join(dir, 'leaf.key')) }, (req, res) => {
      seen.push({ url: req.url ?? '', servername: (req.socket as TLSSocket).servername ?? false });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ url: req.url, user: req.headers['x-forwarded-user'] ?? null }));
    });
    wss = new WebSocketServer({ server: backend });
    wss.on('connection', (ws) => ws.on('message', (m: Buffer) => ws.send(`echo:${m.toString()}`)));
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    const endpoint = `https://127.0.0.1:${(backend.address() as AddressInfo).port}`;
    const caFile = join(dir, 'ca.pem');
    const fails = { bootTimeoutMs: 1_500, holdTimeoutMs: 1_500 };
    a = await startAccessApp({
      resources: {
        verified: { provider: 'tls', access: { public: true }, backendTls: { caFile, servername: 'backend.internal' } },
        insecure: { provider: 'tls', access: { public: true }, backendTls: { insecureSkipVerify: true } },
        untrusted: { provider: 'tls', access: { public: true }, ...fails },
        wrongname: { provider: 'tls', access: { public: true }, backendTls: { caFile, servername: 'other.internal' }, ...fails },
      },
    }, { tls: createStaticProvider({ endpoint }) });
  });
  after(async () => {
    await a.close();
    wss.close();
    backend.closeAllConnections();
    await new Promise((resolve) => backend.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  const p = (path: string): string => `${a.url}/smart_proxy/${path}`;

  it('probes and forwards over TLS, trusting the configured CA, with the configured SNI name', async () => {
    const res = await fetch(p('verified/-/hello?x=1'));
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { url: '/hello?x=1', user: null });
    const mine = seen.filter((s) => s.url === '/hello?x=1');
    assert.equal(mine.length, 1);
    assert.equal(mine[0]?.servername, 'backend.internal', 'SNI carries the configured name');
    // The probe came over TLS too (GET /), with the same name.
    assert.ok(seen.some((s) => s.url === '/' && s.servername === 'backend.internal'));
  });

  it('tunnels a WebSocket to the wss backend', async () => {
    const ws = new WebSocket(`${a.url.replace('http:', 'ws:')}/smart_proxy/verified/-/socket`);
    try {
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      ws.send('hi');
      const [reply] = await new Promise<Buffer[]>((resolve) => ws.once('message', (...args: Buffer[]) => resolve(args)));
      assert.equal(reply?.toString(), 'echo:hi');
    } finally {
      ws.terminate();
    }
  });

  it('an explicit opt-out accepts the unknown CA', async () => {
    const res = await fetch(p('insecure/-/open'));
    assert.equal(res.status, 200);
  });

  it('never sends a request to a backend whose certificate does not verify (unknown CA, wrong name)', async () => {
    for (const id of ['untrusted', 'wrongname']) {
      const res = await fetch(p(`${id}/-/secret`));
      assert.equal(res.status, 504, `${id}: never ready`);
      await res.body?.cancel();
    }
    assert.ok(!seen.some((s) => s.url === '/secret'), 'no request reached the backend over an unverified connection');
  });
});
