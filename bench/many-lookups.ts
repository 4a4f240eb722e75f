/**
 * The warm path's work keyed by resource, alone and counted: the access steps (identify,
 * authorize, the backend headers) and the metrics' per-request record, for requests spread
 * at random over SPREAD of COUNT configured resources, with the modules of checkout ROOT (so a
 * before and an after run side by side). Under callgrind only the loop is counted: the script
 * turns instrumentation on and off around it itself. Whole-request counts (--instr) vary by
 * tens of thousands of instructions between processes (where the JIT and the young generation
 * settle); this isolates the few hundred that the lookups by resource cost.
 *
 * usage: valgrind --tool=callgrind --instr-atstart=no [--cache-sim=yes --LL=1048576,8,64] \
 *          node bench/many-lookups.ts [ROOT] [COUNT] [SPREAD] [N]
 */
import { execFileSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { yamlFor } from './suites/many.ts';

const root = resolve(process.argv[2] ?? '.');
const count = Number(process.argv[3] ?? 10_000);
const spread = Number(process.argv[4] ?? 1000);
const n = Number(process.argv[5] ?? 200_000);
const from = async (path: string): Promise<Record<string, unknown>> => await import(pathToFileURL(join(root, path)).href) as Record<string, unknown>;

type Fn = (...args: unknown[]) => unknown;
const { parseConfig, effectiveResources } = await from('src/config/load.ts') as { parseConfig: (t: string) => { access: unknown; identities: unknown }; effectiveResources: (c: unknown) => Array<{ id: string; access: unknown; providerName: string }> };
const { createAccessSteps } = await from('src/proxy/identify.ts') as { createAccessSteps: (o: unknown) => { identify: Fn; authorize: Fn; backendHeaders: Fn } };
const { Metrics } = await from('src/metrics/metrics.ts') as { Metrics: new (o: unknown) => { finished: Fn; close: () => void } };

const config = parseConfig(yamlFor(count, 9));
const resources = effectiveResources(config);
const clock = { now: () => Date.now(), setTimeout: () => ({ cancel: () => undefined }) };
const logger = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
const access = createAccessSteps({
  identities: config.identities, settings: config.access, clock, logger, audit: { record: () => undefined },
  policies: new Map(resources.map((r) => [r.id, r.access])),
});
const manager = { onEvent: () => () => undefined, allInstances: () => [] };
const metrics = new Metrics({ manager, clock, maxResourceLabels: 500, resources: resources.map((r) => ({ id: r.id, provider: r.providerName })) });
// What the server hands over: one routed resource object per configured resource.
const routed = new Map(resources.map((r) => [r.id, { runtime: { id: r.id } }]));
const req = { socket: { remoteAddress: '127.0.0.1' }, method: 'GET', rawHeaders: ['Host', 'x'], headers: {} };
const res = { writableFinished: true, statusCode: 200 };

// Deterministic spread (the wrk script's is random with a fixed seed).
let seed = 42;
const next = (): number => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed % spread) + 1;
};
let sink = 0;
function request(): void {
  // A fresh string, as the route's slice of the request target is.
  const id = `r${next()}`;
  const resource = routed.get(id)!;
  const route = { resourceId: id, groups: [], allGroups: true, prefix: `/smart_proxy/${id}/-`, path: '/', query: '' };
  const identity = access.identify(req, route, resource);
  const acting = access.authorize(identity, route, resource) as readonly string[];
  const headers = access.backendHeaders(identity, acting, resource) as { strip: ReadonlySet<string> };
  sink += headers.strip.size;
  metrics.finished(req, res, { resourceId: id, warm: true, startedAt: performance.now() });
}
// Warm-up: the JIT settles before counting.
for (let i = 0; i < 200_000; i++) request();
const callgrind = (flag: string): void => {
  try {
    execFileSync('callgrind_control', [flag, String(process.pid)], { stdio: 'ignore' });
  } catch {
    // Not under callgrind: a plain run.
  }
};
callgrind('-i=on');
for (let i = 0; i < n; i++) request();
callgrind('-i=off');
metrics.close();
process.stdout.write(`${count} resources over ${spread}: ${n} requests counted (${sink > 0 ? 'ok' : '?'})\n`);
