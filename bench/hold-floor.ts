/**
 * The floor of the holding benchmark: a bare `node:http` server that holds every request
 * until told (IPC "release"), so that Smart Proxy's memory per held request can be read
 * against what Node's own HTTP server costs for an open request.
 *
 * usage: node --expose-gc bench/hold-floor.ts
 */
import { createServer, type ServerResponse } from 'node:http';
import { heapCounts } from './lib/heap-counts.ts';

const held: ServerResponse[] = [];
const server = createServer({ requestTimeout: 0 }, (_req, res) => {
  held.push(res);
});
server.listen(0, '127.0.0.1', () => {
  const addr = server.address();
  process.send?.({ type: 'ready', port: typeof addr === 'object' && addr !== null ? addr.port : 0 });
});
process.on('message', (msg: { type: string }) => {
  if (msg.type === 'held') process.send?.({ type: 'held', count: held.length });
  if (msg.type === 'gc') {
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ type: 'gc-done', ...process.memoryUsage() });
  }
  if (msg.type === 'heap-counts') void heapCounts().then((counts) => process.send?.({ type: 'heap-counts', counts, ...process.memoryUsage() }));
  if (msg.type === 'release') for (const res of held.splice(0)) res.end('ok');
});
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  process.disconnect?.();
});
