/**
 * Many resources: 10,000 configured resources (each with its own inline static provider, all
 * pointing at the shared upstream). Start-up time and memory against a one-resource config,
 * and the warm path with requests spread at random over 1,000 warm resources against all
 * requests on one resource (same wrk script, so wrk's own cost is alike). The difference is
 * split by two more configs (1,000 resources with the same spread; 10,000 with every request
 * on one), and set against nginx's own on one and on 10,000 configured sites.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startSmartProxy, type Context, type SmartChild } from '../lib/context.ts';
import { startNginxMany } from '../lib/nginx.ts';
import { cpuTimeMs, freePort, rssBytes } from '../lib/procs.ts';
import { median, spreadPct } from '../lib/stats.ts';
import { errorCount, wrk } from '../lib/wrk.ts';

/** One process measured by the suite: Smart Proxy on a config, or nginx on its reference config. */
export interface ManyCase {
  /** many-1, many-10000, many-1000, many-10000-over1, nginx-1, nginx-10000, nginx-10000-own-upstreams. */
  readonly name: string;
  readonly proxy: 'smart' | 'nginx';
  readonly label: string;
  readonly resources: number;
  readonly spreadOver: number;
  /**
   * Process start → listening (includes Node's own start-up and module loading), ms: the
   * median of STARTS starts, with the compile cache filled by an earlier start (as every start
   * of an installed proxy but its first). Measured for many-1 and many-10000 only.
   */
  readonly startupMs?: number | undefined;
  /** Each of those starts, in order. */
  readonly startupSamplesMs?: number[] | undefined;
  /** CPU time (all threads) at listening, ms (median of the same starts). */
  readonly startupCpuMs?: number | undefined;
  /** Reading and validating the YAML config, ms (median). */
  readonly configMs?: number | undefined;
  /** startApp (building providers, runtimes, the routing table, listening), ms (median). */
  readonly appMs?: number | undefined;
  /** The very first start, with an empty compile cache (everything compiled), and its config ms. */
  readonly coldStartupMs?: number | undefined;
  readonly coldConfigMs?: number | undefined;
  readonly rssAfterStartBytes: number;
  readonly rssWarmBytes: number;
  readonly reqPerS: number;
  readonly cpuUsPerReq: number;
  readonly cpuSpreadPct: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly errors: number;
  /** CPU per request of each round, in round order (every case runs once per round, in rotating order). */
  readonly roundCpuUsPerReq: number[];
  /**
   * CPU per request ÷ that of the same proxy's one-site case in the same round, median over
   * the rounds (1 for the one-site cases themselves).
   */
  readonly pairedVsOne: number;
}

export function yamlFor(count: number, upstreamPort: number): string {
  const lines = ['listen: { host: 127.0.0.1, port: 0 }', 'log: { level: warn }', 'resourceDefaults: { access: { public: true } }', 'resources:'];
  for (let i = 1; i <= count; i++) {
    // Block style, as YAML generators (yaml.stringify) and people write it.
    lines.push(`  r${i}:`, '    provider:', '      kind: static', `      endpoint: "http://127.0.0.1:${upstreamPort}"`);
  }
  return `${lines.join('\n')}\n`;
}

/** One request to each of the first `count` resources (their instances start and go warm). */
export async function warm(url: string, count: number): Promise<void> {
  let next = 1;
  const worker = async (): Promise<void> => {
    while (next <= count) {
      const i = next++;
      const res = await fetch(`${url}/smart_proxy/r${i}/-/`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`warming r${i}: ${res.status}`);
    }
  };
  await Promise.all(Array.from({ length: 50 }, worker));
}

/** Starts per case for the start-up medians (the last one stays up for the warm path). */
const STARTS = 5;

/** STARTS starts on `yaml`, one after the other; all but the last are stopped. */
async function startMany(ctx: Context, name: string, yaml: string, env: NodeJS.ProcessEnv): Promise<{ child: SmartChild; samples: SmartChild['ready'][] }> {
  const samples: SmartChild['ready'][] = [];
  for (let i = 1; ; i++) {
    const child = await startSmartProxy(ctx, name, yaml, [], [], env);
    samples.push(child.ready);
    if (i === STARTS) return { child, samples };
    await child.stop();
  }
}

/** A process of the warm-path rounds. */
interface Running {
  readonly name: string;
  readonly proxy: 'smart' | 'nginx';
  readonly label: string;
  readonly resources: number;
  readonly spreadOver: number;
  readonly url: string;
  readonly pid: number;
  readonly samples?: SmartChild['ready'][] | undefined;
  readonly cold?: SmartChild['ready'] | undefined;
  readonly rssStart: number;
  readonly rounds: Array<{ cpu: number; rps: number; p50: number; p99: number; errors: number }>;
}

/**
 * Smart Proxy on 1 and on 10,000 resources (start-up and the warm path), and what splits the
 * difference: 1,000 configured with the same spread over 1,000 (the spread alone), 10,000
 * configured with every request on one (the configured count alone). And the reference: nginx
 * on one `location` and on 10,000 (one per site), driven by the same wrk script.
 */
export async function runMany(ctx: Context): Promise<ManyCase[]> {
  const rounds = ctx.quick ? 2 : 4;
  const durationS = ctx.quick ? 5 : 10;
  ctx.log('many resources: starting with 1 and with 10,000 configured resources');
  // A compile cache of this suite's own, empty at first: the first start compiles everything
  // (an installed proxy's very first start), the others find it filled.
  const compileCache = join(ctx.workDir, 'many-compile-cache');
  rmSync(compileCache, { recursive: true, force: true });
  const env = { SMART_PROXY_COMPILE_CACHE: compileCache };
  const stops: Array<() => Promise<void>> = [];
  try {
    const cold = await startSmartProxy(ctx, 'many-10000', yamlFor(10_000, ctx.upstreamPort), [], [], env);
    await cold.stop();
    const oneRun = await startMany(ctx, 'many-1', yamlFor(1, ctx.upstreamPort), env);
    stops.push(() => oneRun.child.stop());
    const manyRun = await startMany(ctx, 'many-10000', yamlFor(10_000, ctx.upstreamPort), env);
    stops.push(() => manyRun.child.stop());
    const startups = (r: { samples: SmartChild['ready'][] }): string => r.samples.map((s) => `${s.startupMs.toFixed(0)} (CPU ${(s.startupCpuMs ?? 0).toFixed(0)})`).join(', ');
    ctx.log(`many resources: first start (empty compile cache) of 10,000: ${cold.ready.startupMs.toFixed(0)} ms (config ${cold.ready.parseMs.toFixed(0)} ms); then 10,000: ${startups(manyRun)} ms; 1: ${startups(oneRun)} ms`);
    const spreadOnly = await startSmartProxy(ctx, 'many-1000', yamlFor(1_000, ctx.upstreamPort), [], [], env);
    stops.push(() => spreadOnly.stop());
    const configuredOnly = await startSmartProxy(ctx, 'many-10000-over1', yamlFor(10_000, ctx.upstreamPort), [], [], env);
    stops.push(() => configuredOnly.stop());
    const nginx: Array<{ name: string; label: string; resources: number; spreadOver: number; perSite: boolean }> = [
      { name: 'nginx-1', label: 'nginx, 1 location', resources: 1, spreadOver: 1, perSite: false },
      { name: 'nginx-10000', label: 'nginx, 10,000 locations, one upstream block', resources: 10_000, spreadOver: 1000, perSite: false },
      { name: 'nginx-10000-own-upstreams', label: 'nginx, 10,000 locations, each its own upstream block', resources: 10_000, spreadOver: 1000, perSite: true },
    ];
    const cases: Running[] = [
      { name: 'many-1', proxy: 'smart', label: 'Smart Proxy, 1 resource', resources: 1, spreadOver: 1, url: oneRun.child.url, pid: oneRun.child.pid, samples: oneRun.samples, rssStart: rssBytes(oneRun.child.pid), rounds: [] },
      { name: 'many-10000', proxy: 'smart', label: 'Smart Proxy, 10,000 resources', resources: 10_000, spreadOver: 1000, url: manyRun.child.url, pid: manyRun.child.pid, samples: manyRun.samples, cold: cold.ready, rssStart: rssBytes(manyRun.child.pid), rounds: [] },
      { name: 'many-1000', proxy: 'smart', label: 'Smart Proxy, 1,000 resources (the spread alone)', resources: 1_000, spreadOver: 1000, url: spreadOnly.url, pid: spreadOnly.pid, rssStart: rssBytes(spreadOnly.pid), rounds: [] },
      { name: 'many-10000-over1', proxy: 'smart', label: 'Smart Proxy, 10,000 resources, every request on one (the configured count alone)', resources: 10_000, spreadOver: 1, url: configuredOnly.url, pid: configuredOnly.pid, rssStart: rssBytes(configuredOnly.pid), rounds: [] },
    ];
    for (const n of nginx) {
      const port = await freePort();
      const proc = await startNginxMany(ctx.workDir, n.name, port, ctx.upstreamPort, ctx.proxyCpu, n.resources, n.perSite);
      stops.push(() => proc.stop());
      cases.push({ name: n.name, proxy: 'nginx', label: n.label, resources: n.resources, spreadOver: n.spreadOver, url: `http://127.0.0.1:${port}`, pid: proc.pid, rssStart: rssBytes(proc.pid), rounds: [] });
    }
    const pathsOf = (c: Running): { prefix: string; count: number; suffix: string } => ({ prefix: '/smart_proxy/r', count: c.spreadOver, suffix: '/-/' });
    for (const c of cases) await warm(c.url, c.spreadOver);
    for (const c of cases) await wrk({ url: c.url, durationS: 2, connections: 50, cpu: ctx.loadCpu, paths: pathsOf(c) });
    for (let round = 0; round < rounds; round++) {
      // Every case once per round, the order rotated, so that no case always follows the same one.
      const k = round % cases.length;
      for (const c of [...cases.slice(k), ...cases.slice(0, k)]) {
        const before = cpuTimeMs(c.pid);
        const r = await wrk({ url: c.url, durationS, connections: 50, cpu: ctx.loadCpu, paths: pathsOf(c) });
        const cpu = ((cpuTimeMs(c.pid) - before) * 1000) / r.requests;
        const rps = r.requests / (r.durationUs / 1e6);
        c.rounds[round] = { cpu, rps, p50: r.latencyUs['50']! / 1000, p99: r.latencyUs['99']! / 1000, errors: errorCount(r) };
        ctx.log(`round ${round + 1}/${rounds} ${c.name.padEnd(26)} ${String(c.resources).padStart(5)} configured, over ${String(c.spreadOver).padStart(4)}: ${rps.toFixed(0)} req/s, ${cpu.toFixed(1)} µs CPU/req`);
      }
    }
    return cases.map((c) => {
      const one = cases.find((o) => o.proxy === c.proxy && o.resources === 1)!;
      const s = c.samples;
      return {
        name: c.name,
        proxy: c.proxy,
        label: c.label,
        resources: c.resources,
        spreadOver: c.spreadOver,
        startupMs: s === undefined ? undefined : median(s.map((r) => r.startupMs)),
        startupSamplesMs: s?.map((r) => Math.round(r.startupMs)),
        startupCpuMs: s === undefined ? undefined : median(s.map((r) => r.startupCpuMs ?? 0)),
        configMs: s === undefined ? undefined : median(s.map((r) => r.parseMs)),
        appMs: s === undefined ? undefined : median(s.map((r) => r.appMs)),
        coldStartupMs: c.cold?.startupMs,
        coldConfigMs: c.cold?.parseMs,
        rssAfterStartBytes: c.rssStart,
        rssWarmBytes: rssBytes(c.pid),
        reqPerS: median(c.rounds.map((r) => r.rps)),
        cpuUsPerReq: median(c.rounds.map((r) => r.cpu)),
        cpuSpreadPct: spreadPct(c.rounds.map((r) => r.cpu)),
        p50Ms: median(c.rounds.map((r) => r.p50)),
        p99Ms: median(c.rounds.map((r) => r.p99)),
        errors: c.rounds.reduce((n, r) => n + r.errors, 0),
        roundCpuUsPerReq: c.rounds.map((r) => Math.round(r.cpu * 10) / 10),
        // Each round's ratio to the same round's one-site case: most of a shared machine's drift cancels.
        pairedVsOne: median(c.rounds.map((r, i) => r.cpu / one.rounds[i]!.cpu)),
      };
    });
  } finally {
    for (const stop of stops.reverse()) await stop();
  }
}
