/**
 * A forward leaves nothing of its own on the client's response once it has settled: a
 * released request's response is old (it waited through a boot), and a listener left on it
 * would keep the forward's objects alive through every minor GC until a major one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { UpstreamPools, type ForwardOutcome } from '../../src/proxy/forward-http.ts';

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

function get(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/x' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A front that forwards to `origin` and reports the response's close listeners before and after the forward settled. */
async function front(pools: UpstreamPools, origin: string): Promise<{ server: Server; port: number; seen: Promise<{ before: number; after: number; outcome: ForwardOutcome | Error }> }> {
  let report!: (v: { before: number; after: number; outcome: ForwardOutcome | Error }) => void;
  const seen = new Promise<{ before: number; after: number; outcome: ForwardOutcome | Error }>((r) => { report = r; });
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const before = res.listenerCount('close');
    pools.forward(req, res, origin, '/x', ['host', 'backend'], undefined, (outcome) => {
      report({ before, after: res.listenerCount('close'), outcome });
      if (outcome !== 'done' && !res.headersSent) res.writeHead(502).end();
    });
  });
  return { server, port: await listen(server), seen };
}

const options = { connectTimeoutMs: 2_000, headersTimeoutMs: 5_000, bodyTimeoutMs: 5_000, connectionsPerBackend: 4 };

test('a forward that got its answer takes its close listener off the response', async () => {
  const backend = createServer((_req, res) => res.end('ok'));
  const backendPort = await listen(backend);
  const pools = new UpstreamPools(options);
  const f = await front(pools, `http://127.0.0.1:${backendPort}`);
  try {
    assert.equal(await get(f.port), 200);
    const { before, after, outcome } = await f.seen;
    assert.equal(outcome, 'done');
    assert.equal(after, before);
  } finally {
    f.server.close();
    backend.close();
    await pools.close();
  }
});

test('a forward whose backend could not be reached takes it off too (the next send adds its own)', async () => {
  // A port that was free a moment ago: nothing listens there.
  const probe = createServer();
  const deadPort = await listen(probe);
  probe.close();
  await once(probe, 'close');
  const pools = new UpstreamPools(options);
  const f = await front(pools, `http://127.0.0.1:${deadPort}`);
  try {
    assert.equal(await get(f.port), 502);
    const { before, after, outcome } = await f.seen;
    assert.equal(outcome, 'unreachable');
    assert.equal(after, before);
  } finally {
    f.server.close();
    await pools.close();
  }
});
