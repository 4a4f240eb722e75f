/**
 * Every metric the proxy exports, in one list: the registry is built from it and the
 * reference page (docs/reference/metrics.md) is generated from it, so they cannot drift.
 */

export type MetricType = 'counter' | 'gauge' | 'histogram';

export interface MetricDefinition {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly labels: readonly string[];
  /** Histogram bucket upper bounds, in the metric's unit. */
  readonly buckets?: readonly number[];
}

/** Boots of VMs take from well under a second (a process) to minutes (a cloud VM). */
export const BOOT_BUCKETS_S = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600] as const;
/** A warm forward is milliseconds; the tail reaches slow backends. */
export const FORWARD_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] as const;
/** Provider API calls: a local engine answers in ms, a cloud API in seconds. */
export const PROVIDER_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;

export const METRICS = {
  requests: {
    name: 'smart_proxy_requests_total', type: 'counter', labels: ['resource', 'status_class'],
    help: 'Requests answered, by resource and status class (1xx-5xx, or "closed": the client left before the response ended). Requests that matched no configured resource count under resource "_unrouted". A WebSocket upgrade counts once, when its tunnel closes: 101 as "1xx", a refused one by its status.',
  },
  held: {
    name: 'smart_proxy_held_requests', type: 'gauge', labels: ['resource'],
    help: 'Requests waiting for an instance of the resource right now.',
  },
  holdDuration: {
    name: 'smart_proxy_hold_duration_seconds', type: 'histogram', labels: ['resource', 'outcome'], buckets: BOOT_BUCKETS_S,
    help: 'How long requests were held for an instance; outcome: ready (forwarded), failed (an error answered), client_gone.',
  },
  bootDuration: {
    name: 'smart_proxy_boot_duration_seconds', type: 'histogram', labels: ['resource', 'provider'], buckets: BOOT_BUCKETS_S,
    help: 'From the start request to ready (provider running and probe passing), per successful boot.',
  },
  starts: {
    name: 'smart_proxy_instance_starts_total', type: 'counter', labels: ['resource'],
    help: 'Starts asked of the provider (one per instance boot; joined requests do not add to it; re-adoptions after a restart are not starts).',
  },
  stops: {
    name: 'smart_proxy_instance_stops_total', type: 'counter', labels: ['resource', 'cause'],
    help: 'Instances that stopped, by cause: idle, shutdown, reload (resource removed), operator, vanished (gone behind the proxy\'s back), other.',
  },
  failures: {
    name: 'smart_proxy_instance_failures_total', type: 'counter', labels: ['resource', 'cause'],
    help: 'Failed starts and stops, by cause: the error code (SP_BOOT_TIMEOUT, SP_START_FAILED, ...) or stop_failed.',
  },
  lost: {
    name: 'smart_proxy_instance_lost_total', type: 'counter', labels: ['resource'],
    help: 'Ready instances found gone or unreachable and started again (crash repair).',
  },
  providerCalls: {
    name: 'smart_proxy_provider_call_duration_seconds', type: 'histogram', labels: ['provider', 'operation', 'outcome'], buckets: PROVIDER_BUCKETS_S,
    help: 'Provider calls (start, inspect, stop, list) by provider name and outcome: ok, error, aborted (timed out or cancelled).',
  },
  providerErrors: {
    name: 'smart_proxy_provider_errors_total', type: 'counter', labels: ['provider', 'operation', 'kind'],
    help: 'Failed provider calls by kind: retryable (timeouts, 5xx, 429: the core tries again), permanent, aborted (the call was cut at its timeout or cancelled), other (not a provider error).',
  },
  circuit: {
    name: 'smart_proxy_circuit_open', type: 'gauge', labels: ['resource'],
    help: '1 while the resource is in its failure cool-down (requests answered at once with SP_RESOURCE_FAILED), else 0.',
  },
  instances: {
    name: 'smart_proxy_instances', type: 'gauge', labels: ['resource', 'state'],
    help: 'Known instances by lifecycle state (stopped, starting, ready, stopping, failed).',
  },
  stopsPendingRetry: {
    name: 'smart_proxy_stops_pending_retry', type: 'gauge', labels: ['resource'],
    help: 'Stops of instances out of service (a failed start\'s clean-up, a stop that failed) that the proxy is trying again with backoff: scheduled or in flight. Each may be a machine still running; see the admin API\'s /api/v1/stop-retries.',
  },
  stopsGivenUp: {
    name: 'smart_proxy_stops_given_up', type: 'gauge', labels: ['resource'],
    help: 'Owed stops whose tries ran out: the machine may still be running (and costing). Stays until the instance starts again or an operator retries or lets it go (admin API); alert on > 0.',
  },
  forwardDuration: {
    name: 'smart_proxy_warm_forward_duration_seconds', type: 'histogram', labels: ['resource'], buckets: FORWARD_BUCKETS_S,
    help: 'Requests forwarded at once to a ready instance: from arrival to the end of the response (backend time included); for a WebSocket upgrade, to the backend\'s 101.',
  },
  eventLoopDelay: {
    name: 'smart_proxy_event_loop_delay_seconds', type: 'gauge', labels: ['quantile'],
    help: 'Event-loop delay since the previous scrape (quantile 0.5, 0.9, 0.99 and 1 = max). High values delay every request. Sampled every 20 ms while there is work (requests, instance changes) and 10 s after; 0 when there was none.',
  },
  residentMemory: {
    name: 'process_resident_memory_bytes', type: 'gauge', labels: [],
    help: 'Resident memory size of the proxy process.',
  },
  heapUsed: {
    name: 'nodejs_heap_used_bytes', type: 'gauge', labels: [],
    help: 'V8 heap in use.',
  },
  cpu: {
    name: 'process_cpu_seconds_total', type: 'counter', labels: [],
    help: 'User and system CPU time of the proxy process.',
  },
  reloads: {
    name: 'smart_proxy_config_reloads_total', type: 'counter', labels: ['outcome'],
    help: 'Configuration reloads (SIGHUP or the admin API) by outcome: applied, refused.',
  },
  lingered: {
    name: 'smart_proxy_refused_body_drains_total', type: 'counter', labels: ['outcome'],
    help: 'Refused requests whose unread body was read and discarded after the answer (lingering close), by how the drain ended: drained (the whole body), client_closed, time, idle, bytes (a bound was hit and the connection cut), full (too many draining at once: closed at once).',
  },
  discarded: {
    name: 'smart_proxy_refused_body_discarded_bytes_total', type: 'counter', labels: [],
    help: 'Request body bytes of refused requests read and discarded (see smart_proxy_refused_body_drains_total).',
  },
} as const satisfies Record<string, MetricDefinition>;

/** The reference page, generated (npm run docs:reference). */
export function metricsReference(): string {
  const lines = [
    '# Metrics reference',
    '',
    '<!-- Generated by `npm run docs:reference` from src/metrics/catalogue.ts. Do not edit. -->',
    '',
    'Prometheus text format, served as `GET /metrics` by the admin listener. Labels are bounded:',
    '`resource` takes configured resource ids only (at most `metrics.maxResourceLabels`, the rest',
    'as `_other`), `provider` the names under `providers:` and, for providers defined inside a',
    'resource, their kind (`static:inline`); no user, group, instance or path is ever a label. See',
    '[operations/metrics](../operations/metrics.md).',
    '',
    '| Metric | Type | Labels | Meaning |',
    '| --- | --- | --- | --- |',
  ];
  for (const m of Object.values(METRICS) as MetricDefinition[]) {
    const labels = m.labels.length === 0 ? '' : m.labels.map((l) => `\`${l}\``).join(', ');
    lines.push(`| \`${m.name}\` | ${m.type} | ${labels} | ${m.help.replaceAll('|', '\\|')} |`);
  }
  lines.push('', 'Histogram buckets (seconds):', '');
  for (const m of Object.values(METRICS) as MetricDefinition[]) {
    if (m.buckets !== undefined) lines.push(`- \`${m.name}\`: ${m.buckets.join(', ')}`);
  }
  lines.push('');
  return lines.join('\n');
}
