/**
 * Many resources: 10,000 configured resources (each with its own inline static provider, all
 * pointing at the shared upstream). Start-up time and memory against a one-resource config,
 * and the warm path with requests spread at random over 1,000 warm resources against all
 * requests on one resource (same wrk script, so wrk's own cost is alike).
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startSmartProxy, type Context, type SmartChild } from '../lib/context.ts';
import { cpuTimeMs, rssBytes } from '../lib/procs.ts';
import { median, spreadPct } from '../lib/stats.ts';
import { errorCount, wrk } from '../lib/wrk.ts';

export interface ManyCase {
  readonly resources: number;
  readonly spreadOver: number;
  /**
   * Process start → listening (includes Node's own start-up and module loading), ms: the
   * median of STARTS starts, with the compile cache filled by an earlier start (as every start
   * of an installed proxy but its first).
   */
  readonly startupMs: number;
  /** Each of those starts, in order. */
  readonly startupSamplesMs: number[];
  /** CPU time (all threads) at listening, ms (median of the same starts). */
  readonly startupCpuMs: number;
  /** Reading and validating the YAML config, ms (median). */
  readonly configMs: number;
  /** startApp (building providers, runtimes, the routing table, listening), ms (median). */
  readonly appMs: number;
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
  /** CPU per request of each round, in round order (rounds of the two cases alternate). */
  readonly roundCpuUsPerReq: number[];
}

export function yamlFor(count: number, upstreamPort: number): string {
  const lines = ['listen: { host: 127.0.0.1, port: 0 }', 'log: { level: warn }', 'resourceDefaults: { access: { public: true } }', 'resources:'];
  for (let i = 1; i <= count; i++) {
    // Block style, as YAML generators (yaml.stringify) and people write it.
    lines.push(`  r${i}:`, '    provider:', '      kind: static', `      endpoint: "http://127.0.0.1:${upstreamPort}"`);
  }
  return `${lines.join('\n')}\n`;
}

async function warm(child: SmartChild, count: number): Promise<void> {
  let next = 1;
  const worker = async (): Promise<void> => {
    while (next <= count) {
      const i = next++;
      const res = await fetch(`${child.url}/smart_proxy/r${i}/-/`);
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

export async function runMany(ctx: Context): Promise<ManyCase[]> {
  const rounds = ctx.quick ? 2 : 4;
  const durationS = ctx.quick ? 5 : 10;
  ctx.log('many resources: starting with 1 and with 10,000 configured resources');
  // A compile cache of this suite's own, empty at first: the first start compiles everything
  // (an installed proxy's very first start), the others find it filled.
  const compileCache = join(ctx.workDir, 'many-compile-cache');
  rmSync(compileCache, { recursive: true, force: true });
  const env = { SMART_PROXY_COMPILE_CACHE: compileCache };
  const cold = await startSmartProxy(ctx, 'many-10000', yamlFor(10_000, ctx.upstreamPort), [], [], env);
  await cold.stop();
  const oneRun = await startMany(ctx, 'many-1', yamlFor(1, ctx.upstreamPort), env);
  const one = oneRun.child;
  const manyRun = await startMany(ctx, 'many-10000', yamlFor(10_000, ctx.upstreamPort), env).catch(async (err: unknown) => {
    await one.stop();
    throw err;
  });
  const many = manyRun.child;
  const startups = (r: { samples: SmartChild['ready'][] }): string => r.samples.map((s) => `${s.startupMs.toFixed(0)} (CPU ${(s.startupCpuMs ?? 0).toFixed(0)})`).join(', ');
  ctx.log(`many resources: first start (empty compile cache) of 10,000: ${cold.ready.startupMs.toFixed(0)} ms (config ${cold.ready.parseMs.toFixed(0)} ms); then 10,000: ${startups(manyRun)} ms; 1: ${startups(oneRun)} ms`);
  try {
    const rssOne = rssBytes(one.pid);
    const rssMany = rssBytes(many.pid);
    await warm(one, 1);
    await warm(many, 1000);
    const cases = [
      { child: one, resources: 1, spreadOver: 1, rssStart: rssOne, rounds: [] as { cpu: number; rps: number; p50: number; p99: number; errors: number }[] },
      { child: many, resources: 10_000, spreadOver: 1000, rssStart: rssMany, rounds: [] as { cpu: number; rps: number; p50: number; p99: number; errors: number }[] },
    ];
    for (const c of cases) await wrk({ url: c.child.url, durationS: 2, connections: 50, cpu: ctx.loadCpu, paths: { prefix: '/smart_proxy/r', count: c.spreadOver, suffix: '/-/' } });
    for (let round = 0; round < rounds; round++) {
      for (const c of round % 2 === 0 ? cases : [...cases].reverse()) {
        const before = cpuTimeMs(c.child.pid);
        const r = await wrk({ url: c.child.url, durationS, connections: 50, cpu: ctx.loadCpu, paths: { prefix: '/smart_proxy/r', count: c.spreadOver, suffix: '/-/' } });
        const cpu = ((cpuTimeMs(c.child.pid) - before) * 1000) / r.requests;
        const rps = r.requests / (r.durationUs / 1e6);
        c.rounds.push({ cpu, rps, p50: r.latencyUs['50']! / 1000, p99: r.latencyUs['99']! / 1000, errors: errorCount(r) });
        ctx.log(`round ${round + 1}/${rounds} ${String(c.resources).padStart(5)} resources over ${String(c.spreadOver).padStart(4)}: ${rps.toFixed(0)} req/s, ${cpu.toFixed(1)} µs CPU/req`);
      }
    }
    return cases.map((c) => {
      const { samples } = c.child === many ? manyRun : oneRun;
      return {
        resources: c.resources,
        spreadOver: c.spreadOver,
        startupMs: median(samples.map((r) => r.startupMs)),
        startupSamplesMs: samples.map((r) => Math.round(r.startupMs)),
        startupCpuMs: median(samples.map((r) => r.startupCpuMs ?? 0)),
        configMs: median(samples.map((r) => r.parseMs)),
        appMs: median(samples.map((r) => r.appMs)),
        coldStartupMs: c.child === many ? cold.ready.startupMs : undefined,
        coldConfigMs: c.child === many ? cold.ready.parseMs : undefined,
        rssAfterStartBytes: c.rssStart,
        rssWarmBytes: rssBytes(c.child.pid),
        reqPerS: median(c.rounds.map((r) => r.rps)),
        cpuUsPerReq: median(c.rounds.map((r) => r.cpu)),
        cpuSpreadPct: spreadPct(c.rounds.map((r) => r.cpu)),
        p50Ms: median(c.rounds.map((r) => r.p50)),
        p99Ms: median(c.rounds.map((r) => r.p99)),
        errors: c.rounds.reduce((n, r) => n + r.errors, 0),
        roundCpuUsPerReq: c.rounds.map((r) => Math.round(r.cpu * 10) / 10),
      };
    });
  } finally {
    await Promise.all([one.stop(), many.stop()]);
  }
}
