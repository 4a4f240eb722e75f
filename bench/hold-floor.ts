/**
 * The floor of the holding benchmark: a bare `node:http` server that holds every request
 * until told (IPC "release"), so that Smart Proxy's memory per held request, and its release,
 * can be read against what Node itself costs.
 *
 * Without `--forward` it answers every held request itself on "release" (Node's HTTP server
 * alone). With `--forward ORIGIN` it is a bare forwarding proxy (node:http + one undici Pool,
 * dispatch API, one handler object per request, as bench/bare-proxy.ts) that on "release"
 * forwards every held request to ORIGIN: at most `--concurrency N` in flight (Smart Proxy's
 * release ramp, whose default is 64; each finished forward lets the next one go), or all at
 * once with `--concurrency 0`. It has no routing, identity, access checks or X-Forwarded-*:
 * what Smart Proxy's release costs beyond it is the cost of its features.
 *
 * On "release" it answers "released" with the time it got the message (nowMs, comparable
 * across processes): the floor's "ready".
 *
 * usage: node --expose-gc bench/hold-floor.ts [--forward ORIGIN] [--concurrency 64]
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { BareForward, withoutHop } from './lib/bare-forward.ts';
import { heapCounts } from './lib/heap-counts.ts';
import { nowMs } from './lib/ipc.ts';

const { values } = parseArgs({ options: { forward: { type: 'string' }, concurrency: { type: 'string', default: '64' } } });
const limit = Number(values.concurrency);
if (!Number.isInteger(limit) || limit < 0) throw new Error(`--concurrency must be a whole number >= 0, not ${values.concurrency}`);
const pool = values.forward === undefined ? undefined : new Pool(values.forward, { connections: 256, keepAliveTimeout: 4_000 });

interface Held { readonly req: IncomingMessage; readonly res: ServerResponse }
const held: Held[] = [];
let next = 0;
let inFlight = 0;

/** A forward is over: the next held request may go. */
function finished(): void {
  inFlight--;
  pump();
}

function forward({ req, res }: Held): void {
  inFlight++;
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool!.dispatch({ method: req.method as 'GET', path: req.url ?? '/', headers: withoutHop(req.headers), body: hasBody ? req : null }, new BareForward(res, finished));
}

/** Lets held requests go while slots are free (all at once when there is no limit). */
function pump(): void {
  while (next < held.length && (limit === 0 || inFlight < limit)) {
    const h = held[next]!;
    held[next++] = undefined as unknown as Held; // forwarded: not kept alive by the list
    forward(h);
  }
  if (next === held.length) {
    held.length = 0;
    next = 0;
  }
}

const server = createServer({ requestTimeout: 0 }, (req, res) => {
  held.push({ req, res });
});
server.listen(0, '127.0.0.1', () => {
  const addr = server.address();
  process.send?.({ type: 'ready', port: typeof addr === 'object' && addr !== null ? addr.port : 0 });
});
process.on('message', (msg: { type: string }) => {
  if (msg.type === 'held') process.send?.({ type: 'held', count: held.length - next });
  if (msg.type === 'gc') {
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ type: 'gc-done', ...process.memoryUsage() });
  }
  if (msg.type === 'heap-counts') void heapCounts().then((counts) => process.send?.({ type: 'heap-counts', counts, ...process.memoryUsage() }));
  if (msg.type === 'release') {
    const at = nowMs();
    if (pool === undefined) for (const { res } of held.splice(0)) res.end('ok');
    else pump();
    process.send?.({ type: 'released', at });
  }
});
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void pool?.close();
  process.disconnect?.();
});
