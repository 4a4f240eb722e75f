/**
 * The proxy under the churn soak (bench/suites/churn.ts), in its own process so that its
 * memory and handles are its own: the whole app (startApp) with a provider that brings up an
 * HTTP backend on a fresh address and port at every start and closes it at every stop (like a cloud that
 * hands out a new address per boot). Resources stop after a short idle time, so every cold
 * request is a start/stop cycle. Answers `{ type: 'stats' }` on IPC with memory, handle,
 * pool and instance counts, after a GC when --expose-gc is on.
 */
import { createServer, type Server } from 'node:http';
import { parseConfig } from '../src/config/load.ts';
import type { InspectResult, InstanceRef, Provider, StartResult } from '../src/core/ports.ts';
import { createLogger, startApp } from '../src/main.ts';
import { MemoryStore } from '../src/state/memory-store.ts';

const resources = Number(process.argv[2] ?? 200);

let hostIndex = 0;
/** 127.1.0.1 … 127.1.15.250, in turn (all of 127.0.0.0/8 is loopback on Linux). */
function nextHost(): string {
  const i = hostIndex++ % 4000;
  return `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

class FreshPortProvider implements Provider {
  readonly kind = 'fresh-port';
  readonly #servers = new Map<string, { server: Server; endpoint: string }>();
  starts = 0;
  stops = 0;
  /** The proxy's own listening ports, set once it listens. */
  readonly avoidPorts = new Set<number>();

  async start(ref: InstanceRef): Promise<StartResult> {
    const id = `${ref.resourceId}/${ref.instanceKey}`;
    if (this.#servers.has(id)) return { handle: id };
    this.starts++;
    const server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    });
    server.keepAliveTimeout = 1_000;
    // Hundreds of cycles a second, each leaving a closed listener's and a connection's ports in
    // TIME_WAIT for a minute, use up one address's ephemeral ports (28k) within two minutes on
    // a fast machine: each backend takes the next of 4,000 loopback addresses, as a cloud hands
    // out a new address per boot. A listen that still fails is a failed start, not a crash.
    const host = nextHost();
    // A backend never draws the proxy's port number. The endpoint guard once refused every
    // loopback address on the proxy's own port (a failed start per draw); it now matches the
    // address the proxy is bound to (127.0.0.1), so 127.1.x.y passes and this is only a guard
    // against that coming back: a real cloud hands out no such address either.
    let port = 0;
    for (let tries = 0; tries < 5 && (port === 0 || this.avoidPorts.has(port)); tries++) {
      if (port !== 0) await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      port = (server.address() as { port: number }).port;
    }
    this.#servers.set(id, { server, endpoint: `http://${host}:${port}` });
    return { handle: id };
  }

  async inspect(ref: InstanceRef): Promise<InspectResult> {
    const s = this.#servers.get(`${ref.resourceId}/${ref.instanceKey}`);
    return s === undefined ? { state: 'stopped' } : { state: 'running', endpoint: s.endpoint };
  }

  async stop(ref: InstanceRef): Promise<void> {
    const id = `${ref.resourceId}/${ref.instanceKey}`;
    const s = this.#servers.get(id);
    if (s === undefined) return;
    this.#servers.delete(id);
    this.stops++;
    s.server.closeAllConnections();
    await new Promise<void>((resolve) => s.server.close(() => resolve()));
  }

  get running(): number {
    return this.#servers.size;
  }
}

const provider = new FreshPortProvider();
const config = parseConfig(JSON.stringify({
  listen: { host: '127.0.0.1', port: 0 },
  log: { level: 'warn' },
  state: { kind: 'memory', flushIntervalMs: 1_000 },
  limits: { forgetStoppedAfterMs: 2_000 },
  providers: { churn: { kind: 'static', endpoint: 'http://127.0.0.1:9' } },
  resourceDefaults: { bootTimeoutMs: 10_000, idleStopMs: 100, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, access: { public: true } },
  resources: {
    warm: { provider: 'churn', idleStopMs: 0 },
    ...Object.fromEntries(Array.from({ length: resources }, (_, i) => [`r${i}`, { provider: 'churn' }])),
  },
}));
// The in-memory store keeps the last N audit events (10,000 by default, several per cycle):
// a smaller window here, so that what the soak shows is the proxy's own growth, not a log
// filling up to its bound.
const store = new MemoryStore({ maxAuditEvents: 1_000 });
const app = await startApp(config, { logger: createLogger('warn'), providers: new Map([['churn', provider]]), store });
provider.avoidPorts.add(Number(new URL(app.proxyUrl).port));

process.on('message', (m: { type?: string }) => {
  if (m.type === 'stats') {
    (globalThis as { gc?: () => void }).gc?.();
    const mem = process.memoryUsage();
    const handles = process.getActiveResourcesInfo();
    process.send?.({
      type: 'stats', rssBytes: mem.rss, heapUsedBytes: mem.heapUsed, externalBytes: mem.external,
      handles: handles.length, timers: handles.filter((h) => h === 'Timeout').length,
      pools: app.proxy.pools.size, instances: app.manager.instanceCount, backends: provider.running,
      starts: provider.starts, stops: provider.stops,
    });
  } else if (m.type === 'stop') {
    void app.close().then(() => process.exit(0));
  }
});
process.send?.({ type: 'ready', url: app.proxyUrl });
