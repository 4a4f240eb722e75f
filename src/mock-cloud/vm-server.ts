/**
 * The HTTP server of one mock VM. It exists so that the proxy forwards to a real socket on
 * its own port, exactly as it would to a real VM: a port that refuses connections until the
 * boot completes, then answers every request with an echo of what it received.
 *
 * Reserved paths (everything else is echoed):
 * - `/__sse?n=5&intervalMs=50`: `n` server-sent events, one every `intervalMs`.
 * - `/__stream?chunks=5&intervalMs=10&chunkBytes=0`: a chunked body written piece by piece.
 * - `/__status?code=503`: the echo, with that status.
 * - `/__delay?ms=500`: the echo, after that delay.
 */
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../core/ports.ts';

/** The most body text an echo carries; bytes and SHA-256 always cover the whole body. */
export const ECHO_BODY_CAP_BYTES = 64 * 1024;

/** Upper bounds on the reserved paths' parameters, so that a request cannot pin the VM. */
const MAX_EVENTS = 10_000;
const MAX_INTERVAL_MS = 60_000;
const MAX_CHUNK_BYTES = 1024 * 1024;

export interface VmIdentity {
  readonly id: string;
  readonly asId: string;
  readonly groups: readonly string[];
}

/** What a VM answers to any non-reserved request (JSON). */
export interface VmEcho {
  readonly vm: string;
  readonly asId: string;
  readonly groups: readonly string[];
  readonly method: string;
  /** Raw request target as received (path and query, still percent-encoded). */
  readonly url: string;
  /** Raw path, without the query. */
  readonly path: string;
  /** Parsed query: repeated keys become arrays. */
  readonly query: Readonly<Record<string, string | string[]>>;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Header names and values in arrival order, as Node's `rawHeaders`. */
  readonly rawHeaders: readonly string[];
  /** The body text: UTF-8 when it decodes as UTF-8, else base64; capped at 64 KiB. */
  readonly body: string;
  readonly bodyEncoding: 'utf8' | 'base64';
  readonly bodyTruncated: boolean;
  readonly bodyBytes: number;
  readonly bodySha256: string;
}

export interface VmServer {
  readonly port: number;
  readonly url: string;
  /** Stops listening and destroys every open socket (a VM that is switched off). */
  close(): Promise<void>;
}

/** Starts a VM's server on 127.0.0.1, port 0. Resolves once it accepts connections. */
export async function startVmServer(vm: VmIdentity, logger: Logger): Promise<VmServer> {
  const server = createServer((req, res) => {
    handle(vm, req, res).catch((err: unknown) => {
      // A client that goes away mid-body lands here; the VM must keep serving others.
      logger.debug({ vm: vm.id, err }, 'mock vm: request failed');
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end('echo failed');
      } else {
        res.destroy();
      }
    });
  });
  server.on('clientError', answerClientError);
  await listen(server);
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // closeAllConnections also ends in-flight responses (SSE, delayed echoes): a VM that
        // is switched off does not finish what it was saying.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

/**
 * What Node's default clientError handler does, kept explicit because adding a listener
 * replaces the default: 431 for oversized headers (RFC 6585 §5), 400 for anything unparsable.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
  socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`);
}

function listen(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

async function handle(vm: VmIdentity, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const target = req.url ?? '/';
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  // URLSearchParams never throws on bad percent-encoding: it keeps the raw text.
  const params = new URLSearchParams(q === -1 ? '' : target.slice(q + 1));
  res.setHeader('x-mock-vm', vm.id);

  switch (path) {
    case '/__sse':
      req.resume();
      return sse(vm, params, res);
    case '/__stream':
      req.resume();
      return stream(params, res);
    default:
      break;
  }

  let status = 200;
  if (path === '/__status') {
    const code = intParam(params, 'code', 200, 200, 599);
    status = code;
  }
  const echo = await readEcho(vm, req, target, path, params);
  if (path === '/__delay') {
    await delayUnlessClosed(intParam(params, 'ms', 0, 0, MAX_INTERVAL_MS), res);
    if (res.destroyed) return;
  }
  const body = JSON.stringify(echo);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Streams the body through a hash: only the first 64 KiB are kept, whatever the size. */
async function readEcho(
  vm: VmIdentity,
  req: IncomingMessage,
  url: string,
  path: string,
  params: URLSearchParams,
): Promise<VmEcho> {
  const hash = createHash('sha256');
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let bytes = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
    if (keptBytes < ECHO_BODY_CAP_BYTES) {
      const part = chunk.subarray(0, ECHO_BODY_CAP_BYTES - keptBytes);
      kept.push(part);
      keptBytes += part.length;
    }
  }
  const prefix = Buffer.concat(kept, keptBytes);
  const truncated = bytes > keptBytes;
  let body: string;
  let bodyEncoding: 'utf8' | 'base64' = 'utf8';
  try {
    // stream: true on a truncated prefix tolerates a multi-byte character cut at the cap.
    body = new TextDecoder('utf-8', { fatal: true }).decode(prefix, { stream: truncated });
  } catch {
    body = prefix.toString('base64');
    bodyEncoding = 'base64';
  }
  const query: Record<string, string | string[]> = {};
  for (const [k, v] of params) {
    const prev = query[k];
    query[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return {
    vm: vm.id,
    asId: vm.asId,
    groups: vm.groups,
    method: req.method ?? 'GET',
    url,
    path,
    query,
    headers: req.headers,
    rawHeaders: req.rawHeaders,
    body,
    bodyEncoding,
    bodyTruncated: truncated,
    bodyBytes: bytes,
    bodySha256: hash.digest('hex'),
  };
}

function sse(vm: VmIdentity, params: URLSearchParams, res: ServerResponse): void {
  const n = intParam(params, 'n', 5, 0, MAX_EVENTS);
  const intervalMs = intParam(params, 'intervalMs', 50, 0, MAX_INTERVAL_MS);
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  let i = 0;
  let timer: NodeJS.Timeout | undefined;
  const tick = (): void => {
    if (i >= n) {
      res.end();
      return;
    }
    res.write(`id: ${i}\nevent: tick\ndata: ${JSON.stringify({ vm: vm.id, i })}\n\n`);
    i++;
    timer = setTimeout(tick, intervalMs);
  };
  res.on('close', () => clearTimeout(timer));
  tick();
}

function stream(params: URLSearchParams, res: ServerResponse): void {
  const chunks = intParam(params, 'chunks', 5, 0, MAX_EVENTS);
  const intervalMs = intParam(params, 'intervalMs', 10, 0, MAX_INTERVAL_MS);
  const chunkBytes = intParam(params, 'chunkBytes', 0, 0, MAX_CHUNK_BYTES);
  // No content-length: Node sends Transfer-Encoding: chunked, one chunk per write.
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
  res.flushHeaders();
  let i = 0;
  let timer: NodeJS.Timeout | undefined;
  const tick = (): void => {
    if (i >= chunks) {
      res.end();
      return;
    }
    const line = `chunk ${i}\n`;
    res.write(chunkBytes > line.length ? line.padStart(chunkBytes, '.') : line);
    i++;
    timer = setTimeout(tick, intervalMs);
  };
  res.on('close', () => clearTimeout(timer));
  tick();
}

function delayUnlessClosed(ms: number, res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      res.off('close', done);
      resolve();
    }
    res.on('close', done);
  });
}

/** An integer query parameter, clamped to [min, max]; anything unparsable means the default. */
function intParam(params: URLSearchParams, name: string, fallback: number, min: number, max: number): number {
  const raw = params.get(name);
  if (raw === null || !/^\d{1,9}$/.test(raw)) return fallback;
  return Math.min(max, Math.max(min, Number(raw)));
}
