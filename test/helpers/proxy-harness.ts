/**
 * Builds a real ProxyServer on 127.0.0.1:0 around given providers, without the config
 * layer, so data-plane tests state exactly the resource settings they rely on.
 */
import type { Clock, Logger, ProbeSpec, Provider } from '../../src/core/ports.ts';
import { systemClock } from '../../src/core/clock.ts';
import type { KeepWarmPolicy } from '../../src/core/keep-warm.ts';
import { ResourceManager, type ResourceRuntime, type SharingMode } from '../../src/core/resource-manager.ts';
import { netProber } from '../../src/proxy/probe.ts';
import type { UpstreamOptions } from '../../src/proxy/forward-http.ts';
import { ProxyServer, type Authorize, type Identify, type ProxyServerOptions, type RoutedResource } from '../../src/proxy/server.ts';
import type { ResourceWaiting } from '../../src/proxy/waiting-room.ts';

export interface TestResource {
  id: string;
  provider: Provider;
  sharing?: SharingMode;
  bootTimeoutMs?: number;
  holdTimeoutMs?: number;
  probe?: ProbeSpec;
  maxHeldRequests?: number;
  idleStopMs?: number;
  failureCooldownMs?: number;
  waiting?: ResourceWaiting;
  providerCallTimeoutMs?: number;
  releaseConcurrency?: number;
  healthCheckIntervalMs?: number;
  keepWarm?: KeepWarmPolicy;
  websocket?: { allowedOrigins?: string[] };
}

export interface Harness {
  url: string;
  manager: ResourceManager;
  proxy: ProxyServer;
  logs: Array<{ level: string; obj: object; msg?: string | undefined }>;
  close(): Promise<void>;
}

export function collectingLogger(logs: Harness['logs']): Logger {
  const at = (level: string) => (obj: object, msg?: string): void => { logs.push({ level, obj, msg }); };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export function runtimeOf(r: TestResource): ResourceRuntime {
  return {
    id: r.id,
    provider: r.provider,
    sharing: r.sharing ?? 'shared',
    bootTimeoutMs: r.bootTimeoutMs ?? 10_000,
    probe: r.probe ?? { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 500 },
    probeIntervalMs: 10,
    pollIntervalMinMs: 5,
    pollIntervalMaxMs: 50,
    providerCallTimeoutMs: r.providerCallTimeoutMs ?? 2_000,
    failureCooldownMs: r.failureCooldownMs ?? 0,
    maxHeldRequests: r.maxHeldRequests ?? 10_000,
    idleStopMs: r.idleStopMs ?? 0,
    releaseConcurrency: r.releaseConcurrency,
    healthCheckIntervalMs: r.healthCheckIntervalMs,
    keepWarm: r.keepWarm,
  };
}

export async function startHarness(options: {
  resources: TestResource[];
  maxHeldTotal?: number;
  clock?: Clock;
  trustedProxies?: string[];
  identify?: Identify;
  authorize?: Authorize;
  tls?: { certFile: string; keyFile: string };
  maxHeldBytes?: number;
  heldBodyEstimateBytes?: number;
  /** Upstream settings replacing the harness's (tests of the backend queue). */
  upstream?: Partial<UpstreamOptions>;
  /** Client-side bounds (ProxyServerOptions of the same names). */
  bounds?: Pick<ProxyServerOptions, 'bodyIdleTimeoutMs' | 'maxHeldBytesPerRequest' | 'maxHeldBytesPerClient' | 'http2SessionIdleTimeoutMs' | 'http2MaxConcurrentStreams' | 'linger'>;
  forgetStoppedAfterMs?: number;
  poolSweepDelayMs?: number;
  /** The client's time for its request head (default 10 s). */
  headersTimeoutMs?: number;
}): Promise<Harness> {
  const logs: Harness['logs'] = [];
  const logger = collectingLogger(logs);
  const manager = new ResourceManager({
    clock: options.clock ?? systemClock, prober: netProber, logger, maxHeldRequestsTotal: options.maxHeldTotal ?? 100_000, forgetStoppedAfterMs: options.forgetStoppedAfterMs,
  });
  const resources = new Map<string, RoutedResource>();
  for (const r of options.resources) {
    const runtime = runtimeOf(r);
    resources.set(r.id, { runtime, holdTimeoutMs: r.holdTimeoutMs ?? runtime.bootTimeoutMs, waiting: r.waiting, websocket: r.websocket });
  }
  const proxy = new ProxyServer({
    manager, resources, logger,
    upstream: { connectTimeoutMs: 2_000, headersTimeoutMs: 30_000, bodyTimeoutMs: 0, connectionsPerBackend: 64, ...options.upstream },
    ...options.bounds,
    trustedProxies: options.trustedProxies ?? [],
    headersTimeoutMs: options.headersTimeoutMs ?? 10_000, keepAliveTimeoutMs: 5_000, maxHeaderBytes: 16_384,
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.identify ? { identify: options.identify } : {}),
    ...(options.authorize ? { authorize: options.authorize } : {}),
    tls: options.tls,
    ...(options.maxHeldBytes === undefined ? {} : { maxHeldBytes: options.maxHeldBytes }),
    ...(options.heldBodyEstimateBytes === undefined ? {} : { heldBodyEstimateBytes: options.heldBodyEstimateBytes }),
    ...(options.poolSweepDelayMs === undefined ? {} : { poolSweepDelayMs: options.poolSweepDelayMs }),
  });
  const addr = await proxy.listen(0, '127.0.0.1');
  return {
    url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${addr.port}`,
    manager, proxy, logs,
    async close() {
      manager.close();
      await proxy.close();
      await Promise.all(options.resources.map((r) => r.provider.close?.() ?? Promise.resolve()));
    },
  };
}
