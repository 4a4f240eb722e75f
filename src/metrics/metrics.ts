/**
 * Prometheus metrics (prom-client), one registry per App: nothing is global, so two apps in
 * one process (tests, replicas) never mix their numbers. Fed by the core's events, by the
 * data plane's request observer (observer.ts) and by a timing wrapper around each provider.
 * Gauges that describe the present (held requests, instances, circuits) are read from the
 * manager at scrape time, so they cannot drift from what the manager knows.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from './prom-parts.ts';
import { isSmartProxyError, ProviderError } from '../core/errors.ts';
import type { InstanceStatus } from '../core/lifecycle.ts';
import type { Clock, Provider, TimerHandle } from '../core/ports.ts';
import type { Instance, ManagerEvent, ResourceManager } from '../core/resource-manager.ts';
import type { LingerOutcome } from '../proxy/linger.ts';
import type { HoldOutcome, RequestObserver, RequestRecord, UpgradeRecord } from '../proxy/observer.ts';
import { METRICS, type MetricDefinition } from './catalogue.ts';
import { LocalHistogram, type Series } from './local-histogram.ts';

/** A configured resource as metrics label it. */
export interface MeteredResource {
  readonly id: string;
  /** The provider's label: its name in the config (`providers.NAME`), or an inline one's kind (`static:inline`). */
  readonly provider: string;
}

export interface MetricsOptions {
  readonly manager: ResourceManager;
  readonly clock: Clock;
  /** In config order; the first `maxResourceLabels` get their own label value. */
  readonly resources: readonly MeteredResource[];
  readonly maxResourceLabels: number;
  /** The event-loop sampler stays on this long after the last work (default 10 s; tests shorten it). */
  readonly loopSampleAfterWorkMs?: number;
}

const STATES: readonly InstanceStatus[] = ['stopped', 'starting', 'ready', 'stopping', 'failed'];
/** Index = status / 100 (0 and 1: 1xx); 6: the client left before the response ended. */
const STATUS_CLASSES = ['1xx', '1xx', '2xx', '3xx', '4xx', '5xx', 'closed'] as const;
const CLOSED = 6;
/** Label values of requests with no configured resource, and of resources past the cap. */
const UNROUTED = '_unrouted';
const OTHER = '_other';
/**
 * The event-loop delay is sampled while there is work (a request ended, an instance changed)
 * and this long after: Node's sampler wakes the process every 20 ms, which at idle was most of
 * its CPU (about 6 ms per second measured, bench/idle-cpu.ts). With nothing to serve there is
 * nothing a slow loop could delay.
 */
const LOOP_SAMPLE_AFTER_WORK_MS = 10_000;

type Labels<D extends MetricDefinition> = D['labels'][number];

/**
 * What the warm path adds to for one `resource` label value: its request counts since the last
 * scrape (by status class index) and its forward-latency series (made on its first warm
 * request, so a resource never forwarded to exports none). One object reached by one lookup
 * per request: with thousands of resources, each separate table a request looks up is memory
 * the CPU must fetch for that resource (a hash bucket, an entry, a key).
 */
interface LabelSlot {
  readonly label: string;
  readonly counts: Float64Array;
  latency: Series | undefined;
}

function counter<D extends MetricDefinition>(registry: Registry, d: D, collect?: (c: Counter<Labels<D>>) => void): Counter<Labels<D>> {
  return new Counter({
    name: d.name, help: d.help, labelNames: d.labels, registers: [registry],
    ...(collect === undefined ? {} : { collect(this: Counter<Labels<D>>) { collect(this); } }),
  });
}

/** A gauge read at scrape time: `collect` sets its values from what is known now. */
function gauge<D extends MetricDefinition>(registry: Registry, d: D, collect: (g: Gauge<Labels<D>>) => void): Gauge<Labels<D>> {
  return new Gauge({ name: d.name, help: d.help, labelNames: d.labels, registers: [registry], collect(this: Gauge<Labels<D>>) { collect(this); } });
}

function histogram<D extends MetricDefinition>(registry: Registry, d: D): Histogram<Labels<D>> {
  return new Histogram({ name: d.name, help: d.help, labelNames: d.labels, buckets: [...(d.buckets ?? [])], registers: [registry] });
}

export class Metrics implements RequestObserver {
  readonly registry = new Registry();
  readonly #manager: ResourceManager;
  readonly #clock: Clock;
  readonly #maxResourceLabels: number;
  /** The slot of each configured resource (those past the label cap share `_other`'s). */
  #slotOf = new Map<string, LabelSlot>();
  /** Slots by label value; they outlive a reload that keeps the label (counts not scraped yet). */
  readonly #slots = new Map<string, LabelSlot>();
  #providerOf = new Map<string, string>();
  /** The status each instance had at its previous event, to tell a stop from a vanishing. */
  readonly #lastStatus = new WeakMap<Instance, InstanceStatus>();
  readonly #eventLoop: ReturnType<typeof monitorEventLoopDelay>;
  /** Clock time until which the loop sampler stays on; its timer while it is on. */
  #loopSampleUntil = 0;
  readonly #loopSampleAfterWorkMs: number;
  #loopTimer: TimerHandle | undefined;
  #closed = false;
  readonly #unsubscribe: () => void;

  readonly #holdDuration: Histogram<'resource' | 'outcome'>;
  readonly #bootDuration: Histogram<'resource' | 'provider'>;
  readonly #starts: Counter<'resource'>;
  readonly #stops: Counter<'resource' | 'cause'>;
  readonly #failures: Counter<'resource' | 'cause'>;
  readonly #lost: Counter<'resource'>;
  readonly #providerCalls: Histogram<'provider' | 'operation' | 'outcome'>;
  readonly #providerErrors: Counter<'provider' | 'operation' | 'kind'>;
  readonly #forwardDuration: LocalHistogram;
  readonly #reloads: Counter<'outcome'>;
  readonly #lingered: Counter<'outcome'>;
  readonly #discarded: Counter;

  constructor(options: MetricsOptions) {
    this.#manager = options.manager;
    this.#clock = options.clock;
    this.#maxResourceLabels = options.maxResourceLabels;
    this.#loopSampleAfterWorkMs = options.loopSampleAfterWorkMs ?? LOOP_SAMPLE_AFTER_WORK_MS;
    this.setResources(options.resources);
    const r = this.registry;
    counter(r, METRICS.requests, (c) => {
      // The warm path adds 1 to a number in a slot (no label hashing, no allocation); the
      // counter takes the sums when Prometheus scrapes.
      for (const [resource, { counts }] of this.#slots) {
        for (let i = 0; i < counts.length; i++) {
          const n = counts[i] ?? 0;
          if (n === 0) continue;
          c.inc({ resource, status_class: STATUS_CLASSES[i] ?? 'closed' }, n);
          counts[i] = 0;
        }
      }
    });
    this.#holdDuration = histogram(r, METRICS.holdDuration);
    this.#bootDuration = histogram(r, METRICS.bootDuration);
    this.#starts = counter(r, METRICS.starts);
    this.#stops = counter(r, METRICS.stops);
    this.#failures = counter(r, METRICS.failures);
    this.#lost = counter(r, METRICS.lost);
    this.#providerCalls = histogram(r, METRICS.providerCalls);
    this.#providerErrors = counter(r, METRICS.providerErrors);
    const fwd = METRICS.forwardDuration;
    this.#forwardDuration = new LocalHistogram({ name: fwd.name, help: fwd.help, label: 'resource', buckets: fwd.buckets, registry: r });
    this.#reloads = counter(r, METRICS.reloads);
    this.#lingered = counter(r, METRICS.lingered);
    this.#discarded = counter(r, METRICS.discarded);

    gauge(r, METRICS.held, (g) => {
      g.reset();
      for (const label of this.#labelValues()) g.set({ resource: label }, 0);
      for (const inst of this.#manager.allInstances()) {
        if (inst.waiters.size > 0) g.inc({ resource: this.#label(inst.resource.id) }, inst.waiters.size);
      }
    });
    gauge(r, METRICS.instances, (g) => {
      g.reset();
      for (const label of this.#labelValues()) for (const state of STATES) g.set({ resource: label, state }, 0);
      for (const inst of this.#manager.allInstances()) g.inc({ resource: this.#label(inst.resource.id), state: inst.status });
    });
    gauge(r, METRICS.circuit, (g) => {
      g.reset();
      const now = this.#clock.now();
      const open = new Set<string>();
      for (const inst of this.#manager.allInstances()) {
        if (inst.status === 'failed' && inst.failedUntil > now) open.add(this.#label(inst.resource.id));
      }
      for (const label of this.#labelValues()) g.set({ resource: label }, open.has(label) ? 1 : 0);
    });
    const owedStops = (g: Gauge<'resource'>, which: 'pending' | 'given-up'): void => {
      g.reset();
      const by = new Map<string, number>();
      for (const inst of this.#manager.stopRetries.instances()) {
        const given = this.#manager.stopRetries.stateOf(inst)?.state === 'given-up';
        if (given !== (which === 'given-up')) continue;
        const label = this.#label(inst.resource.id);
        by.set(label, (by.get(label) ?? 0) + 1);
      }
      for (const label of this.#labelValues()) g.set({ resource: label }, by.get(label) ?? 0);
    };
    gauge(r, METRICS.stopsPendingRetry, (g) => owedStops(g, 'pending'));
    gauge(r, METRICS.stopsGivenUp, (g) => owedStops(g, 'given-up'));
    // Node's own sampler (libuv timer, 20 ms resolution), on while there is work (#working).
    this.#eventLoop = monitorEventLoopDelay({ resolution: 20 });
    this.#working();
    const loop = this.#eventLoop;
    gauge(r, METRICS.eventLoopDelay, (g) => {
      g.reset();
      const q = (p: number): number => (loop.count === 0 ? 0 : loop.percentile(p) / 1e9);
      g.set({ quantile: '0.5' }, q(50));
      g.set({ quantile: '0.9' }, q(90));
      g.set({ quantile: '0.99' }, q(99));
      g.set({ quantile: '1' }, loop.count === 0 ? 0 : loop.max / 1e9);
      loop.reset();
    });
    gauge(r, METRICS.residentMemory, (g) => { g.set(process.memoryUsage.rss()); });
    gauge(r, METRICS.heapUsed, (g) => { g.set(process.memoryUsage().heapUsed); });
    counter(r, METRICS.cpu, (g) => {
      const u = process.cpuUsage();
      g.reset();
      g.inc((u.user + u.system) / 1e6);
    });
    this.#unsubscribe = options.manager.onEvent((e) => {
      this.#working();
      this.#onEvent(e);
    });
  }

  /** The label values of configured resources (a reload replaces them). */
  setResources(resources: readonly MeteredResource[]): void {
    const slots = new Map<string, LabelSlot>();
    const providers = new Map<string, string>();
    for (const res of resources) {
      slots.set(res.id, this.#slot(slots.size < this.#maxResourceLabels ? res.id : OTHER));
      providers.set(res.id, res.provider);
    }
    this.#slotOf = slots;
    this.#providerOf = providers;
  }

  /** The Prometheus text exposition of every metric. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** A configuration reload was applied or refused. */
  reloaded(outcome: 'applied' | 'refused'): void {
    this.#reloads.inc({ outcome });
  }

  /**
   * Wraps a provider so that each call is timed and its failures counted under `name`
   * (a configured provider name: bounded). Every other member passes through unchanged.
   */
  meterProvider(name: string, provider: Provider): Provider {
    const timed = (operation: 'start' | 'inspect' | 'stop' | 'list', call: (...args: never[]) => Promise<unknown>) =>
      async (...args: never[]): Promise<unknown> => {
        const t0 = performance.now();
        try {
          const result = await call.apply(provider, args);
          this.#providerCalls.observe({ provider: name, operation, outcome: 'ok' }, (performance.now() - t0) / 1000);
          return result;
        } catch (err) {
          const signal = args.find((a: unknown) => a instanceof AbortSignal) as AbortSignal | undefined;
          const aborted = signal?.aborted === true;
          this.#providerCalls.observe({ provider: name, operation, outcome: aborted ? 'aborted' : 'error' }, (performance.now() - t0) / 1000);
          const kind = aborted ? 'aborted' : err instanceof ProviderError ? (err.retryable ? 'retryable' : 'permanent') : 'other';
          this.#providerErrors.inc({ provider: name, operation, kind });
          throw err;
        }
      };
    // Made on first use, not here: a config with thousands of inline providers builds as many
    // wrappers at start-up, and most of their methods are never called (10,000 resources:
    // ~10 MB less to allocate and scavenge while starting).
    let wrapped: Map<PropertyKey, unknown> | undefined;
    let bound: Map<PropertyKey, unknown> | undefined;
    return new Proxy(provider, {
      get(target, prop) {
        const known = wrapped?.get(prop) ?? bound?.get(prop);
        if (known !== undefined) return known;
        const value: unknown = Reflect.get(target, prop, target);
        if (typeof value !== 'function') return value;
        if (prop === 'start' || prop === 'inspect' || prop === 'stop' || prop === 'list') {
          const fn = timed(prop, value as (...args: never[]) => Promise<unknown>);
          (wrapped ??= new Map()).set(prop, fn);
          return fn;
        }
        // Bound to the provider itself: its private fields do not exist on the proxy.
        const fn = (value as (...args: unknown[]) => unknown).bind(target);
        (bound ??= new Map()).set(prop, fn);
        return fn;
      },
    });
  }

  // -- the data plane's observer (observer.ts) -------------------------------------------

  finished(_req: IncomingMessage, res: ServerResponse, record: RequestRecord): void {
    this.#working();
    const slot = this.#slotOfRecord(record);
    slot.counts[res.writableFinished ? Math.min(5, Math.floor(res.statusCode / 100)) : CLOSED]! += 1;
    if (record.warm && res.writableFinished) this.#forwardDuration.observeIn(slot.latency ??= this.#forwardDuration.series(slot.label), (performance.now() - record.startedAt) / 1000);
  }

  /**
   * A WebSocket upgrade counts as one request when its tunnel closes: 101 is "1xx", a refusal
   * its own class, "closed" when the client left unanswered. A warm one's forward latency is
   * the time to the backend's 101; the tunnel's lifetime is no latency and is not observed.
   */
  upgraded(_req: IncomingMessage, record: UpgradeRecord): void {
    this.#working();
    const slot = this.#slotOfRecord(record);
    slot.counts[record.status === undefined ? CLOSED : Math.min(5, Math.floor(record.status / 100))]! += 1;
    if (record.warm && record.status === 101 && record.answeredAt !== undefined) {
      this.#forwardDuration.observeIn(slot.latency ??= this.#forwardDuration.series(slot.label), (record.answeredAt - record.startedAt) / 1000);
    }
  }

  /** The slot a finished request counts in: its resource's, `_unrouted` without one. */
  #slotOfRecord(record: RequestRecord): LabelSlot {
    const id = record.resourceId;
    if (id === undefined) return this.#slot(UNROUTED);
    return this.#slotOf.get(id) ?? this.#slot(OTHER);
  }

  /** The slot of a label value, made on first use. */
  #slot(label: string): LabelSlot {
    let slot = this.#slots.get(label);
    if (slot === undefined) {
      slot = { label, counts: new Float64Array(STATUS_CLASSES.length), latency: undefined };
      this.#slots.set(label, slot);
    }
    return slot;
  }

  lingered(outcome: LingerOutcome, discardedBytes: number): void {
    this.#lingered.inc({ outcome });
    if (discardedBytes > 0) this.#discarded.inc(discardedBytes);
  }

  held(resourceId: string, heldMs: number, outcome: HoldOutcome): void {
    this.#holdDuration.observe({ resource: this.#label(resourceId), outcome }, heldMs / 1000);
  }

  /** Stops the event-loop sampler and the event subscription. */
  close(): void {
    this.#closed = true;
    this.#unsubscribe();
    this.#loopTimer?.cancel();
    this.#loopTimer = undefined;
    this.#eventLoop.disable();
  }

  /** Is the event-loop sampler on (there was work within LOOP_SAMPLE_AFTER_WORK_MS)? */
  get sampling(): boolean {
    return this.#loopTimer !== undefined;
  }

  /** Event-loop delay samples taken since the last scrape (Node records one per 20 ms tick, from the second on). */
  get loopSampleCount(): number {
    return this.#eventLoop.count;
  }

  /** There is work: keep the event-loop sampler on until a while after it. O(1), no allocation while on. */
  #working(): void {
    if (this.#closed) return;
    this.#loopSampleUntil = this.#clock.now() + this.#loopSampleAfterWorkMs;
    if (this.#loopTimer !== undefined) return;
    this.#eventLoop.enable();
    this.#armLoopTimer(this.#loopSampleAfterWorkMs);
  }

  /** One timer per quiet period, not per request: when it fires it looks whether work came meanwhile. */
  #armLoopTimer(ms: number): void {
    // The injected clock's timers never keep the process alive.
    this.#loopTimer = this.#clock.setTimeout(() => {
      const left = this.#loopSampleUntil - this.#clock.now();
      if (left > 0 && !this.#closed) {
        this.#armLoopTimer(left);
        return;
      }
      this.#loopTimer = undefined;
      this.#eventLoop.disable();
    }, Math.max(1, Math.ceil(ms)));
  }

  // -- internals -------------------------------------------------------------------------

  #label(resourceId: string): string {
    return this.#slotOf.get(resourceId)?.label ?? OTHER;
  }

  *#labelValues(): Iterable<string> {
    yield* new Set([...this.#slotOf.values()].map((s) => s.label));
  }

  #onEvent(e: ManagerEvent): void {
    const inst = e.instance;
    const resource = this.#label(inst.resource.id);
    switch (e.type) {
      case 'start-requested':
        this.#starts.inc({ resource });
        return;
      case 'boot-finished':
        this.#bootDuration.observe({ resource, provider: this.#providerOf.get(inst.resource.id) ?? inst.resource.provider.kind }, e.bootMs / 1000);
        return;
      case 'instance-adopted':
        return;
      case 'instance-changed': {
        const prev = this.#lastStatus.get(inst) ?? 'stopped';
        const now = inst.status;
        if (prev === now) return; // a phase change within starting
        this.#lastStatus.set(inst, now);
        // A stop that failed also ends in stopped (stopping --fail--> stopped): a failure, not a stop.
        if (now === 'stopped' && prev === 'stopping' && e.reason?.startsWith('stop failed') === true) this.#failures.inc({ resource, cause: 'stop_failed' });
        else if (now === 'stopped' && prev === 'stopping') this.#stops.inc({ resource, cause: stopCause(e.reason) });
        else if (now === 'stopped' && prev === 'ready') this.#stops.inc({ resource, cause: 'vanished' });
        else if (now === 'failed') this.#failures.inc({ resource, cause: failureCause(inst) });
        else if (now === 'starting' && prev === 'ready') this.#lost.inc({ resource });
        return;
      }
    }
  }
}

/** The bounded cause of a stop, from the free-text reason the core gives. */
export function stopCause(reason: string | undefined): string {
  if (reason === undefined) return 'other';
  if (reason.startsWith('idle')) return 'idle';
  if (reason === 'proxy shutdown') return 'shutdown';
  if (reason.startsWith('resource removed')) return 'reload';
  if (/\b(operator|admin)\b/i.test(reason)) return 'operator';
  return 'other';
}

function failureCause(inst: Instance): string {
  const err = inst.lastError;
  return isSmartProxyError(err) && /^SP_[A-Z0-9_]{1,60}$/.test(err.code) ? err.code : 'other';
}
