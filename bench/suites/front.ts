/**
 * Front-proxy mode against nginx's plain `proxy_pass`, in rounds: the same upstream, the same
 * token, three contenders back to back in an order that rotates from round to round (A B C,
 * C A B, B C A, then reversed), so that all see the same machine: A nginx's plain proxy_pass,
 * B front-proxy mode with the default decision cache (auth_request + proxy_cache), C with
 * `--cache lua` (a lua_shared_dict, no subrequest). On a shared 2-CPU machine the req/s of one nginx moves by 2× between minutes; the
 * ratio within a pair moves far less, and the CPU each nginx spends per request (from /proc, its
 * one process) less still. Reported: per pair the req/s ratio and both CPU costs, then medians
 * and spread over the pairs; where perf can count them, system calls per request; where
 * valgrind is installed, user-space instructions per request of each nginx under callgrind
 * (a count that does not depend on the load at all).
 *
 * Writes bench/out/front.md and front.json. usage: npm run bench -- --only front [--quick]
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BENCH_DIR, type Context } from '../lib/context.ts';
import { extraCacheDir, frontConf, plainProxyConf, startFrontMode, type FrontMode } from '../lib/front.ts';
import { startNginxProxy } from '../lib/nginx.ts';
import { cpuTimeMs, freePort, waitForHttp, type Spawned } from '../lib/procs.ts';
import { fmt, median } from '../lib/stats.ts';
import { errorCount, wrk } from '../lib/wrk.ts';
import { BENCH_HEADERS, BENCH_PATH, smartProxyYaml } from './throughput.ts';

const run = promisify(execFile);

export interface Side {
  readonly reqPerS: number;
  readonly cpuUsPerReq: number;
  /** System calls per request (perf's raw_syscalls tracepoint), when perf can count them. */
  readonly syscallsPerReq: number | undefined;
  readonly errors: number;
  readonly p99Ms: number;
}

export type Contender = 'plain' | 'front' | 'lua';

/** One round: each contender once, in `order`. */
export interface Pair {
  readonly plain: Side;
  readonly front: Side;
  readonly lua: Side;
  /** Smart Proxy's CPU during the front half, per request, µs (its idle background). */
  readonly smartCpuUsPerReq: number;
  readonly order: readonly Contender[];
}

type Range = { median: number; min: number; max: number };

export interface FrontAbResult {
  readonly pairs: Pair[];
  readonly durationS: number;
  readonly connections: number;
  /** front ÷ proxy_pass, per round. */
  readonly reqPerSRatio: Range;
  readonly cpuRatio: Range;
  /** lua ÷ proxy_pass, per round. */
  readonly luaReqPerSRatio: Range;
  readonly luaCpuRatio: Range;
  readonly plainCpuUsPerReq: number;
  readonly frontCpuUsPerReq: number;
  readonly luaCpuUsPerReq: number;
  readonly syscalls?: { plain: number; front: number; lua: number };
  /** User-space instructions per request under callgrind, when valgrind is installed. */
  readonly instructions?: { plain: number; front: number; lua: number; requests: { plain: number; front: number; lua: number } };
  readonly smartCpuUsPerReq: number;
}

/** Whether `perf stat` can count system calls here (a tracepoint: works without PMU access). */
function perfCanCount(): boolean {
  const r = spawnSync('perf', ['stat', '-x,', '-e', 'raw_syscalls:sys_enter', 'true'], { encoding: 'utf8' });
  return r.status === 0 && /raw_syscalls:sys_enter/.test(r.stderr) && !/not supported|<not counted>/.test(r.stderr);
}

/** Counts the system calls of `pid` until the returned function is called. */
function countSyscalls(pid: number): () => Promise<number | undefined> {
  const child = spawn('perf', ['stat', '-x,', '-e', 'raw_syscalls:sys_enter', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = once(child, 'exit');
  return async () => {
    child.kill('SIGINT');
    await exited;
    const line = err.split('\n').find((l) => l.includes('raw_syscalls:sys_enter'));
    const n = line === undefined ? NaN : Number(line.split(',')[0]);
    return Number.isFinite(n) ? n : undefined;
  };
}

async function measure(url: string, proc: Spawned, ctx: Context, durationS: number, connections: number, perf: boolean, side?: Spawned): Promise<Side & { sideCpuMs: number; requests: number }> {
  const stopCount = perf ? countSyscalls(proc.pid) : undefined;
  const before = cpuTimeMs(proc.pid);
  const sideBefore = side === undefined ? 0 : cpuTimeMs(side.pid);
  const r = await wrk({ url, durationS, connections, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
  const after = cpuTimeMs(proc.pid);
  const sideAfter = side === undefined ? 0 : cpuTimeMs(side.pid);
  const syscalls = await stopCount?.();
  return {
    reqPerS: r.requests / (r.durationUs / 1e6),
    cpuUsPerReq: ((after - before) * 1000) / r.requests,
    syscallsPerReq: syscalls === undefined ? undefined : syscalls / r.requests,
    errors: errorCount(r),
    p99Ms: r.latencyUs['99']! / 1000,
    sideCpuMs: sideAfter - sideBefore,
    requests: r.requests,
  };
}

const range = (values: number[]): Range =>
  ({ median: median(values), min: Math.min(...values), max: Math.max(...values) });

/**
 * Instructions per request of an nginx config under callgrind: started under valgrind,
 * warmed up, counters zeroed, a fixed-length load, counters dumped; the dump's total over
 * the requests wrk counted. Both nginx builds see the same load (10 connections).
 */
export async function instructionsPerRequest(ctx: Context, name: string, conf: string, port: number): Promise<{ perReq: number; requests: number }> {
  const dir = join(ctx.workDir, `callgrind-${name}`);
  mkdirSync(dir, { recursive: true });
  const out = join(dir, 'callgrind.out');
  const file = join(dir, 'nginx.conf');
  writeFileSync(file, conf);
  const child = spawn('taskset', ['-c', ctx.proxyCpu, 'valgrind', '--tool=callgrind', `--callgrind-out-file=${out}`, 'nginx', '-p', dir, '-e', join(dir, 'error.log'), '-c', file], { stdio: 'ignore' });
  const exited = once(child, 'exit');
  try {
    await waitForHttp(`http://127.0.0.1:${port}/`, 60_000);
    const load = (durationS: number): Promise<number> =>
      wrk({ url: `http://127.0.0.1:${port}${BENCH_PATH}`, durationS, connections: 10, cpu: ctx.loadCpu, headers: BENCH_HEADERS }).then((r) => r.requests);
    await load(3);
    await run('callgrind_control', ['-z', String(child.pid)]);
    const requests = await load(ctx.quick ? 4 : 8);
    await run('callgrind_control', ['-d', String(child.pid)]);
    // The dump after zeroing is the newest numbered part (callgrind.out.1).
    const part = readdirSync(dir).filter((f) => /^callgrind\.out\.\d+$/.test(f)).sort().at(-1);
    if (part === undefined) throw new Error(`callgrind wrote no dump in ${dir}`);
    const total = /^(?:summary|totals): (\d+)/m.exec(readFileSync(join(dir, part), 'utf8'))?.[1];
    if (total === undefined) throw new Error(`no totals in ${part}`);
    return { perReq: Number(total) / requests, requests };
  } finally {
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
}

function haveValgrind(): boolean {
  return spawnSync('sh', ['-c', 'command -v valgrind && command -v callgrind_control'], { stdio: 'ignore' }).status === 0;
}

/** Round orders: each contender first, middle and last equally often over six rounds. */
const ORDERS: readonly (readonly Contender[])[] = [
  ['plain', 'front', 'lua'], ['lua', 'plain', 'front'], ['front', 'lua', 'plain'],
  ['lua', 'front', 'plain'], ['plain', 'lua', 'front'], ['front', 'plain', 'lua'],
];

export async function runFrontAb(ctx: Context): Promise<FrontAbResult> {
  const pairsWanted = ctx.quick ? 4 : 8;
  const durationS = ctx.quick ? 4 : 8;
  const connections = 50;
  const perf = perfCanCount();
  const plainPort = await freePort();
  const plain = await startNginxProxy(ctx.workDir, plainPort, ctx.upstreamPort, ctx.proxyCpu);
  const plainUrl = `http://127.0.0.1:${plainPort}${BENCH_PATH}`;
  let front: FrontMode | undefined;
  let lua: FrontMode | undefined;
  try {
    front = await startFrontMode(ctx, smartProxyYaml(ctx.upstreamPort), BENCH_PATH, BENCH_HEADERS);
    lua = await startFrontMode(ctx, smartProxyYaml(ctx.upstreamPort), BENCH_PATH, BENCH_HEADERS, 'lua');
  } catch (err) {
    await Promise.all([plain.stop(), front?.stop()]);
    throw err;
  }
  const fronts = { front, lua };
  const urls = {
    plain: plainUrl,
    front: `http://127.0.0.1:${front.port}${BENCH_PATH}`,
    lua: `http://127.0.0.1:${lua.port}${BENCH_PATH}`,
  };
  try {
    for (const url of Object.values(urls)) await wrk({ url, durationS: 2, connections, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
    const pairs: Pair[] = [];
    for (let i = 0; i < pairsWanted; i++) {
      // Rotating orders: no contender always runs first (or after another warmed the caches).
      const order = ORDERS[i % ORDERS.length]!;
      const sides: Partial<Record<Contender, Awaited<ReturnType<typeof measure>>>> = {};
      for (const c of order) {
        sides[c] = c === 'plain'
          ? await measure(urls.plain, plain, ctx, durationS, connections, perf)
          : await measure(urls[c], fronts[c].nginx, ctx, durationS, connections, perf, fronts[c].smart);
      }
      const [p, f, l] = [sides.plain!, sides.front!, sides.lua!];
      pairs.push({ plain: p, front: f, lua: l, smartCpuUsPerReq: ((f.sideCpuMs + l.sideCpuMs) * 1000) / (f.requests + l.requests), order });
      const errors = p.errors + f.errors + l.errors;
      ctx.log(`front round ${i + 1}/${pairsWanted} (${order.join(' ')}): req/s proxy_pass ${fmt(p.reqPerS)}, front ${fmt(f.reqPerS)} (${(f.reqPerS / p.reqPerS).toFixed(2)}×), lua ${fmt(l.reqPerS)} (${(l.reqPerS / p.reqPerS).toFixed(2)}×); nginx CPU µs/req ${p.cpuUsPerReq.toFixed(1)} / ${f.cpuUsPerReq.toFixed(1)} / ${l.cpuUsPerReq.toFixed(1)}${p.syscallsPerReq === undefined ? '' : `, syscalls/req ${p.syscallsPerReq.toFixed(2)} / ${f.syscallsPerReq?.toFixed(2)} / ${l.syscallsPerReq?.toFixed(2)}`}${errors > 0 ? `  ERRORS ${errors}` : ''}`);
    }
    let instructions: FrontAbResult['instructions'];
    if (haveValgrind()) {
      ctx.log('callgrind: instructions per request of each nginx');
      const cgPlainPort = await freePort();
      const plainIr = await instructionsPerRequest(ctx, 'plain', plainProxyConf(join(ctx.workDir, 'callgrind-plain'), cgPlainPort, ctx.upstreamPort), cgPlainPort);
      const frontIr = await frontInstructions(ctx, 'front', front);
      const luaIr = await frontInstructions(ctx, 'lua', lua);
      instructions = { plain: plainIr.perReq, front: frontIr.perReq, lua: luaIr.perReq, requests: { plain: plainIr.requests, front: frontIr.requests, lua: luaIr.requests } };
    } else {
      ctx.log('callgrind: valgrind is not installed (apt-get install valgrind); instructions per request not measured');
    }
    const sys = pairs.every((p) => p.plain.syscallsPerReq !== undefined && p.front.syscallsPerReq !== undefined && p.lua.syscallsPerReq !== undefined)
      ? { plain: median(pairs.map((p) => p.plain.syscallsPerReq!)), front: median(pairs.map((p) => p.front.syscallsPerReq!)), lua: median(pairs.map((p) => p.lua.syscallsPerReq!)) }
      : undefined;
    const result: FrontAbResult = {
      pairs, durationS, connections,
      reqPerSRatio: range(pairs.map((p) => p.front.reqPerS / p.plain.reqPerS)),
      cpuRatio: range(pairs.map((p) => p.front.cpuUsPerReq / p.plain.cpuUsPerReq)),
      luaReqPerSRatio: range(pairs.map((p) => p.lua.reqPerS / p.plain.reqPerS)),
      luaCpuRatio: range(pairs.map((p) => p.lua.cpuUsPerReq / p.plain.cpuUsPerReq)),
      plainCpuUsPerReq: median(pairs.map((p) => p.plain.cpuUsPerReq)),
      frontCpuUsPerReq: median(pairs.map((p) => p.front.cpuUsPerReq)),
      luaCpuUsPerReq: median(pairs.map((p) => p.lua.cpuUsPerReq)),
      ...(sys === undefined ? {} : { syscalls: sys }),
      ...(instructions === undefined ? {} : { instructions }),
      smartCpuUsPerReq: median(pairs.map((p) => p.smartCpuUsPerReq)),
    };
    const md = renderFront(result, `npm run bench -- --only front${ctx.quick ? ' --quick' : ''}`);
    const outDir = join(BENCH_DIR, 'out');
    writeFileSync(join(outDir, 'front.json'), JSON.stringify(result, null, 2));
    writeFileSync(join(outDir, 'front.md'), md);
    process.stdout.write(`\n${md}\nwritten: bench/out/front.md, front.json\n`);
    return result;
  } finally {
    await Promise.all([plain.stop(), front.stop(), lua.stop()]);
  }
}

/** Callgrind's count for another nginx running a front-proxy mode's config (own ports, own cache). */
export async function frontInstructions(ctx: Context, name: string, mode: FrontMode): Promise<{ perReq: number; requests: number }> {
  const port = await freePort();
  const cache = extraCacheDir(ctx, `callgrind-${name}`);
  try {
    return await instructionsPerRequest(ctx, name, frontConf(join(ctx.workDir, `callgrind-${name}`), mode.snippetFor(port, await freePort(), cache), mode.main), port);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
}

export function renderFront(r: FrontAbResult, command: string): string {
  const x = (n: number): string => `${n.toFixed(2)}×`;
  const goal = (ratio: number): string => (ratio >= 0.9 ? 'met' : '**missed**');
  const out: string[] = [];
  out.push(`### Front-proxy mode vs nginx proxy_pass, in rounds (\`${command}\`; ${r.pairs.length} rounds of ${r.durationS} s per contender, wrk 1 thread, ${r.connections} connections; rotating order)`);
  out.push('');
  out.push('| round | order | proxy_pass req/s | front req/s | ratio | lua req/s | ratio | nginx CPU µs/req, proxy_pass | front | ratio | lua | ratio | Smart Proxy CPU µs/req |');
  out.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  r.pairs.forEach((p, i) => {
    out.push(`| ${i + 1} | ${p.order.join(' ')} | ${fmt(p.plain.reqPerS)} | ${fmt(p.front.reqPerS)} | ${x(p.front.reqPerS / p.plain.reqPerS)} | ${fmt(p.lua.reqPerS)} | ${x(p.lua.reqPerS / p.plain.reqPerS)} | ${fmt(p.plain.cpuUsPerReq, 1)} | ${fmt(p.front.cpuUsPerReq, 1)} | ${x(p.front.cpuUsPerReq / p.plain.cpuUsPerReq)} | ${fmt(p.lua.cpuUsPerReq, 1)} | ${x(p.lua.cpuUsPerReq / p.plain.cpuUsPerReq)} | ${fmt(p.smartCpuUsPerReq, 2)} |`);
  });
  out.push('');
  out.push(`- req/s ÷ proxy_pass's, median (range over rounds): front (proxy_cache) **${x(r.reqPerSRatio.median)}** (${x(r.reqPerSRatio.min)} – ${x(r.reqPerSRatio.max)}), goal ≥ 0.90×: ${goal(r.reqPerSRatio.median)}; front (lua) **${x(r.luaReqPerSRatio.median)}** (${x(r.luaReqPerSRatio.min)} – ${x(r.luaReqPerSRatio.max)}), goal ≥ 0.90×: ${goal(r.luaReqPerSRatio.median)}.`);
  out.push(`- nginx CPU per request: ${fmt(r.plainCpuUsPerReq, 1)} µs with proxy_pass, ${fmt(r.frontCpuUsPerReq, 1)} µs front (proxy_cache), ${fmt(r.luaCpuUsPerReq, 1)} µs front (lua); ratios median **${x(r.cpuRatio.median)}** (${x(r.cpuRatio.min)} – ${x(r.cpuRatio.max)}) and **${x(r.luaCpuRatio.median)}** (${x(r.luaCpuRatio.min)} – ${x(r.luaCpuRatio.max)}). Where nginx's CPU is the limit, they serve ~${x(1 / r.cpuRatio.median)} and ~${x(1 / r.luaCpuRatio.median)} of proxy_pass's req/s.`);
  if (r.syscalls) out.push(`- System calls per request (perf): ${r.syscalls.plain.toFixed(2)} with proxy_pass, ${r.syscalls.front.toFixed(2)} front (proxy_cache), ${r.syscalls.lua.toFixed(2)} front (lua).`);
  if (r.instructions) out.push(`- User-space instructions per request (callgrind, 10 connections): ${fmt(r.instructions.plain)} with proxy_pass, ${fmt(r.instructions.front)} front (proxy_cache, ${x(r.instructions.front / r.instructions.plain)}), ${fmt(r.instructions.lua)} front (lua, ${x(r.instructions.lua / r.instructions.plain)}) (${fmt(r.instructions.requests.plain)}, ${fmt(r.instructions.requests.front)} and ${fmt(r.instructions.requests.lua)} requests).`);
  out.push(`- Smart Proxy behind nginx: ${fmt(r.smartCpuUsPerReq, 2)} µs of CPU per warm request (median; its idle background, spread over the requests: warm requests never reach it).`);
  out.push('');
  return out.join('\n');
}
