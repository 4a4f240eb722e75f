/**
 * The load generator of the holding benchmark, in its own process: opens N connections to
 * one URL, each with one request (a ramp of at most `--connecting` connects in flight, so
 * the listen backlog never overflows), reports "sent" once all are written, then the
 * outcome of every response.
 *
 * Two kinds of client: by default each request says `connection: close`, so every answer
 * ends with a TCP teardown the proxy pays for (shutdown, close, the FIN both ways) inside
 * the release. With `--keep-alive` the connections stay open after their answer, as a
 * browser's or an API client's would (one shared keep-alive agent, no limit on sockets, so
 * each held request still has a connection of its own); they stay open after "done" (the
 * driver reads the proxy's CPU time then) until the proxy's keep-alive timeout closes them or
 * the driver stops this process.
 *
 * usage: node bench/hold-client.ts --url URL --count N [--connecting N] [--keep-alive]
 */
import { Agent, request } from 'node:http';
import { parseArgs } from 'node:util';
import { nowMs } from './lib/ipc.ts';

const { values } = parseArgs({ options: {
  url: { type: 'string' }, count: { type: 'string' }, connecting: { type: 'string', default: '200' },
  'keep-alive': { type: 'boolean', default: false },
} });
const url = new URL(values.url ?? '');
const count = Number(values.count);
const maxConnecting = Number(values.connecting);
// Free sockets are kept (no cap, no idle timeout of the agent's own): the proxy's
// keep-alive timeout decides when they close, as with a real client.
const keepAlive = values['keep-alive'] ? new Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: Infinity }) : undefined;

const statuses: Record<string, number> = {};
const errors: Record<string, number> = {};
const doneAt: number[] = [];
let sent = 0;
let finished = 0;
let connecting = 0;
let next = 0;

function finish(): void {
  finished++;
  if (finished === count) {
    process.send?.({ type: 'done', statuses, errors, doneAt });
  }
}

function launch(): void {
  while (connecting < maxConnecting && next < count) {
    next++;
    connecting++;
    const req = keepAlive === undefined
      ? request(url, { agent: false, headers: { connection: 'close' } })
      : request(url, { agent: keepAlive });
    let connected = false;
    const onConnected = (): void => {
      if (connected) return;
      connected = true;
      connecting--;
      sent++;
      if (sent === count) process.send?.({ type: 'sent' });
      launch();
    };
    req.on('socket', (socket) => {
      if (!socket.connecting) onConnected();
      else socket.once('connect', onConnected);
    });
    req.on('response', (res) => {
      const at = nowMs();
      statuses[res.statusCode ?? 0] = (statuses[res.statusCode ?? 0] ?? 0) + 1;
      res.resume();
      res.on('end', () => { doneAt.push(at); finish(); });
      res.on('error', () => { errors.body = (errors.body ?? 0) + 1; finish(); });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? err.message;
      errors[code] = (errors[code] ?? 0) + 1;
      onConnected();
      finish();
    });
    req.end();
  }
}

launch();
