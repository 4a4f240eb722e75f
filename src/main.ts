/**
 * The composition root: builds every object in order from a validated config, and owns the
 * shutdown order. Nothing else wires components together.
 */
import { pino } from 'pino';
import { performance } from 'node:perf_hooks';
import { LoggerAuditSink, teeAudit, type AuditSink } from './access/audit.ts';
import type { AdminServer } from './admin/admin-server.ts';
import { AdminState } from './admin/admin-state.ts';
import { StartLimiter } from './access/limits.ts';
import type { Verifier } from './access/types.ts';
import type { OidcSignIn } from './access/oidc/sign-in.ts';
import type { Config } from './config/schema.ts';
import { effectiveResources, expandStatuses, type EffectiveResource } from './config/load.ts';
import { systemClock } from './core/clock.ts';
import { SmartProxyError } from './core/errors.ts';
import { KeepWarmPolicy, KeepWarmScheduler } from './core/keep-warm.ts';
import type { Clock, KeyValueStore, Logger, ProbeSpec, Provider, Store } from './core/ports.ts';
import { ResourceManager, type ResourceRuntime } from './core/resource-manager.ts';
import { StateSync } from './core/state-sync.ts';
import type { MockCloud } from './mock-cloud/mock-cloud.ts';
import type { createAtmosphereProvider } from './providers/atmosphere/atmosphere-provider.ts';
import { EndpointPolicy, guardEndpoints, type OwnListener } from './providers/endpoint-guard.ts';
import type { createHttpProvider } from './providers/http/http-provider.ts';
import { createProcessProvider } from './providers/process/process-provider.ts';
import { inheritedEnv, resolveIdentitySecrets, resolveSecretValue, secretReaders } from './config/secrets.ts';
import { createStaticProvider } from './providers/static/static-provider.ts';
import type { createQemuProvider } from './providers/qemu/qemu-provider.ts';
import type { createDockerProvider } from './providers/docker/docker-provider.ts';
import { loadBackendTls, type BackendTls } from './proxy/backend-tls.ts';
import { corsPolicy } from './proxy/cors.ts';
import type { FrontMode } from './front/front-mode.ts';
import { createAccessSteps } from './proxy/identify.ts';
import { netProber } from './proxy/probe.ts';
import { TrustedProxies } from './proxy/headers.ts';
import { ProxyServer, type RoutedResource } from './proxy/server.ts';
import { ThemeLoader, type WaitingTheme } from './proxy/waiting-page.ts';
import { createStore } from './state/create-store.ts';
import { atmosphereApiWarnings } from './startup-checks.ts';
import { Metrics } from './metrics/metrics.ts';
import { AccessLog } from './proxy/access-log.ts';
import { combineObservers } from './proxy/observer.ts';
import { planResources, restartOnlyChanges } from './reload/plan.ts';
import { Retirer } from './reload/retire.ts';
import { ConfigError } from './config/load.ts';

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
  /** Reads and validates the configuration again, for `reload()` (the CLI: the --config file). */
  readonly loadConfig?: () => Promise<Config>;
  /** The file `loadConfig` reads, named in a reload's refusal of what is built from it (a secret's unset variable). */
  readonly configFile?: string;
}

/** What `App.reload()` did: applied (with what changed), or refused with the reasons. */
export type ReloadResult = { readonly ok: true; readonly summary: ReloadSummary } | { readonly ok: false; readonly errors: string };

export interface ReloadSummary {
  readonly added: readonly string[];
  readonly changed: readonly string[];
  /** Their running instances are drained, then stopped. */
  readonly removed: readonly string[];
  readonly providersRebuilt: readonly string[];
  readonly identities: number;
  readonly tookMs: number;
}

export interface App {
  readonly proxyUrl: string;
  readonly mockCloud: MockCloud | undefined;
  readonly manager: ResourceManager;
  readonly proxy: ProxyServer;
  /** The configuration in force (replaced by a successful reload). */
  readonly config: Config;
  /** The state store behind write-behind batching (stats: flushes, failures). */
  readonly state: StateSync;
  /** The identity verifiers, in order (their `stats` count real verifications). */
  readonly verifiers: readonly Verifier[];
  /** The admin listener's base URL, when `admin` is configured. */
  readonly adminUrl: string | undefined;
  /** Front-proxy mode (src/front/), when `front.enabled`. */
  readonly front: FrontMode | undefined;
  /** Prometheus metrics (`render()` is what the admin listener serves); undefined when metrics.enabled is false. */
  readonly metrics: Metrics | undefined;
  /**
   * Reads the configuration again (AppOptions.loadConfig), validates it and applies it at
   * once, or refuses it and keeps the old one. See docs/operations/reload.md.
   */
  reload(): Promise<ReloadResult>;
  /** Graceful shutdown, in the order written below. Idempotent. */
  close(): Promise<void>;
}

export function createLogger(level: Config['log']['level']): Logger {
  return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
}

/** Resources that share a probe config (the default one, or resourceDefaults') share one spec. */
const probeSpecs = new WeakMap<EffectiveResource['probe'], ProbeSpec>();

function toProbeSpec(r: EffectiveResource, tls: BackendTls): ProbeSpec {
  const spec = sharedProbeSpec(r);
  // An https: backend is probed with the same TLS settings it is forwarded with.
  return spec.kind === 'http' && tls.key !== '' ? { ...spec, tls } : spec;
}

function sharedProbeSpec(r: EffectiveResource): ProbeSpec {
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
  // The state store opens on its own thread (SQLite) while the steps before 4 are built;
  // step 4 takes it. Its error, if any, is thrown there, in its turn.
  let storeOpening = options.store === undefined ? openStore(config, log) : undefined;
  storeOpening?.catch(() => undefined);
  closers.push(async () => {
    const opening = storeOpening;
    storeOpening = undefined;
    await opening?.then((s) => s.close(), () => undefined);
  });
  try {
    // 1. The embedded mock cloud, when asked for (demo, tests).
    let mockCloud: MockCloud | undefined;
    if (config.mockCloud.enabled) {
      const { startMockCloud } = await import('./mock-cloud/mock-cloud.ts');
      mockCloud = await startMockCloud(config.mockCloud, log);
      const mc = mockCloud;
      closers.push(() => mc.close());
    }

    // 2. Providers: one per named entry, one per inline definition.
    const providers = new Map<string, Provider>();
    /** Providers replaced by a reload: their instances still use them; closed at shutdown. */
    const retiredProviders: Provider[] = [];
    const notOurs = new Set<Provider>();
    let resources = effectiveResources(config);
    const serviceIds = new Map(resources.map((r) => [r.id, r.serviceId]));
    //    Every provider's endpoints pass the backendEndpoints policy before the core may use
    //    them (providers/endpoint-guard.ts). The proxy's own listeners (its listener, the admin
    //    and decision listeners) are entered with the address each is bound to once it listens;
    //    until then, and for Redis (another program's binding), a port counts on every address
    //    of this host.
    const ownListeners = new Map<string, OwnListener>();
    if (config.listen.port > 0) ownListeners.set('proxy', { port: config.listen.port });
    for (const port of redisPortOf(config)) if (port > 0) ownListeners.set('redis', { port });
    const endpointPolicy = new EndpointPolicy({ ...config.backendEndpoints, ownListeners: () => ownListeners.values() });
    const onRefused = (ref: { resourceId: string; instanceKey: string }, endpoint: string, reason: string): void => {
      log.warn({ resource: ref.resourceId, instance: ref.instanceKey, endpoint, reason }, 'provider endpoint refused');
      audit.record({ type: 'endpoint-refused', at: clock.now(), actor: undefined, resource: ref.resourceId, instance: ref.instanceKey, endpoint, reason });
    };
    let metrics: Metrics | undefined;
    const providerFor = (r: EffectiveResource, into: Map<string, Provider> = providers): Provider => {
      const existing = into.get(r.providerName);
      if (existing !== undefined) return existing;
      const injected = options.providers?.get(r.providerName);
      // Injected providers (tests) are guarded and metered too.
      const guarded = guardEndpoints(injected ?? buildProvider(r, mockCloud, serviceIds, log), endpointPolicy, onRefused);
      const metered = metrics === undefined ? guarded : metrics.meterProvider(providerLabel(r), guarded);
      into.set(r.providerName, metered);
      // The caller owns what it injected (tests hand one provider to several apps).
      if (injected !== undefined) notOurs.add(metered);
      return metered;
    };

    // 3. Access (identities, policies, start limits, audit), then the control plane, which
    //    asks the limits before every start.
    //    The audit also goes to the state store and the admin's live view (bound in step 3's end).
    const adminAudit: { sink?: AuditSink } = {};
    const toAdmin: AuditSink = { record: (e) => adminAudit.sink?.record(e) };
    const audit = options.audit === undefined ? teeAudit(new LoggerAuditSink(log), toAdmin) : teeAudit(new LoggerAuditSink(log), toAdmin, options.audit);
    const limiter = new StartLimiter(config.access.limits, {
      clock, audit,
      startRetryAfterS: (id: string): number => Math.max(1, Math.ceil((manager.estimateBoot(id)?.p50Ms ?? 5_000) / 1000)),
    });
    //    Browser sign-in (OIDC): sessions too big for a cookie and single-use sign-in marks
    //    go to the key-value store beside the state store (shared when it is). Built once: a
    //    reload that changes the OIDC providers or session settings is refused (restart).
    const oidc = await buildSignIn(config, clock, log, options.keyValues, closers);
    const buildAccess = (cfg: Config, rs: readonly EffectiveResource[]): ReturnType<typeof createAccessSteps> => createAccessSteps({
      identities: resolveIdentitySecrets(cfg.identities), settings: cfg.access, clock, logger: log, audit, oidc,
      policies: new Map(rs.map((r) => [r.id, r.access])),
    });
    // Replaced as a whole by a reload; the data plane calls through these indirections.
    let access = buildAccess(config, resources);
    //    The control plane; with state on Redis, coordinated with the other replicas
    //    (one start and one idle stop per instance cluster-wide). Start limits count per replica.
    const coordinator = config.state.kind === 'redis'
      ? new (await import('./state/redis/redis-coordinator.ts')).RedisCoordinator({ ...config.cluster, url: config.state.url, keyPrefix: config.state.keyPrefix, options: config.state.options, logger: log })
      : undefined;
    if (coordinator !== undefined) closers.push(() => coordinator.close());
    const manager: ResourceManager = new ResourceManager({
      clock, prober: netProber, logger: log, maxHeldRequestsTotal: config.limits.maxHeldRequests, coordinator, admitStart: limiter.admit,
      providerCircuit: config.providerCircuit, forgetStoppedAfterMs: config.limits.forgetStoppedAfterMs,
    });
    manager.onEvent(limiter.onEvent);
    const adminState = new AdminState(manager, clock);
    adminAudit.sink = adminState.auditSink;
    if (config.metrics.enabled) {
      metrics = new Metrics({ manager, clock, maxResourceLabels: config.metrics.maxResourceLabels, resources: meteredResources(resources) });
      const m = metrics;
      closers.push(async () => m.close());
    }
    // The activity flush sleeps while nothing is ready here; a new ready instance wakes it.
    if (coordinator !== undefined) manager.onEvent((e) => { if (e.type === 'instance-changed' && e.instance.status === 'ready') coordinator.activityExpected(); });
    coordinator?.attach({
      readyInstances: () => [...manager.allInstances()].filter((i) => i.status === 'ready'),
      stoppedElsewhere: (resourceId, instanceKey) => {
        for (const i of manager.instancesOf(resourceId)) if (i.key === instanceKey) manager.stoppedElsewhere(i);
      },
    });
    const routed = new Map<string, RoutedResource>();
    const buildRouted = (r: EffectiveResource, into: Map<string, Provider>, themes: ThemeLoader): RoutedResource => {
      const backendTls = loadBackendTls(r.backendTls);
      if (!backendTls.rejectUnauthorized) log.warn({ resource: r.id }, 'backendTls.insecureSkipVerify: the backend\'s certificate is not verified');
      const runtime: ResourceRuntime = {
        id: r.id,
        provider: providerFor(r, into),
        sharing: r.sharing,
        bootTimeoutMs: r.bootTimeoutMs,
        probe: toProbeSpec(r, backendTls),
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
      // Waiting page themes are read and checked here, at start-up and at each reload: a broken
      // theme stops start-up, and refuses a reload (the running theme is kept).
      return {
        runtime, holdTimeoutMs: r.holdTimeoutMs,
        waiting: { ...r.waiting, theme: loadThemeOf(r, themes) },
        websocket: { allowedOrigins: r.websocketAllowedOrigins },
        cors: r.cors === undefined ? undefined : corsPolicy(r.cors),
        backendTls,
      };
    };
    await loadProviderCode(resources);
    const startThemes = new ThemeLoader();
    for (const r of resources) routed.set(r.id, buildRouted(r, providers, startThemes));
    const runtimes = new Map([...routed].map(([id, r]) => [id, r.runtime]));

    // 4. State: read back what a previous run left (boot history; instances to re-adopt,
    //    checked with their providers, never started again), then write behind on a timer.
    //    Before the data plane, so a request for an instance being re-adopted joins it.
    const store = options.store ?? await storeOpening!;
    // Taken: from here on it closes with the state sync.
    storeOpening = undefined;
    const state = new StateSync({ store, manager, clock, logger: log, flushIntervalMs: config.state.flushIntervalMs });
    closers.push(() => state.close());
    adminState.attachStore(state);
    await store.loadBootSamples(50).then((s) => adminState.seedBoots(s), () => undefined);
    await state.restore(runtimes);
    state.start();
    const maxCallMs = Math.max(1_000, ...resources.map((r) => r.providerCallTimeoutMs));
    void state.adoptListed(runtimes, maxCallMs).catch((err: unknown) => log.warn({ err }, 'adopting listed instances failed'));

    // 5. Keep-warm: pre-start what must run now; windows open on the clock.
    const buildKeepWarm = (rts: ReadonlyMap<string, ResourceRuntime>): KeepWarmScheduler => new KeepWarmScheduler({
      clock, logger: log, target: manager.keepWarmTarget(rts),
      policies: new Map([...rts].flatMap(([id, r]) => (r.keepWarm === undefined ? [] : [[id, r.keepWarm] as const]))),
    });
    let keepWarm = buildKeepWarm(runtimes);
    keepWarm.start();

    // 6. The data plane, last: traffic arrives only once everything behind it exists.
    const accessLog = config.accessLog.enabled ? new AccessLog({ format: config.accessLog.format, path: config.accessLog.path, logger: log }) : undefined;
    if (accessLog !== undefined) closers.push(() => accessLog.close());
    const proxy = new ProxyServer({
      manager,
      resources: routed,
      logger: log,
      upstream: config.upstream,
      trustedProxies: config.trustedProxies,
      headersTimeoutMs: config.server.headersTimeoutMs,
      keepAliveTimeoutMs: config.server.keepAliveTimeoutMs,
      maxHeaderBytes: config.server.maxHeaderBytes,
      identify: (req, route, res) => access.identify(req, route, res),
      authorize: (identity, route, res) => access.authorize(identity, route, res),
      unknownResource: (req, route) => access.unknownResource(req, route),
      backendHeaders: (identity, acting, res) => access.backendHeaders(identity, acting, res),
      protectedHeaders: access.protectedHeaders,
      observer: combineObservers([metrics, accessLog]),
      coldStartHeader: config.coldStartHeader.enabled ? config.coldStartHeader.name : undefined,
      signIn: oidc,
      clock,
      tls: config.tls,
      maxHeldBytes: config.limits.maxHeldBytes,
      heldBodyEstimateBytes: config.limits.heldBodyEstimateBytes,
      maxHeldBytesPerRequest: config.limits.maxHeldBytesPerRequest,
      maxHeldBytesPerClient: config.limits.maxHeldBytesPerClient,
      bodyIdleTimeoutMs: config.server.bodyIdleTimeoutMs,
      tlsHandshakeTimeoutMs: config.server.tlsHandshakeTimeoutMs,
      http2SessionIdleTimeoutMs: config.server.http2SessionIdleTimeoutMs,
      http2MaxConcurrentStreams: config.server.http2MaxConcurrentStreams,
      linger: {
        timeMs: config.server.lingerTimeMs,
        idleMs: config.server.lingerIdleTimeoutMs,
        maxBytes: config.server.lingerMaxBytes,
        maxConnections: config.server.maxLingeringConnections,
      },
    });
    if (oidc !== undefined) oidc.onSignedIn = (target, identity) => proxy.startFor(target, identity);
    const addr = await proxy.listen(config.listen.port, config.listen.host);
    ownListeners.set('proxy', { port: addr.port, host: addr.host });
    const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
    const proxyUrl = `${config.tls === undefined ? 'http' : 'https'}://${host}:${addr.port}`;
    log.info({ url: proxyUrl, resources: routed.size }, 'proxy listening');
    // The sign-in providers, discovered now in the background: one that is down is in the
    // log at start-up (sign-in answers 503 and tries again), never a failed start.
    oidc?.warmUp();
    // Warnings only (the proxy runs either way): resources their cloud's API cannot serve.
    const checks = new AbortController();
    closers.push(async () => checks.abort());
    void atmosphereApiWarnings(config, 5_000, checks.signal, resources).then((ws) => {
      for (const w of ws) log.warn(w, 'a resource cannot work with its cloud as configured');
    });

    const drainTimeoutMs = config.shutdown.drainTimeoutMs
      ?? Math.max(0, ...resources.map((r) => r.holdTimeoutMs)) + 5_000;
    let current = config;

    // 7. The admin listener (API, dashboard, metrics), when configured: loopback by default.
    //    Its reload calls the `reload` defined below (only ever called after start-up).
    const m = metrics;
    let admin: AdminServer | undefined;
    let adminUrl: string | undefined;
    if (config.admin !== undefined) {
      const { AdminServer } = await import('./admin/admin-server.ts');
      const a = new AdminServer({
        admin: config.admin, identities: resolveIdentitySecrets(config.identities), realm: config.access.realm, manager, state: adminState,
        resources: () => new Map([...routed].map(([id, r]) => [id, r.runtime])), isConfigured: (id) => routed.has(id),
        config: () => current, store, clock, logger: log,
        metrics: m === undefined ? undefined : () => m.render(),
        // Only an app started from a file (the CLI) can read its configuration again.
        reload: options.loadConfig === undefined ? undefined : () => reload(),
      });
      const at = await a.listen(config.admin.listen.port, config.admin.listen.host);
      // A cloud that names the admin listener as a backend would hand every user the admin
      // API (from loopback, even without credentials when anonymousFromLoopback is on).
      ownListeners.set('admin', { port: at.port, host: at.host });
      admin = a;
      closers.push(() => a.close());
      adminUrl = `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;
      log.info({ url: adminUrl }, 'admin listening');
    }

    // 8. Front-proxy mode: the decisions nginx (or HAProxy) in front asks for (src/front/).
    const front = config.front.enabled
      ? await (await import('./front/front-mode.ts')).startFrontMode({
        config, manager, admit: (req) => proxy.admit(req), clock, logger: log,
        // Through the indirection: a reload replaces `access`.
        backendHeaders: access.backendHeaders === undefined ? undefined : (...a) => access.backendHeaders?.(...a) ?? [],
      })
      : undefined;
    if (front !== undefined) {
      closers.push(() => front.close());
      const decision = new URL(front.decisionUrl);
      ownListeners.set('decision', { port: Number(decision.port), host: decision.hostname.replace(/^\[|\]$/g, '') });
    }

    const retirer = new Retirer({ manager, clock, logger: log, drainTimeoutMs, isConfigured: (id) => routed.has(id) });
    let reloading: Promise<ReloadResult> | undefined;
    let closing: Promise<void> | undefined;

    // Reload: everything new is built first (a throw leaves the old world untouched), then
    // swapped in one synchronous block, so no request sees half of each.
    const applyReload = async (): Promise<ReloadResult> => {
      const t0 = performance.now();
      const refuse = (errors: string): ReloadResult => {
        log.warn({ errors }, 'configuration reload refused; the running configuration is kept');
        metrics?.reloaded('refused');
        return { ok: false, errors };
      };
      if (closing !== undefined) return refuse('the proxy is shutting down');
      if (options.loadConfig === undefined) return refuse('no configuration file to reload from');
      let next: Config;
      try {
        next = await options.loadConfig();
      } catch (err) {
        return refuse(err instanceof ConfigError ? err.message : `cannot read the configuration: ${err instanceof Error ? err.message : String(err)}`);
      }
      if (closing !== undefined) return refuse('the proxy is shutting down');
      const restart = restartOnlyChanges(current, next);
      if (restart.length > 0) {
        return refuse(`these sections changed and need a restart: ${restart.join(', ')} (nothing was applied; see docs/operations/reload.md)`);
      }
      const nextResources = effectiveResources(next);
      try {
        await loadProviderCode(nextResources);
      } catch (err) {
        return refuse(`cannot load a provider's code: ${err instanceof Error ? err.message : String(err)}`);
      }
      const plan = planResources(resources, nextResources);
      const rebuilt = new Set(plan.providersRebuilt);
      // Unchanged providers are shared; changed ones are built anew for the new runtimes.
      const nextProviders = new Map([...providers].filter(([name]) => !rebuilt.has(name) && nextResources.some((r) => r.providerName === name)));
      const fresh = new Map<string, RoutedResource>();
      let nextAccess: typeof access;
      const previousServiceIds = new Map(serviceIds);
      try {
        for (const r of nextResources) serviceIds.set(r.id, r.serviceId);
        // Theme files are read again (a fresh loader): an edited theme is picked up by a reload.
        const themes = new ThemeLoader();
        for (const r of nextResources) {
          const old = routed.get(r.id);
          if (old !== undefined && plan.unchanged.includes(r.id)) {
            if (r.waiting.themeDir !== undefined) fresh.set(r.id, { ...old, waiting: { ...old.waiting, ...r.waiting, theme: loadThemeOf(r, themes) } });
            continue;
          }
          fresh.set(r.id, buildRouted(r, nextProviders, themes));
        }
        nextAccess = buildAccess(next, nextResources);
      } catch (err) {
        serviceIds.clear();
        for (const [k, v] of previousServiceIds) serviceIds.set(k, v);
        await Promise.allSettled([...nextProviders].filter(([name]) => providers.get(name) !== nextProviders.get(name)).map(([, p]) => p.close?.() ?? Promise.resolve()));
        if (err instanceof ConfigError && options.configFile !== undefined) return refuse(err.inFile(options.configFile).message);
        return refuse(err instanceof Error ? err.message : String(err));
      }
      // -- the swap: synchronous from here on ----------------------------------------------
      for (const id of plan.removed) {
        routed.delete(id);
        serviceIds.delete(id);
      }
      for (const [id, r] of fresh) routed.set(id, r);
      for (const [name, p] of providers) if (nextProviders.get(name) !== p) retiredProviders.push(p);
      providers.clear();
      for (const [name, p] of nextProviders) providers.set(name, p);
      access = nextAccess;
      limiter.replaceSettings(next.access.limits);
      resources = nextResources;
      current = next;
      metrics?.setResources(meteredResources(nextResources));
      keepWarm.close();
      keepWarm = buildKeepWarm(new Map([...routed].map(([id, r]) => [id, r.runtime])));
      keepWarm.start();
      for (const id of plan.removed) retirer.retire(id);
      accessLog?.reopen();
      metrics?.reloaded('applied');
      const summary: ReloadSummary = {
        added: plan.added, changed: plan.changed, removed: plan.removed, providersRebuilt: plan.providersRebuilt,
        identities: next.identities.length, tookMs: Math.round(performance.now() - t0),
      };
      log.info(summary, 'configuration reloaded');
      return { ok: true, summary };
    };
    // One reload at a time: a second SIGHUP during a reload waits for it, then reloads again.
    const reload = (): Promise<ReloadResult> => {
      const run = (reloading ?? Promise.resolve()).catch(() => undefined).then(applyReload);
      reloading = run;
      return run;
    };
    const close = (): Promise<void> => {
      closing ??= (async () => {
        // Shutdown order:
        // 1. Stop accepting connections; requests arriving on open ones get 503.
        log.info({ drainTimeoutMs, held: manager.heldTotal, inFlight: activeForwards(manager) }, 'shutting down: draining');
        proxy.startDraining();
        admin?.startDraining();
        front?.startDraining();
        // 2. Let in-flight and held requests finish (boots still complete), up to the drain time.
        await waitFor(() => manager.heldTotal === 0 && activeForwards(manager) === 0, drainTimeoutMs);
        // 3. Stop keep-warm; answer whatever is still held with 503 and stop the control
        //    plane's timers; give those 503s a turn to be written before sockets close.
        keepWarm.close();
        retirer.close();
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
        const ours = new Set([...providers.values(), ...retiredProviders].filter((p) => !notOurs.has(p)));
        await Promise.allSettled([...ours].map((p) => p.close?.() ?? Promise.resolve()));
        for (const c of closers.reverse()) await c();
      })();
      return closing;
    };
    return {
      proxyUrl, adminUrl, mockCloud, manager, proxy, state, verifiers: access.verifiers, front, metrics, close, reload,
      get config() { return current; },
    };
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

/**
 * Reloads the configuration on every SIGHUP (systemd's `ExecReload=kill -HUP $MAINPID`).
 * Returns the function that stops listening.
 */
export function reloadOnSignal(app: App, onResult: (result: ReloadResult) => void): () => void {
  const onHup = (): void => {
    app.reload().then(onResult, (err: unknown) => onResult({ ok: false, errors: err instanceof Error ? err.message : String(err) }));
  };
  process.on('SIGHUP', onHup);
  return () => process.off('SIGHUP', onHup);
}

/** A resource's waiting page theme (undefined: the built-in one); a broken one names the resource. */
function loadThemeOf(r: EffectiveResource, themes: ThemeLoader): WaitingTheme | undefined {
  try {
    return themes.load(r.waiting.themeDir);
  } catch (err) {
    throw new ConfigError('<config>', [`resources.${r.id}.waiting.themeDir: ${err instanceof Error ? err.message : String(err)}`]);
  }
}

function meteredResources(resources: readonly EffectiveResource[]): Array<{ id: string; provider: string }> {
  return resources.map((r) => ({ id: r.id, provider: providerLabel(r) }));
}

/**
 * The `provider` label of a resource's provider: its name under `providers:`, or for one
 * defined inline, its kind (`static:inline`). Not the inline one's own name (`<id>:inline`):
 * that is one label value per resource, past `metrics.maxResourceLabels`, and every resource
 * that booted kept its own histogram series (some 12 KB each with 1,000 warm resources).
 */
function providerLabel(r: EffectiveResource): string {
  return r.inlineProvider ? `${r.provider.kind}:inline` : r.providerName;
}

async function buildSignIn(config: Config, clock: Clock, log: Logger, injected: KeyValueStore | undefined, closers: Array<() => Promise<void>>): Promise<OidcSignIn | undefined> {
  const identities = config.identities.flatMap((i) => (i.kind === 'oidc' ? [i] : []));
  if (identities.length === 0) return undefined;
  // Loaded here, on demand: openid-client, jose's remote keys, the Redis client.
  const [{ OidcSignIn }, { createKeyValueStore }] = await Promise.all([import('./access/oidc/sign-in.ts'), import('./state/key-value-stores.ts')]);
  const kv = injected ?? createKeyValueStore(config.state, clock, log);
  if (injected === undefined) closers.push(() => kv.close());
  const sessions = config.access.sessions;
  const trusted = new TrustedProxies(config.trustedProxies);
  return new OidcSignIn({
    identities, sessions, kv, clock, logger: log, tls: config.tls !== undefined,
    // Only a trusted front proxy's word counts: anyone else could claim https.
    forwardedHttps: (remoteAddress, proto) => proto !== undefined && trusted.has(remoteAddress) && proto.split(',')[0]?.trim().toLowerCase() === 'https',
    keys: sessions.keys.map((k, i) => resolveSecretValue(k, `access.sessions.keys[${i}]`)),
    clientSecrets: new Map(identities.map((i) => [i.name, i.clientSecret === undefined ? undefined : resolveSecretValue(i.clientSecret, `identities.${i.name}.clientSecret`)])),
  });
}

async function openStore(config: Config, log: Logger): Promise<Store> {
  try {
    return await createStore(config.state, log, { maxAuditEvents: config.audit.maxEvents });
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

/**
 * The providers whose code is big (dockerode with its gRPC and SSH stacks: ~0.1 s to load;
 * QEMU's; atmosphere and http, which use undici's request API and so load undici's whole
 * index, fetch and Node's own bundled undici included: ~200M instructions), loaded by
 * loadProviderCode only when a configuration uses them, so that a plain start-up does not
 * pay for them.
 */
const heavyProviders: {
  docker?: typeof createDockerProvider; qemu?: typeof createQemuProvider;
  atmosphere?: typeof createAtmosphereProvider; http?: typeof createHttpProvider;
} = {};

async function loadProviderCode(resources: readonly EffectiveResource[]): Promise<void> {
  const kinds = new Set(resources.map((r) => r.provider.kind));
  if (kinds.has('docker')) heavyProviders.docker ??= (await import('./providers/docker/docker-provider.ts')).createDockerProvider;
  if (kinds.has('qemu')) heavyProviders.qemu ??= (await import('./providers/qemu/qemu-provider.ts')).createQemuProvider;
  if (kinds.has('atmosphere')) heavyProviders.atmosphere ??= (await import('./providers/atmosphere/atmosphere-provider.ts')).createAtmosphereProvider;
  if (kinds.has('http')) heavyProviders.http ??= (await import('./providers/http/http-provider.ts')).createHttpProvider;
}

/** A heavy provider's factory, which loadProviderCode has loaded before any build. */
function loaded<T>(factory: T | undefined, kind: string): T {
  if (factory === undefined) throw new Error(`the ${kind} provider's code was not loaded (loadProviderCode)`);
  return factory;
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
      return loaded(heavyProviders.atmosphere, 'atmosphere')({
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
      return loaded(heavyProviders.http, 'http')({
        ...p, secrets: secretReaders(p.credentials, `providers.${r.providerName}`), logger,
        resourceVars: (id) => ({ serviceId: serviceIds.get(id) ?? id }),
      });
    case 'qemu': {
      const { kind: _kind, ...options } = p;
      return loaded(heavyProviders.qemu, 'qemu')({ ...options, logger });
    }
    case 'docker':
      return loaded(heavyProviders.docker, 'docker')({
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

/** The Redis port the proxy itself talks to, when state is on Redis (never a backend). */
function redisPortOf(config: Config): number[] {
  if (config.state.kind !== 'redis') return [];
  try {
    return [Number(new URL(config.state.url).port || 6379)];
  } catch {
    return [];
  }
}
