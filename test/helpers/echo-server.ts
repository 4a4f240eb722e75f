/**
 * A real HTTP backend on 127.0.0.1:0 that answers every request with a JSON echo of what it
 * received (body hashed while streaming, so large uploads are cheap to check).
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Echo {
  readonly method: string;
  readonly url: string;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly rawHeaders: string[];
  readonly body: string;
  readonly bodyBytes: number;
  readonly bodySha256: string;
  readonly server: string;
}

export interface EchoServer {
  readonly server: Server;
  readonly url: string;
  readonly port: number;
  requests: number;
  close(): Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** `host`: the loopback address to bind (127.0.0.1 unless a test needs another of 127/8). */
export async function startEchoServer(options: { name?: string; port?: number; host?: string; handler?: Handler } = {}): Promise<EchoServer> {
  const host = options.host ?? '127.0.0.1';
  const sockets = new Set<Socket>();
  const state = { requests: 0 };
  const name = options.name ?? 'echo';
  const server = createServer((req, res) => {
    state.requests++;
    if (options.handler) {
      options.handler(req, res);
      return;
    }
    const hash = createHash('sha256');
    let bytes = 0;
    const keep: Buffer[] = [];
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (bytes <= 65536) keep.push(chunk);
    });
    req.on('end', () => {
      const echo: Echo = {
        method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders,
        body: Buffer.concat(keep).toString('utf8'), bodyBytes: bytes, bodySha256: hash.digest('hex'), server: name,
      };
      const body = JSON.stringify(echo);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-backend': name });
      res.end(body);
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    url: `http://${host}:${port}`,
    port,
    get requests() { return state.requests; },
    set requests(v: number) { state.requests = v; },
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
