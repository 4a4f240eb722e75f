/**
 * `npm run bench -- --instr`: instructions per warm request of Smart Proxy's three access
 * cases (public, bearer token, JWT) and of the bare dispatch() proxy, each process under
 * valgrind's callgrind, serving a fixed number of keep-alive requests from a small client.
 * Instruction counts barely move with the machine's load (unlike CPU time on a shared
 * machine), so the ratio to the dispatch() proxy can be read even on a busy machine.
 *
 * Each process starts with instrumentation off (start-up and imports are not counted, and run
 * faster), is warmed up (the JIT tiers up), then `callgrind_control -i on`, exactly N requests,
 * `callgrind_control -d` (the dump holds what was counted since), and is stopped. Counted: every
 * instruction of the process in user space, all threads (the SQLite worker, V8's compiler and
 * GC helpers), while the N requests were served; not the kernel's share (syscalls count as the
 * instructions that issue them).
 *
 * With `--baseline DIR` (another checkout with node_modules, e.g. `git worktree add`) the same
 * three cases also run from that checkout's own bench/smart-proxy-child.ts and src/, with this
 * checkout's configs: before and after in one run.
 */
import { execFile, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { median } from '../lib/stats.ts';
import { promisify } from 'node:util';
import { Pool } from 'undici';
import type { ReadyMessage } from '../lib/context.ts';
import { BENCH_DIR, smartProxyChild, type Context } from '../lib/context.ts';
import { nextMessage } from '../lib/ipc.ts';
import { freePort, spawnPinned, waitForHttp, type Spawned } from '../lib/procs.ts';
import { yamlFor as manyYaml } from './many.ts';
import { ACCESS_CASES, BENCH_HEADERS, BENCH_PATH, headersFor, SMART_ROWS, smartProxyYaml } from './throughput.ts';

const run = promisify(execFile);

export interface InstrOptions {
  /** Requests counted per process (default 20,000; quick 5,000). */
  readonly requests?: number;
  /**
   * Requests before counting starts (default 30,000, quick or not): V8 still optimizes
   * functions of either proxy until some 25,000 requests (node --trace-opt), and a compile in
   * the counted window would be counted as the warm path.
   */
  readonly warmup?: number;
  /** Keep-alive connections of the client. */
  readonly connections?: number;
  /** Another checkout whose Smart Proxy runs the same cases (before a change). */
  readonly baseline?: string | undefined;
  /**
   * Only these rows (names: dispatch, smart-public, smart, smart-jwt, many-1, many-10000,
   * many-1000, many-10000-over1, each many-* also with -quiet, and -before); default all but many-*.
   */
  readonly cases?: readonly string[] | undefined;
  /**
   * Also print each process's self instructions per request by function (top 40): node runs
   * with --perf-basic-prof, whose map names the JIT-compiled code callgrind only knows by address.
   */
  readonly byFunction?: boolean | undefined;
  /** Processes per row (median over them; default 1). */
  readonly repeat?: number | undefined;
  /** Extra node flags for every process measured (e.g. --single-threaded). */
  readonly nodeFlags?: readonly string[] | undefined;
  /**
   * Also simulate the caches (callgrind --cache-sim=yes) and print first-level and last-level
   * data cache misses per request: work that costs time without costing instructions (a
   * working set spread over many objects), still counted, not timed.
   */
  readonly cacheSim?: boolean | undefined;
  /**
   * The simulated last-level cache, `size,associativity,line` (callgrind --LL). valgrind
   * takes the CPU's last level by default; given this machine's second level (1 MiB, 8-way:
   * `getconf LEVEL2_CACHE_SIZE`), its misses are the lines that come from further away than
   * L2: a working set spread over many objects (per-resource records) shows there first.
   */
  readonly lastLevel?: string | undefined;
}

export interface InstrRow {
  readonly name: string;
  readonly label: string;
  readonly requests: number;
  readonly instructions: number;
  readonly perRequest: number;
  /** perRequest ÷ the dispatch() proxy's. */
  readonly ratio: number;
  /** Wall-clock seconds the counted requests took under valgrind. */
  readonly windowS: number;
  /** Instructions per second of the same process with no request (measured right after). */
  readonly idlePerS: number;
  /** perRequest less the idle rate over the window: the requests' own work. */
  readonly busyPerRequest: number;
  readonly busyRatio: number;
  /** Instructions per request of the median of the WINDOWS parts (a GC or compile in one part left out). */
  readonly medianWindow: number;
  readonly medianWindowRatio: number;
  /** Processes measured for this row (the figures above are medians over them), and their range. */
  readonly processes: number;
  readonly perRequestMin: number;
  readonly perRequestMax: number;
}

/**
 * A process under callgrind, serving at `url`; with `spread`, requests go round-robin to
 * `url` + `/smart_proxy/r1/-/` ... `/smart_proxy/rN/-/` instead (the many-resources cases).
 */
interface Counted { readonly name: string; readonly label: string; readonly url: string; readonly headers: readonly string[]; readonly dir: string; readonly proc: Spawned; readonly spread?: number | undefined }

/** The command line in front of the script: valgrind (instrumentation off until the window opens), node. */
function callgrindArgs(dir: string, nodeFlags: readonly string[]): string[] {
  return ['--tool=callgrind', '--instr-atstart=no', ...(cacheSim ? ['--cache-sim=yes', ...cacheGeometry] : []), `--callgrind-out-file=${join(dir, 'callgrind.out')}`, process.execPath, ...nodeFlags];
}

/**
 * Self instructions per request by function: callgrind_annotate's list, with JIT code (shown
 * as a bare address) named from node's perf map (/tmp/perf-PID.map: start, size, name).
 */
function byFunction(dir: string, pid: number, requests: number, last: boolean, top = 40): string {
  const part = newestDump(dir);
  const text = spawnSync('callgrind_annotate', ['--auto=no', '--threshold=100', part], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout;
  const ranges: Array<{ start: bigint; end: bigint; name: string }> = [];
  try {
    for (const line of readFileSync(`/tmp/perf-${pid}.map`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line);
      if (m !== null) ranges.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[1]}`) + BigInt(`0x${m[2]}`), name: m[3]! });
    }
    // Kept beside the dump (callers of a builtin: callgrind_annotate --tree=caller), not in /tmp.
    if (last) {
      copyFileSync(`/tmp/perf-${pid}.map`, join(dir, 'perf.map'));
      rmSync(`/tmp/perf-${pid}.map`, { force: true });
    }
  } catch {
    // No map: JIT code stays an address.
  }
  ranges.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const nameOf = (addr: bigint): string | undefined => {
    let lo = 0, hi = ranges.length - 1, found: string | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = ranges[mid]!;
      if (r.start <= addr) { if (addr < r.end) found = r.name; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  };
  const sums = new Map<string, number>();
  let total = 0;
  for (const line of text.split('\n')) {
    const m = /^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$/.exec(line);
    if (m === null || m[2]!.startsWith('PROGRAM TOTALS')) continue;
    const ir = Number(m[1]!.replaceAll(',', ''));
    total += ir;
    let fn = m[2]!.replace(/^\?\?\?:/, '').replace(/ \[[^\]]*\]$/, '');
    const addr = /^0x([0-9a-f]+)$/.exec(fn);
    if (addr !== null) fn = nameOf(BigInt(`0x${addr[1]}`)) ?? '(unnamed JIT code)';
    sums.set(fn, (sums.get(fn) ?? 0) + ir);
  }
  const sorted = [...sums].sort((a, b) => b[1] - a[1]);
  writeFileSync(join(dir, `${basename(part)}.by-function.tsv`), sorted.map(([fn, ir]) => `${(ir / requests).toFixed(1)}\t${fn}`).join('\n'));
  const rows = sorted.slice(0, top)
    .map(([fn, ir]) => `${(ir / requests).toFixed(0).padStart(8)}  ${((ir / total) * 100).toFixed(1).padStart(5)} %  ${fn.slice(0, 160)}`);
  return `self instructions / request by function (of ${(total / requests).toFixed(0)}; all in ${join(dir, `${basename(part)}.by-function.tsv`)}):\n${rows.join('\n')}\n`;
}

/** Fails at once, naming the Debian package, when valgrind is missing. */
function requireValgrind(): void {
  if (spawnSync('sh', ['-c', 'command -v valgrind && command -v callgrind_control'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('--instr needs valgrind and callgrind_control: apt-get install valgrind');
  }
}

/**
 * Exactly `count` GET requests over `connections` keep-alive connections; throws on any non-200.
 * With `spread`, request i goes to resource r(i mod spread + 1) (each resource as often).
 */
async function load(url: string, headers: readonly string[], count: number, connections: number, spread?: number): Promise<void> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections, pipelining: 1 });
  const hdrs: Record<string, string> = {};
  for (const h of headers) {
    const i = h.indexOf(':');
    hdrs[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      const path = spread === undefined ? u.pathname + u.search : `/smart_proxy/r${(i % spread) + 1}/-/`;
      // A keep-alive connection the proxy closed just as the next request went out (under
      // valgrind on a busy machine a connection can sit idle past its keep-alive timeout):
      // sent again once, on a fresh connection.
      const send = () => pool.request({ path, method: 'GET', headers: hdrs, headersTimeout: 120_000, bodyTimeout: 120_000 });
      const r = await send().catch((err: unknown) => {
        if ((err as { code?: string }).code !== 'ECONNRESET') throw err;
        return send();
      });
      const body = await r.body.text();
      if (r.statusCode !== 200) throw new Error(`${url}: status ${r.statusCode}: ${body.slice(0, 200)}`);
    }
  };
  try {
    await Promise.all(Array.from({ length: connections }, worker));
  } finally {
    await pool.close();
  }
}

/** Total instructions in the newest numbered dump of `dir` (callgrind.out.N). */
function dumpTotal(dir: string): number {
  const part = newestDump(dir);
  const total = /^(?:summary|totals): (\d+)/m.exec(readFileSync(part, 'utf8'))?.[1];
  if (total === undefined) throw new Error(`no totals in ${part}`);
  return Number(total);
}

function newestDump(dir: string): string {
  const part = readdirSync(dir).filter((f) => /^callgrind\.out\.\d+$/.test(f))
    .sort((a, b) => Number(a.split('.').at(-1)) - Number(b.split('.').at(-1))).at(-1);
  if (part === undefined) throw new Error(`callgrind wrote no dump in ${dir}`);
  return join(dir, part);
}

/** Smart Proxy (this checkout's or `root`'s smartProxyChild()) under callgrind, on `yaml`. */
async function startSmart(ctx: Context, name: string, label: string, yaml: string, headers: readonly string[], root: string, fns: readonly string[], spread?: number, stateExtra = ''): Promise<Counted> {
  // A folder per process: callgrind numbers its dumps per process, and the newest is read.
  const dir = join(ctx.workDir, `instr-${name}-${++processes}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'config.yaml');
  writeFileSync(file, `${yaml}state: { kind: sqlite, path: "${join(dir, 'state.sqlite')}"${stateExtra} }\n`);
  const proc = spawnPinned(name, 'valgrind', [...callgrindArgs(dir, fns), smartProxyChild(root), '--config', file], {
    cpu: ctx.proxyCpu, logFile: join(dir, 'proc.log'), ipc: true, env: { ...process.env, SMART_PROXY_CONFIG_CACHE: 'off' },
  });
  try {
    // Under valgrind start-up is several times slower than natively.
    const ready = await nextMessage<ReadyMessage>(proc.child, 'ready', 300_000);
    return { name, label, url: ready.url + BENCH_PATH, headers, dir, proc, spread };
  } catch (err) {
    await stop(proc);
    throw err;
  }
}

async function startDispatch(ctx: Context, fns: readonly string[]): Promise<Counted> {
  const dir = join(ctx.workDir, `instr-dispatch-${++processes}`);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const proc = spawnPinned('dispatch', 'valgrind', [...callgrindArgs(dir, fns), join(BENCH_DIR, 'bare-proxy.ts'), String(port), `http://127.0.0.1:${ctx.upstreamPort}`, 'dispatch'], {
    cpu: ctx.proxyCpu, logFile: join(dir, 'proc.log'),
  });
  const url = `http://127.0.0.1:${port}${BENCH_PATH}`;
  try {
    await waitForHttp(url, 120_000);
  } catch (err) {
    await stop(proc);
    throw err;
  }
  return { name: 'dispatch', label: 'bare node:http + undici dispatch()', url, headers: BENCH_HEADERS, dir, proc };
}

/** Processes started so far (each gets its own folder). */
let processes = 0;

/** InstrOptions.cacheSim of the run under way. */
let cacheSim = false;

/** callgrind's cache geometry flags for InstrOptions.lastLevel (none: what valgrind reads from the CPU). */
let cacheGeometry: string[] = [];

/** Every event total of the newest dump (with --cache-sim: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw). */
function dumpEvents(dir: string): Map<string, number> {
  const text = readFileSync(newestDump(dir), 'utf8');
  const names = /^events: (.*)$/m.exec(text)?.[1]?.trim().split(/\s+/) ?? [];
  const values = /^(?:summary|totals): (.*)$/m.exec(text)?.[1]?.trim().split(/\s+/).map(Number) ?? [];
  return new Map(names.map((n, i) => [n, values[i] ?? 0]));
}

/** SIGTERM, then SIGKILL if the process (slow under valgrind) has not exited in 60 s. */
async function stop(p: Spawned): Promise<void> {
  const child = p.child;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  await exited;
  clearTimeout(timer);
}

/** What one process counted. */
interface Counts {
  /** Instructions while the counted requests were served. */
  readonly instructions: number;
  /** How long that took (wall clock, under valgrind). */
  readonly windowS: number;
  /** Instructions per second with no request at all, measured right after (timers, sampler, SQLite). */
  readonly idlePerS: number;
  /** Instructions per request of the median window. */
  readonly medianWindowPerRequest: number;
}

/** Parts the counted requests are split into. */
const WINDOWS = 5;

/** Seconds of idleness measured after the requests. */
const IDLE_S = 5;

/**
 * Warm-up, then exactly `requests` counted requests, then IDLE_S seconds with none (what the
 * process does per second of wall clock whatever it serves: under valgrind a request takes
 * some 50 times longer, so that background weighs some 50 times more per request than
 * natively). The process is stopped on every path.
 */
async function count(ctx: Context, c: Counted, o: { requests: number; warmup: number; connections: number; byFunction: boolean }): Promise<Counts> {
  try {
    ctx.log(`instr ${c.name}: warm-up (${o.warmup} requests, not counted)`);
    await load(c.url, c.headers, o.warmup, o.connections, c.spread);
    await run('callgrind_control', ['-i', 'on', String(c.proc.pid)]);
    ctx.log(`instr ${c.name}: ${o.requests} counted requests`);
    const t0 = performance.now();
    // In WINDOWS parts, each dumped: a major GC or a late compile lands in one of them, and the
    // median part shows what a request costs without it (the total still counts it).
    const perWindow: number[] = [];
    let instructions = 0;
    const events = new Map<string, number>();
    for (let w = 0; w < WINDOWS; w++) {
      const n = Math.floor(o.requests / WINDOWS) + (w < o.requests % WINDOWS ? 1 : 0);
      await load(c.url, c.headers, n, o.connections, c.spread);
      await run('callgrind_control', ['-d', String(c.proc.pid)]);
      const part = dumpTotal(c.dir);
      instructions += part;
      if (cacheSim) for (const [k, v] of dumpEvents(c.dir)) events.set(k, (events.get(k) ?? 0) + v);
      perWindow.push(part / n);
      if (o.byFunction) ctx.log(`instr ${c.name}: ${byFunction(c.dir, c.proc.pid, n, w === WINDOWS - 1)}`);
    }
    const windowS = (performance.now() - t0) / 1000;
    if (cacheSim) {
      const per = (k: string): string => ((events.get(k) ?? 0) / o.requests).toFixed(1);
      ctx.log(`instr ${c.name}: per request: data reads ${per('Dr')}, writes ${per('Dw')}; D1 misses ${per('D1mr')} read + ${per('D1mw')} write; last-level misses ${per('DLmr')} read + ${per('DLmw')} write; I1 misses ${per('I1mr')}`);
    }
    await run('callgrind_control', ['-z', String(c.proc.pid)]);
    const i0 = performance.now();
    // A benchmark, not a test: the idle period is the measurement.
    await new Promise((resolve) => setTimeout(resolve, IDLE_S * 1000));
    await run('callgrind_control', ['-d', String(c.proc.pid)]);
    const idlePerS = dumpTotal(c.dir) / ((performance.now() - i0) / 1000);
    return { instructions, windowS, idlePerS, medianWindowPerRequest: median(perWindow) };
  } finally {
    await stop(c.proc);
  }
}

export async function runInstr(ctx: Context, options: InstrOptions = {}): Promise<InstrRow[]> {
  requireValgrind();
  cacheSim = options.cacheSim === true || options.lastLevel !== undefined;
  cacheGeometry = options.lastLevel === undefined ? [] : [`--LL=${options.lastLevel}`];
  const o = {
    requests: options.requests ?? (ctx.quick ? 5_000 : 20_000),
    warmup: options.warmup ?? 30_000,
    connections: options.connections ?? 10,
    byFunction: options.byFunction === true,
  };
  // --perf-basic-prof: node writes the map that names its JIT code (byFunction).
  // --no-memory-reducer: V8's memory reducer starts major GCs by the wall clock; under
  // valgrind, which stretches every request some 50 times, they land in the counted windows
  // at random (11k-139k instructions per request in one run, 1.6k-4.9k without it). Every
  // process measured gets it, so the ratios stay like for like.
  const fns = ['--no-memory-reducer', ...(o.byFunction ? ['--perf-basic-prof'] : []), ...(options.nodeFlags ?? [])];
  // One process at a time: under valgrind each is slow, and alone on the proxy CPU.
  // The dispatch() proxy always runs: every ratio is to it.
  const starts: Array<{ name: string; start: () => Promise<Counted> }> = [{ name: 'dispatch', start: () => startDispatch(ctx, fns) }];
  for (const access of ACCESS_CASES) {
    const yaml = smartProxyYaml(ctx.upstreamPort, access);
    const headers = await headersFor(access);
    const { name, label } = SMART_ROWS[access];
    starts.push({ name, start: () => startSmart(ctx, name, label, yaml, headers, join(BENCH_DIR, '..'), fns) });
    if (options.baseline !== undefined) {
      const root = options.baseline;
      starts.push({ name: `${name}-before`, start: () => startSmart(ctx, `${name}-before`, `${label}, before (${root})`, yaml, headers, root, fns) });
    }
  }
  // The many-resources pair (suites/many.ts's configs: 1 resource, and 10,000 each with its own
  // static provider), only when asked for: requests round-robin over 1, resp. 1,000 resources.
  // Each also as -quiet: the same with the per-instance background pushed out of the window (no
  // health checks, a state flush once an hour), so what is left is the requests' own work.
  // many-1000 (the spread alone) and many-10000-over1 (the configured count alone) split the
  // difference as the many suite does.
  const pairs = [[1, 1], [10_000, 1000], [1000, 1000], [10_000, 1]] as const;
  for (const [resources, spread, quiet] of pairs.flatMap(([r, s]) => [[r, s, false], [r, s, true]] as const)) {
    const name = `many-${resources}${resources > 1 && spread === 1 ? '-over1' : ''}${quiet ? '-quiet' : ''}`;
    const label = `Smart Proxy, ${resources.toLocaleString('en')} resource(s), requests over ${spread.toLocaleString('en')}${quiet ? ', no health checks, flush hourly' : ''}`;
    let yaml = manyYaml(resources, ctx.upstreamPort);
    if (quiet) yaml = yaml.replace('resourceDefaults: { access: { public: true } }', 'resourceDefaults: { access: { public: true }, healthCheckIntervalMs: 0 }');
    const stateExtra = quiet ? ', flushIntervalMs: 3600000' : '';
    starts.push({ name, start: () => startSmart(ctx, name, label, yaml, [], join(BENCH_DIR, '..'), fns, spread, stateExtra) });
    if (options.baseline !== undefined) {
      const root = options.baseline;
      starts.push({ name: `${name}-before`, start: () => startSmart(ctx, `${name}-before`, `${label}, before (${root})`, yaml, [], root, fns, spread, stateExtra) });
    }
  }
  // The dispatch() proxy is the reference of every row, but of the many-resources pair alone
  // many-1 is (it comes first then).
  const manyOnly = options.cases !== undefined && options.cases.every((c) => c.startsWith('many-'));
  const wanted = options.cases === undefined ? undefined : new Set([...(manyOnly ? [] : ['dispatch']), ...options.cases]);
  const measured: Array<Omit<InstrRow, 'ratio' | 'busyRatio' | 'medianWindowRatio' | 'processes' | 'perRequestMin' | 'perRequestMax'>> = [];
  const chosen = starts.filter((s) => wanted === undefined ? !s.name.startsWith('many-') : wanted.has(s.name));
  // Repeats interleaved (A B C, A B C): one process's JIT may settle on other code than the
  // next one's, so a row is the median over processes.
  const runs: typeof chosen = [];
  for (let r = 0; r < (options.repeat ?? 1); r++) runs.push(...chosen);
  for (const { start } of runs) {
    const c = await start();
    const n = await count(ctx, c, o);
    const perRequest = n.instructions / o.requests;
    const busyPerRequest = (n.instructions - n.idlePerS * n.windowS) / o.requests;
    measured.push({ name: c.name, label: c.label, requests: o.requests, instructions: n.instructions, perRequest, windowS: n.windowS, idlePerS: n.idlePerS, busyPerRequest, medianWindow: n.medianWindowPerRequest });
    ctx.log(`instr ${c.name}: ${Math.round(perRequest).toLocaleString('en')} instructions / request (median window ${Math.round(n.medianWindowPerRequest).toLocaleString('en')}; ${Math.round(busyPerRequest).toLocaleString('en')} less the idle rate, ${Math.round(n.idlePerS).toLocaleString('en')} / s, over ${n.windowS.toFixed(1)} s)`);
  }
  const rows: Array<(typeof measured)[number] & { processes: number; perRequestMin: number; perRequestMax: number }> = [];
  for (const { name } of chosen) {
    const ms = measured.filter((m) => m.name === name);
    const mid = (f: (m: (typeof ms)[number]) => number): number => median(ms.map(f));
    rows.push({
      ...ms[0]!, instructions: mid((m) => m.instructions), perRequest: mid((m) => m.perRequest), windowS: mid((m) => m.windowS),
      idlePerS: mid((m) => m.idlePerS), busyPerRequest: mid((m) => m.busyPerRequest), medianWindow: mid((m) => m.medianWindow),
      processes: ms.length, perRequestMin: Math.min(...ms.map((m) => m.perRequest)), perRequestMax: Math.max(...ms.map((m) => m.perRequest)),
    });
  }
  const ref = rows[0]!;
  return rows.map((m) => ({ ...m, ratio: m.perRequest / ref.perRequest, busyRatio: m.busyPerRequest / ref.busyPerRequest, medianWindowRatio: m.medianWindow / ref.medianWindow }));
}

export function renderInstr(rows: readonly InstrRow[], command: string): string {
  // Every ratio is to the first row: the dispatch() proxy, or many-1 in a many-resources run.
  const ref = rows[0]?.name === 'dispatch' ? 'dispatch()' : 'first row';
  const out = [
    `Run ${new Date().toISOString()} · \`${command}\` · ${rows[0]?.requests.toLocaleString('en')} keep-alive requests per process, counted by callgrind after a warm-up`,
    '',
    `| proxy | instructions / request (range over processes) | ÷ ${ref} | median of 5 parts | ÷ ${ref} | idle instructions / s | less idle, / request | ÷ ${ref} | target ≤ 1.10× |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  const fmt = (n: number): string => Math.round(n).toLocaleString('en');
  for (const r of rows) {
    const verdict = r.name === 'dispatch' ? '–' : r.ratio <= 1.10 ? 'met' : '**missed**';
    out.push(`| ${r.label} | ${fmt(r.perRequest)}${r.processes > 1 ? ` (${fmt(r.perRequestMin)}-${fmt(r.perRequestMax)}, ${r.processes})` : ''} | ${r.ratio.toFixed(2)}× | ${fmt(r.medianWindow)} | ${r.medianWindowRatio.toFixed(2)}× | ${fmt(r.idlePerS)} | ${fmt(r.busyPerRequest)} | ${r.busyRatio.toFixed(2)}× | ${verdict} |`);
  }
  return `${out.join('\n')}\n`;
}
