/**
 * A TCP port on 127.0.0.1 that is free now, for a server whose port must be known before it
 * starts (nginx, HAProxy, redis-server, a proxy whose public URL goes into its own config).
 *
 * Not from the kernel's ephemeral range (`listen(0)` and every outgoing connection take their
 * ports there): a port handed out by listen(0) and closed again is soon given to another
 * test's server or to a client socket, and the program started on it then fails to bind, or
 * worse, the test talks to that other server. nginx retries a taken port for 2.5 s and exits,
 * which once failed a whole suite with ECONNRESET and ECONNREFUSED. Ports below the ephemeral
 * range are only ever taken by a test that asked for one here, at random among thousands, and
 * each is checked by binding it.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Where ports are drawn from: below the ephemeral range (Linux default 32768-60999). */
function range(): [number, number] {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch { /* not Linux: the default */ }
  const hi = Math.min(low - 1, 30999);
  return [Math.max(1024, hi - 10_000), hi];
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/**
 * Ports this process handed out: never handed out twice. A test asks for several before it
 * starts anything on them (nginx's listen, control and decision ports), so a second draw of
 * the first, still free, would pass the bind check and two servers would then fight for it.
 */
const handedOut = new Set<number>();

export async function freePort(): Promise<number> {
  const [lo, hi] = range();
  for (let tries = 0; tries < 50; tries++) {
    const port = lo + Math.floor(Math.random() * (hi - lo + 1));
    if (handedOut.has(port)) continue;
    if (await bindable(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port found in ${lo}-${hi} after 50 tries`);
}
