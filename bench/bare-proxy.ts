/**
 * The reference: a reverse proxy on `node:http` + one keep-alive undici Pool, written the
 * usual way (request() + pipeline) with no features at all: no routing, no identity, no
 * access checks, no X-Forwarded-*. What Smart Proxy's warm path costs beyond this is the
 * cost of its features.
 *
 * With `dispatch` as third argument it forwards through undici's dispatch API with one handler
 * object per request instead (the engine Smart Proxy uses): same features (none), so the
 * difference between it and Smart Proxy is what the features cost.
 *
 * usage: node bench/bare-proxy.ts <port> <upstream origin> [request|dispatch]
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';
import { BareForward, HOP, withoutHop } from './lib/bare-forward.ts';

const [portArg, upstream, engine = 'request'] = process.argv.slice(2);
if (portArg === undefined || upstream === undefined) throw new Error('usage: bare-proxy.ts <port> <upstream origin>');
const pool = new Pool(upstream, { connections: 256, keepAliveTimeout: 4_000 });

function viaDispatch(req: IncomingMessage, res: ServerResponse): void {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.dispatch({ method: req.method as 'GET', path: req.url ?? '/', headers: withoutHop(req.headers), body: hasBody ? req : null }, new BareForward(res));
}

const server = createServer(engine === 'dispatch' ? viaDispatch : (req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.request({ method: req.method as 'GET', path: req.url ?? '/', headers: withoutHop(req.headers), body: hasBody ? req : null })
    .then(async (up) => {
      const headers: Record<string, string | string[]> = {};
      for (const name in up.headers) {
        const v = up.headers[name];
        if (v !== undefined && !HOP.has(name)) headers[name] = v;
      }
      res.writeHead(up.statusCode, headers);
      await pipeline(up.body, res);
    })
    .catch(() => {
      if (!res.headersSent) {
        res.writeHead(502);
        res.end();
      } else res.destroy();
    });
});
server.keepAliveTimeout = 5_000;
server.listen(Number(portArg), '127.0.0.1');
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void pool.close();
});
