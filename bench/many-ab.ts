/**
 * The many suite's four Smart Proxy cases (1 resource; 10,000 configured with requests spread
 * over 1,000; 1,000 over 1,000; 10,000 all on one), for two (or more) checkouts side by side:
 * every process of every checkout is started, warmed as the suite warms it (one request to
 * each resource of the spread, then 2 s of wrk), and then driven once per round by the same
 * wrk script, the order of all processes rotated each round. Reported per case and checkout:
 * CPU per request (median over rounds, utime + stime from /proc), the median of each round's
 * ratio to the first checkout's same case, and memory at the end: RSS as the suite reads it
 * (whatever garbage V8 has not collected yet included), then RSS and the JS heap in use after
 * a full GC (the child runs with --expose-gc for that reading only).
 *
 * usage: node bench/many-ab.ts [--rounds 4] [--seconds 8] [--cases many-1,many-10000,...] [--smaps] LABEL=DIR …
 *   e.g. node bench/many-ab.ts before=/work/main after=.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startSmartProxy, type Context, type SmartChild } from './lib/context.ts';
import { ask, type Message } from './lib/ipc.ts';
import { startNginxUpstream } from './lib/nginx.ts';
import { cpuTimeMs, freePort, rssBytes } from './lib/procs.ts';
import { median, spreadPct } from './lib/stats.ts';
import { errorCount, wrk } from './lib/wrk.ts';
import { warm, yamlFor } from './suites/many.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '4' },
    seconds: { type: 'string', default: '8' },
    cases: { type: 'string', default: 'many-1,many-10000,many-1000,many-10000-over1' },
    // Also where each process's RSS is, by kind of mapping (/proc/PID/smaps).
    smaps: { type: 'boolean', default: false },
  },
});
if (positionals.length === 0) throw new Error('usage: node bench/many-ab.ts [--rounds N] [--seconds S] [--cases …] LABEL=DIR …');
const variants = positionals.map((spec) => {
  const [label, dir] = spec.split(/=(.*)/s) as [string, string | undefined];
  if (dir === undefined) throw new Error(`"${spec}": expected LABEL=DIR`);
  return { label, dir: resolve(dir) };
});
const CASES: Record<string, { resources: number; spreadOver: number }> = {
  'many-1': { resources: 1, spreadOver: 1 },
  'many-10000': { resources: 10_000, spreadOver: 1000 },
  'many-1000': { resources: 1_000, spreadOver: 1000 },
  'many-10000-over1': { resources: 10_000, spreadOver: 1 },
};
const caseNames = values.cases.split(',');
for (const c of caseNames) if (CASES[c] === undefined) throw new Error(`unknown case ${c}`);
const rounds = Number(values.rounds);
const durationS = Number(values.seconds);

const workDir = join(tmpdir(), `sp-many-ab-${process.pid}`);
mkdirSync(workDir, { recursive: true });
const log = (msg: string): void => { process.stderr.write(`${msg}\n`); };
const upstreamPort = await freePort();
const upstream = await startNginxUpstream(workDir, upstreamPort, '0');
const ctx: Context = { quick: false, workDir, proxyCpu: '1', loadCpu: '0', upstreamPort, log };

interface Proc { variant: string; name: string; spreadOver: number; child: SmartChild; cpu: number[] }
const procs: Proc[] = [];

/**
 * RSS by kind of mapping, MB: the brk heap (malloc), anonymous maps of up to 1 MiB (V8's heap
 * pages are 256 KiB), larger anonymous maps (malloc arenas of other threads, V8's code space,
 * WebAssembly memory), and files (the node binary, libraries).
 */
function smapsSummary(pid: number): string {
  const sums = { brk: 0, small: 0, large: 0, file: 0 };
  let kind: keyof typeof sums = 'file';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (m !== null) {
      const size = parseInt(m[2]!, 16) - parseInt(m[1]!, 16);
      kind = m[4] === '[heap]' ? 'brk' : m[3] !== '0' || m[4]!.startsWith('/') ? 'file' : size <= 1 << 20 ? 'small' : 'large';
    } else if (line.startsWith('Rss:')) {
      sums[kind] += Number(line.split(/\s+/)[1]) / 1024;
    }
  }
  return Object.entries(sums).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ');
}
try {
  for (const name of caseNames) {
    for (const v of variants) {
      const { resources, spreadOver } = CASES[name]!;
      const child = await startSmartProxy(ctx, `${v.label}-${name}`, yamlFor(resources, upstreamPort), [], ['--expose-gc'],
        { SMART_PROXY_COMPILE_CACHE: join(workDir, `compile-cache-${v.label}`) }, v.dir);
      procs.push({ variant: v.label, name, spreadOver, child, cpu: [] });
    }
  }
  const paths = (p: Proc): { prefix: string; count: number; suffix: string } => ({ prefix: '/smart_proxy/r', count: p.spreadOver, suffix: '/-/' });
  for (const p of procs) await warm(p.child.url, p.spreadOver);
  for (const p of procs) await wrk({ url: p.child.url, durationS: 2, connections: 50, cpu: ctx.loadCpu, paths: paths(p) });
  for (let round = 0; round < rounds; round++) {
    const k = round % procs.length;
    for (const p of [...procs.slice(k), ...procs.slice(0, k)]) {
      const before = cpuTimeMs(p.child.pid);
      const r = await wrk({ url: p.child.url, durationS, connections: 50, cpu: ctx.loadCpu, paths: paths(p) });
      if (errorCount(r) > 0) throw new Error(`${p.variant} ${p.name}: ${errorCount(r)} wrk errors`);
      p.cpu[round] = ((cpuTimeMs(p.child.pid) - before) * 1000) / r.requests;
      log(`round ${round + 1}/${rounds} ${p.variant.padEnd(8)} ${p.name.padEnd(17)} ${p.cpu[round]!.toFixed(1)} µs CPU/req`);
    }
  }
  const mb = (b: number): string => (b / 1048576).toFixed(0);
  const rows: string[] = [
    '| case | checkout | CPU µs / request (median) | spread | ÷ first checkout, paired | vs many-1, paired | RSS warm MB | RSS after a GC MB | JS heap after a GC MB |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const p of procs) {
    const rssWarm = rssBytes(p.child.pid);
    const gc = await ask<Message & { rss: number; heapUsed: number }>(p.child.ipc, { type: 'gc' }, 'gc-done');
    const first = procs.find((o) => o.name === p.name && o.variant === variants[0]!.label)!;
    const one = procs.find((o) => o.name === 'many-1' && o.variant === p.variant);
    const paired = (ref: Proc | undefined): string => ref === undefined || ref === p ? '–' : `${median(p.cpu.map((c, i) => c / ref.cpu[i]!)).toFixed(3)}×`;
    if (values.smaps) log(`${p.variant} ${p.name}: ${smapsSummary(p.child.pid)}`);
    rows.push(`| ${p.name} | ${p.variant} | ${median(p.cpu).toFixed(1)} | ${spreadPct(p.cpu).toFixed(0)} % | ${paired(first)} | ${paired(one)} | ${mb(rssWarm)} | ${mb(gc.rss)} | ${mb(gc.heapUsed)} |`);
  }
  process.stdout.write(`${rows.join('\n')}\n`);
} finally {
  for (const p of procs) await p.child.stop();
  await upstream.stop();
  rmSync(workDir, { recursive: true, force: true });
}
