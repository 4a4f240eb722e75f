/**
 * The load generator of the holding benchmark, in its own process: opens N connections to
 * one URL, each with one request (a ramp of at most `--connecting` connects in flight, so
 * the listen backlog never overflows), reports "sent" once all are written, then the
 * outcome of every response.
 *
 * usage: node bench/hold-client.ts --url URL --count N [--connecting N]
 */
import { request } from 'node:http';
import { parseArgs } from 'node:util';
import { nowMs } from './lib/ipc.ts';

const { values } = parseArgs({ options: { url: { type: 'string' }, count: { type: 'string' }, connecting: { type: 'string', default: '200' } } });
const url = new URL(values.url ?? '');
const count = Number(values.count);
const maxConnecting = Number(values.connecting);

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
    const req = request(url, { agent: false, headers: { connection: 'close' } });
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
