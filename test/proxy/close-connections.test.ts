/**
 * ProxyServer.close() ends every client connection it has: a request held on a cold resource,
 * an idle keep-alive connection, a connection still waiting for its request's head, and one
 * answered 405 to CONNECT whose client never closes its side.
 */
import { once } from 'node:events';
import { connect, type Server, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

/** Opens a connection, writes `head`, and resolves once `seen` is in what came back. */
async function openWith(url: string, head: string, seen: string | undefined): Promise<Socket> {
  const { port } = new URL(url);
  // Half-open allowed: a client that got its answer and FIN does not close its side.
  const s = connect({ port: Number(port), host: '127.0.0.1', allowHalfOpen: true });
  await once(s, 'connect');
  s.write(head);
  if (seen === undefined) return s;
  let got = '';
  await new Promise<void>((resolve, reject) => {
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes(seen)) resolve();
    });
    s.once('close', () => reject(new Error(`closed before "${seen}": ${got}`)));
  });
  return s;
}

function openConnections(server: Server): number {
  return (server as unknown as { _connections: number })._connections;
}

describe('ProxyServer.close()', () => {
  it('ends held, idle, half-sent and CONNECT-refused connections', async () => {
    const cold = new MimicProvider({ manual: true });
    const warm = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'cold', provider: cold }, { id: 'warm', provider: warm }] });
    try {
      const held = await openWith(h.url, 'GET /smart_proxy/cold/g/x HTTP/1.1\r\nhost: x\r\n\r\n', undefined);
      while (h.manager.heldTotal < 1) await new Promise((r) => setImmediate(r));
      // One answered request: the connection stays open, idle, for the next one.
      const idle = await openWith(h.url, 'GET /smart_proxy/warm/g/x HTTP/1.1\r\nhost: x\r\n\r\n', '\r\n\r\n');
      const halfSent = await openWith(h.url, 'GET /smart_proxy/warm/g/x HTTP/1.1\r\n', undefined);
      const refused = await openWith(h.url, 'CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n', ' 405 ');
      for (const s of [held, idle, halfSent, refused]) s.on('error', () => undefined);
      // The listening server emits 'close' once its last connection has closed.
      const allClosed = once(h.proxy.server, 'close');
      await h.proxy.close();
      // Bounded: a connection the proxy left open fails the test here instead of hanging it.
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${String(openConnections(h.proxy.server))} connection(s) still open after close()`)), 5_000);
      });
      try {
        await Promise.race([allClosed, bound]);
      } finally {
        clearTimeout(timer);
        for (const s of [held, idle, halfSent, refused]) s.destroy();
      }
    } finally {
      await h.close();
    }
  });
});
