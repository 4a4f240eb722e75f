/**
 * Warm-path CPU per request of Smart Proxy's three access cases against the bare dispatch()
 * proxy, and optionally against the same cases from another checkout (before a change), side
 * by side in one run: many short interleaved rounds, CPU time of each process per request,
 * medians of each round's ratio to the dispatch() proxy. What a change to the warm path wins,
 * measured on a shared machine.
 *
 * usage: node bench/lib/compare-cpu.ts [--baseline DIR] [--rounds N] [--seconds S]
 *   DIR: another checkout of this repository (with node_modules), e.g. from `git worktree add`.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, startSmartProxy } from './context.ts';
import { startNginxUpstream } from './nginx.ts';
import { cpuTimeMs, freePort, spawnPinned, waitForHttp } from './procs.ts';
import { median, quantile } from './stats.ts';
import { errorCount, wrk } from './wrk.ts';
import { ACCESS_CASES, BENCH_HEADERS, BENCH_PATH, headersFor, smartProxyYaml } from '../suites/throughput.ts';

const { values } = parseArgs({ options: { baseline: { type: 'string' }, rounds: { type: 'string', default: '12' }, seconds: { type: 'string', default: '2' } } });
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
const workDir = join(BENCH_DIR, 'out', 'compare-work');
rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });

interface Proc { readonly name: string; readonly url: string; readonly pid: number; readonly headers: readonly string[]; stop(): Promise<void> }
const upstreamPort = await freePort();
const upstream = await startNginxUpstream(workDir, upstreamPort, '0');
const ctx = { quick: true, workDir, proxyCpu: '1', loadCpu: '0', upstreamPort, log: (m: string) => process.stderr.write(`${m}\n`) };
const procs: Proc[] = [];
try {
  const port = await freePort();
  const d = spawnPinned('dispatch', process.execPath, [join(BENCH_DIR, 'bare-proxy.ts'), String(port), `http://127.0.0.1:${upstreamPort}`, 'dispatch'], { cpu: '1', logFile: join(workDir, 'dispatch.log') });
  procs.push({ name: 'dispatch', url: `http://127.0.0.1:${port}${BENCH_PATH}`, pid: d.pid, headers: BENCH_HEADERS, stop: () => d.stop() });
  await waitForHttp(procs[0]!.url);
  // The baseline's own harness starts its own code (its bench/ imports its src/).
  const base = values.baseline === undefined ? undefined
    : (await import(join(values.baseline, 'bench', 'lib', 'context.ts'))) as { startSmartProxy: typeof startSmartProxy };
  for (const access of ACCESS_CASES) {
    const yaml = smartProxyYaml(upstreamPort, access);
    const headers = await headersFor(access);
    const s = await startSmartProxy(ctx, `smart-${access}`, yaml);
    procs.push({ name: access, url: s.url + BENCH_PATH, pid: s.pid, headers, stop: () => s.stop() });
    if (base !== undefined) {
      const b = await base.startSmartProxy(ctx, `before-${access}`, yaml);
      procs.push({ name: `${access} (before)`, url: b.url + BENCH_PATH, pid: b.pid, headers, stop: () => b.stop() });
    }
  }
  for (const p of procs) await wrk({ url: p.url, durationS: 2, connections: 50, cpu: '0', headers: p.headers });
  const us = new Map(procs.map((p) => [p.name, [] as number[]]));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < procs.length; i++) {
      const p = procs[(i + r) % procs.length]!;
      const before = cpuTimeMs(p.pid);
      const w = await wrk({ url: p.url, durationS: seconds, connections: 50, cpu: '0', headers: p.headers });
      if (errorCount(w) > 0) throw new Error(`${p.name}: ${JSON.stringify(w.errors)}`);
      us.get(p.name)!.push(((cpuTimeMs(p.pid) - before) * 1000) / w.requests);
    }
    ctx.log(`round ${r + 1}/${rounds}`);
  }
  const ref = us.get('dispatch')!;
  process.stdout.write(`| proxy | CPU µs / request, median | ÷ dispatch(), median of paired rounds | IQR |\n| --- | ---: | ---: | ---: |\n`);
  for (const [name, v] of us) {
    const ratios = v.map((x, i) => x / ref[i]!);
    process.stdout.write(`| ${name} | ${median(v).toFixed(1)} | ${median(ratios).toFixed(2)}× | ${quantile(ratios, 0.25).toFixed(2)}-${quantile(ratios, 0.75).toFixed(2)}× |\n`);
  }
  process.stdout.write(`\n${rounds} rounds × ${seconds} s, ${new Date().toISOString()}\n`);
} finally {
  for (const p of procs) await p.stop();
  await upstream.stop();
}
