/**
 * The composition root: builds every object in order from a validated config, and owns the
 * shutdown order. Nothing else wires components together.
 */
import { pino } from 'pino';
import { LoggerAuditSink, teeAudit, type AuditSink } from './access/audit.ts';
import { StartLimiter } from './access/limits.ts';
import { OidcSignIn } from './access/oidc/sign-in.ts';
import type { Config } from './config/schema.ts';
import { effectiveResources, expandStatuses, type EffectiveResource } from './config/load.ts';
import { systemClock } from './core/clock.ts';
import { SmartProxyError } from './core/errors.ts';
import { KeepWarmPolicy, KeepWarmScheduler } from './core/keep-warm.ts';
import type { Clock, KeyValueStore, Logger, ProbeSpec, Provider, Store } from './core/ports.ts';
import { ResourceManager, type ResourceRuntime } from './core/resource-manager.ts';
import { StateSync } from './core/state-sync.ts';
import { startMockCloud, type MockCloud } from './mock-cloud/mock-cloud.ts';
import { createAtmosphereProvider } from './providers/atmosphere/atmosphere-provider.ts';
import { createHttpProvider } from './providers/http/http-provider.ts';
import { createProcessProvider } from './providers/process/process-provider.ts';
import { inheritedEnv, resolveSecretValue, secretReaders } from './config/secrets.ts';
import { createStaticProvider } from './providers/static/static-provider.ts';
import { createQemuProvider } from './providers/qemu/qemu-provider.ts';
import { createDockerProvider } from './providers/docker/docker-provider.ts';
import { createAccessSteps } from './proxy/identify.ts';
import { netProber } from './proxy/probe.ts';
import { ProxyServer, type RoutedResource } from './proxy/server.ts';
import { ThemeLoader } from './proxy/waiting-page.ts';
import { createStore } from './state/create-store.ts';
import { createKeyValueStore } from './state/key-value-stores.ts';
import { RedisCoordinator } from './state/redis/redis-coordinator.ts';

export interface AppOptions {
  readonly logger?: Logger;
  readonly clock?: Clock;
  /** Extra providers by name (tests), taking precedence over the configured ones. */
  readonly providers?: ReadonlyMap<string, Provider>;
  /** An extra audit sink (tests), fed besides the log. */
  readonly audit?: AuditSink;
  /** A store to use instead of the configured one (tests: a failing store). */
  readonly store?: Store;
  /** A key-value store to use instead of the configured one (tests: replicas sharing one). */
  readonly keyValues?: KeyValueStore;
}

export interface App {
  readonly proxyUrl: string;
  readonly mockCloud: MockCloud | undefined;
  readonly manager: ResourceManager;
  readonly proxy: ProxyServer;
  readonly config: Config;
  /** The state store behind write-behind batching (stats: flushes, failures). */
  readonly state: StateSync;
  /** Graceful shutdown, in the order written below. Idempotent. */
  close(): Promise<void>;
}

export function createLogger(level: Config['log']['level']): Logger {
  return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
}

/** Resources that share a probe config (the default one, or resourceDefaults') share one spec. */
const probeSpecs = new WeakMap<EffectiveResource['probe'], ProbeSpec>();

function toProbeSpec(r: EffectiveResource): ProbeSpec {
  let spec = probeSpecs.get(r.probe);
  if (spec === undefined) {
    // The expanded status list ("2xx" → 200…299) is 300 numbers: built once, not per resource.
    spec = r.probe.kind === 'http'
      ? { kind: 'http', path: r.probe.path, expectStatus: expandStatuses(r.probe.expectStatus), timeoutMs: r.probe.timeoutMs }
      : { kind: 'tcp', timeoutMs: r.probe.timeoutMs };
    probeSpecs.set(r.probe, spec);
  }
  return spec;
}

export async function startApp(config: Config, options: AppOptions = {}): Promise<App> {
  const log = options.logger ?? createLogger(config.log.level);
  const clock = options.clock ?? systemClock;
  const closers: Array<() => Promise<void>> = [];
  try {
    // 1. The embedded mock cloud, when asked for (demo, tests).
    let mockCloud: MockCloud | undefined;
    if (config.mockCloud.enabled) {
      mockCloud = await startMockCloud(config.mockCloud, log);
      const mc = mockCloud;
      closers.push(() => mc.close());
    }

    // 2. Providers: one per named entry, one per inline definition.
    const providers = new Map<string, Provider>();
    const resources = effectiveResources(config);
    const serviceIds = new Map(resources.map((r) => [r.id, r.serviceId]));
    const providerFor = (r: EffectiveResource): Provider => {
      const injected = options.providers?.get(r.providerName);
      if (injected !== undefined) return injected;
      const existing = providers.get(r.providerName);
      if (existing !== undefined) return existing;
      const p = buildProvider(r, mockCloud, serviceIds, log);
      providers.set(r.providerName, p);
      return p;
    };

    // 3. Access (identities, policies, start limits, audit), then the control plane, which
    //    asks the limits before every start.
    const audit = options.audit === undefined ? new LoggerAuditSink(log) : teeAudit(new LoggerAuditSink(log), options.audit);
    const limiter = new StartLimiter(config.access.limits, {
      clock, audit,
      startRetryAfterS: (id: string): number => Math.max(1, Math.ceil((manager.estimateBoot(id)?.p50Ms ?? 5_000) / 1000)),
    });
    //    Browser sign-in (OIDC): sessions too big for a cookie and single-use sign-in marks
    //    go to the key-value store beside the state store (shared when it is).
    const oidc = buildSignIn(config, clock, log, options.keyValues, closers);
    const access = createAccessSteps({
      identities: config.identities, settings: config.access, clock, logger: log, audit, oidc,
      policies: new Map(resources.map((r) => [r.id, r.access])),
    });
    //    The control plane; with state on Redis, coordinated with the other replicas
    //    (one start and one idle stop per instance cluster-wide). Start limits count per replica.
    const coordinator = config.state.kind === 'redis'
      ? new RedisCoordinator({ ...config.cluster, url: config.state.url, keyPrefix: config.state.keyPrefix, options: config.state.options, logger: log })
      : undefined;
    if (coordinator !== undefined) closers.push(() => coordinator.close());
    const manager: ResourceManager = new ResourceManager({
      clock, prober: netProber, logger: log, maxHeldRequestsTotal: config.limits.maxHeldRequests, coordinator, admitStart: limiter.admit,
    });
    manager.onEvent(limiter.onEvent);
    coordinator?.attach({
      readyInstances: () => [...manager.allInstances()].filter((i) => i.status === 'ready'),
      stoppedElsewhere: (resourceId, instanceKey) => {
        for (const i of manager.instancesOf(resourceId)) if (i.key === instanceKey) manager.stoppedElsewhere(i);
      },
    });
    const routed = new Map<string, RoutedResource>();
    const themes = new ThemeLoader();
    for (const r of resources) {
      const runtime: ResourceRuntime = {
        id: r.id,
        provider: providerFor(r),
        sharing: r.sharing,
        bootTimeoutMs: r.bootTimeoutMs,
        probe: toProbeSpec(r),
        probeIntervalMs: r.probeIntervalMs,
        pollIntervalMinMs: r.pollIntervalMinMs,
        pollIntervalMaxMs: r.pollIntervalMaxMs,
        providerCallTimeoutMs: r.providerCallTimeoutMs,
        failureCooldownMs: r.failureCooldownMs,
        maxHeldRequests: r.maxHeldRequests,
        idleStopMs: r.idleStopMs,
        releaseConcurrency: r.releaseConcurrency,
        healthCheckIntervalMs: r.healthCheckIntervalMs,
        keepWarm: r.keepWarm === undefined ? undefined : new KeepWarmPolicy(r.keepWarm),
      };
      // Waiting page themes are read and checked here, once: a broken theme stops start-up.
      routed.set(r.id, {
        runtime, holdTimeoutMs: r.holdTimeoutMs,
        waiting: { ...r.waiting, theme: themes.load(r.waiting.themeDir) },
        websocket: { allowedOrigins: r.websocketAllowedOrigins },
      });
    }
    const runtimes = new Map([...routed].map(([id, r]) => [id, r.runtime]));

    // 4. State: read back what a previous run left (boot history; instances to re-adopt,
    //    checked with their providers, never started again), then write behind on a timer.
    //    Before the data plane, so a request for an instance being re-adopted joins it.
    const store = options.store ?? openStore(config, log);
    const state = new StateSync({ store, manager, clock, logger: log, flushIntervalMs: config.state.flushIntervalMs });
    closers.push(() => state.close());
    await state.restore(runtimes);
    state.start();
    const maxCallMs = Math.max(1_000, ...resources.map((r) => r.providerCallTimeoutMs));
    void state.adoptListed(runtimes, maxCallMs).catch((err: unknown) => log.warn({ err }, 'adopting listed instances failed'));

    // 5. Keep-warm: pre-start what must run now; windows open on the clock.
    const keepWarm = new KeepWarmScheduler({
      clock, logger: log, target: manager.keepWarmTarget(runtimes),
      policies: new Map([...runtimes].flatMap(([id, r]) => (r.keepWarm === undefined ? [] : [[id, r.keepWarm] as const]))),
    });
    keepWarm.start();

    // 6. The data plane, last: traffic arrives only once everything behind it exists.
    const proxy = new ProxyServer({
      manager,
      resources: routed,
      logger: log,
      upstream: config.upstream,
      trustedProxies: config.trustedProxies,
      headersTimeoutMs: config.server.headersTimeoutMs,
      keepAliveTimeoutMs: config.server.keepAliveTimeoutMs,
      maxHeaderBytes: config.server.maxHeaderBytes,
      identify: access.identify,
      authorize: access.authorize,
      unknownResource: access.unknownResource,
      backendHeaders: access.backendHeaders,
      protectedHeaders: access.protectedHeaders,
      signIn: oidc,
      clock,
      tls: config.tls,
      maxHeldBytes: config.limits.maxHeldBytes,
      heldBodyEstimateBytes: config.limits.heldBodyEstimateBytes,
    });
    if (oidc !== undefined) oidc.onSignedIn = (target, identity) => proxy.startFor(target, identity);
    const addr = await proxy.listen(config.listen.port, config.listen.host);
    const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
    const proxyUrl = `${config.tls === undefined ? 'http' : 'https'}://${host}:${addr.port}`;
    log.info({ url: proxyUrl, resources: routed.size }, 'proxy listening');

    const drainTimeoutMs = config.shutdown.drainTimeoutMs
      ?? Math.max(0, ...resources.map((r) => r.holdTimeoutMs)) + 5_000;
    let closing: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closing ??= (async () => {
        // Shutdown order:
        // 1. Stop accepting connections; requests arriving on open ones get 503.
        log.info({ drainTimeoutMs, held: manager.heldTotal, inFlight: activeForwards(manager) }, 'shutting down: draining');
        proxy.startDraining();
        // 2. Let in-flight and held requests finish (boots still complete), up to the drain time.
        await waitFor(() => manager.heldTotal === 0 && activeForwards(manager) === 0, drainTimeoutMs);
        // 3. Stop keep-warm; answer whatever is still held with 503 and stop the control
        //    plane's timers; give those 503s a turn to be written before sockets close.
        keepWarm.close();
        const unanswered = manager.heldTotal;
        manager.close();
        if (unanswered > 0) log.warn({ unanswered }, 'drain time over: held requests answered 503');
        await new Promise((r) => setImmediate(r));
        // 4. Optionally stop the instances this proxy started (the demo does). Otherwise they
        //    stay running and the next start re-adopts them from the state store.
        if (config.shutdown.stopInstances) {
          await Promise.allSettled([...manager.allInstances()].map((i) => manager.stop(i, 'proxy shutdown')));
        }
        // 5. Flush state and close the store (after 4, so stopped instances are recorded);
        //    the cluster coordinator closes with the closers in 7 (after 4's stop records).
        await state.close();
        // 6. Close client connections and upstream pools.
        await proxy.close();
        // 7. Close providers, then the mock cloud.
        await Promise.allSettled([...providers.values()].map((p) => p.close?.() ?? Promise.resolve()));
        for (const c of closers.reverse()) await c();
      })();
      return closing;
    };
    return { proxyUrl, mockCloud, manager, proxy, config, state, close };
  } catch (err) {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    throw err;
  }
}

/**
 * Runs until SIGTERM or SIGINT, then shuts down gracefully (the order in `startApp`). A
 * second signal exits at once. Resolves with the signal once the app is closed.
 */
export function closeOnSignal(app: App, onSignal?: (signal: NodeJS.Signals) => void): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      onSignal?.(signal);
      const now = (second: NodeJS.Signals): never => process.exit(second === 'SIGINT' ? 130 : 143);
      process.once('SIGINT', now);
      process.once('SIGTERM', now);
      app.close().then(() => resolve(signal), () => resolve(signal));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

function buildSignIn(config: Config, clock: Clock, log: Logger, injected: KeyValueStore | undefined, closers: Array<() => Promise<void>>): OidcSignIn | undefined {
  const identities = config.identities.flatMap((i) => (i.kind === 'oidc' ? [i] : []));
  if (identities.length === 0) return undefined;
  const kv = injected ?? createKeyValueStore(config.state, clock, log);
  if (injected === undefined) closers.push(() => kv.close());
  const sessions = config.access.sessions;
  return new OidcSignIn({
    identities, sessions, kv, clock, logger: log, tls: config.tls !== undefined,
    keys: sessions.keys.map((k, i) => resolveSecretValue(k, `access.sessions.keys[${i}]`)),
    clientSecrets: new Map(identities.map((i) => [i.name, i.clientSecret === undefined ? undefined : resolveSecretValue(i.clientSecret, `identities.${i.name}.clientSecret`)])),
  });
}

function openStore(config: Config, log: Logger): Store {
  try {
    return createStore(config.state, log);
  } catch (err) {
    const where = config.state.kind === 'sqlite' ? `state.path ${config.state.path}` : `state.kind ${config.state.kind}`;
    throw new Error(`${where}: cannot open the state store: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function activeForwards(manager: ResourceManager): number {
  let n = 0;
  for (const i of manager.allInstances()) n += i.activeConnections;
  return n;
}

/** Polls a cheap in-memory condition until true or the time is up (shutdown only). */
async function waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond() && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

function buildProvider(r: EffectiveResource, mockCloud: MockCloud | undefined, serviceIds: ReadonlyMap<string, string>, logger: Logger): Provider {
  const p = r.provider;
  switch (p.kind) {
    case 'atmosphere': {
      let baseUrl = p.baseUrl;
      if (baseUrl === 'embedded') {
        if (mockCloud === undefined) {
          throw new SmartProxyError('SP_CONFIG_INVALID', `resources.${r.id}: provider baseUrl "embedded" needs mockCloud.enabled: true`);
        }
        baseUrl = mockCloud.url;
      }
      const resourceIds = new Map([...serviceIds].map(([resourceId, serviceId]) => [serviceId, resourceId]));
      return createAtmosphereProvider({
        baseUrl, requestTimeoutMs: p.requestTimeoutMs, logger,
        serviceId: (id) => serviceIds.get(id) ?? id,
        resourceIdOf: (serviceId) => resourceIds.get(serviceId),
      });
    }
    case 'static':
      return createStaticProvider({ endpoint: p.endpoint });
    case 'process':
      return createProcessProvider({ ...p, baseEnv: inheritedEnv(), logger });
    case 'http':
      return createHttpProvider({
        ...p, secrets: secretReaders(p.credentials, `providers.${r.providerName}`), logger,
        resourceVars: (id) => ({ serviceId: serviceIds.get(id) ?? id }),
      });
    case 'qemu': {
      const { kind: _kind, ...options } = p;
      return createQemuProvider({ ...options, logger });
    }
    case 'docker':
      return createDockerProvider({
        socketPath: p.socketPath,
        apiVersion: p.apiVersion,
        requestTimeoutMs: p.requestTimeoutMs,
        owner: p.owner,
        // The schema guarantees exactly one of existing / create.
        container: p.create !== undefined ? { mode: 'create', ...p.create } : { mode: 'existing', ...p.existing },
        endpoint: { mode: p.endpoint, containerPort: p.containerPort, hostIp: p.hostIp, network: p.network, scheme: p.scheme },
        health: { use: p.health === 'use', unhealthyAs: p.unhealthy },
        stopTimeoutS: p.stopTimeoutS,
        logger,
      });
  }
}
