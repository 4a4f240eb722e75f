/**
 * `npm run bench`: installs what it needs, then measures Smart Proxy side by side with nginx,
 * configurable-http-proxy and a bare undici proxy, plus wake latency, holding at scale and
 * many resources. Writes bench/out/results.{md,json} and bench/out/latency.svg.
 *
 * Pinning: this process, wrk, the upstream and the load generators run on CPU 0; the proxy
 * under test runs alone on CPU 1 (taskset). Benchmarks are not tests: nothing here asserts.
 *
 * usage: npm run bench [-- --quick] [--only throughput,wake,hold,many,churn,front,vm] [--profile]
 *        npm run bench -- --instr [--quick] [--requests N] [--warmup N] [--baseline DIR] [--cases smart,smart-jwt] [--by-function] [--node-flags='--single-threaded'] [--repeat N] [--cache-sim] [--last-level SIZE,ASSOC,LINE]   (suites/instr.ts)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, type Context } from './lib/context.ts';
import { ensureDeps } from './lib/deps.ts';
import { startNginxUpstream } from './lib/nginx.ts';
import { freePort } from './lib/procs.ts';
import { renderMarkdown, type Results } from './lib/report.ts';
import { latencyChart } from './lib/svg.ts';
import { runThroughput } from './suites/throughput.ts';
import { runWake } from './suites/wake.ts';
import { runHold } from './suites/hold.ts';
import { runMany } from './suites/many.ts';
import { runProfile } from './suites/profile.ts';
import { runChurn } from './suites/churn.ts';
import { runFrontAb } from './suites/front.ts';
import { runVm, type VmResult } from './suites/vm.ts';
import { renderInstr, runInstr } from './suites/instr.ts';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    profile: { type: 'boolean', default: false },
    // Instructions per warm request under callgrind (suites/instr.ts), and the checkout to compare.
    instr: { type: 'boolean', default: false },
    requests: { type: 'string' },
    warmup: { type: 'string' },
    baseline: { type: 'string' },
    cases: { type: 'string' },
    'by-function': { type: 'boolean', default: false },
    'node-flags': { type: 'string' },
    repeat: { type: 'string' },
    'cache-sim': { type: 'boolean', default: false },
    'last-level': { type: 'string' },
  },
});
const suites = new Set((values.only ?? 'throughput,wake,hold,many,churn,vm').split(','));
const started = Date.now();
const log = (msg: string): void => {
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${msg}\n`);
};

if (cpus().length < 2) throw new Error('the benchmark pins the proxy to CPU 1 and the load to CPU 0: it needs 2 CPUs');
ensureDeps(log);
// This process (and what it spawns without its own pinning) stays on the load CPU.
execFileSync('taskset', ['-pc', '0', String(process.pid)], { stdio: 'ignore' });

const outDir = join(BENCH_DIR, 'out');
const workDir = join(outDir, 'work');
rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });

const upstreamPort = await freePort();
const upstream = await startNginxUpstream(workDir, upstreamPort, '0');
const ctx: Context = { quick: values.quick, workDir, proxyCpu: '1', loadCpu: '0', upstreamPort, log };

const results: Results = {
  date: new Date().toISOString(),
  command: `npm run bench${values.quick ? ' -- --quick' : ''}${values.only ? ` --only ${values.only}` : ''}`,
  machine: {
    nproc: cpus().length,
    cpuModel: /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown',
    node: process.version,
    nginx: spawnSync('nginx', ['-v'], { encoding: 'utf8' }).stderr.trim().replace('nginx version: ', ''),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
  },
  quick: values.quick,
};

try {
  if (values.profile) {
    await runProfile(ctx);
  } else if (values.instr) {
    const rows = await runInstr(ctx, { requests: values.requests === undefined ? undefined : Number(values.requests), warmup: values.warmup === undefined ? undefined : Number(values.warmup), baseline: values.baseline, cases: values.cases?.split(','), byFunction: values['by-function'], nodeFlags: values['node-flags']?.split(' ').filter((f) => f !== ''), repeat: values.repeat === undefined ? undefined : Number(values.repeat), cacheSim: values['cache-sim'], lastLevel: values['last-level'] });
    const command = `npm run bench -- --instr${values.quick ? ' --quick' : ''}${values.requests ? ` --requests ${values.requests}` : ''}${values.warmup ? ` --warmup ${values.warmup}` : ''}${values.baseline ? ` --baseline ${values.baseline}` : ''}${values.cases ? ` --cases ${values.cases}` : ''}${values['node-flags'] ? ` --node-flags='${values['node-flags']}'` : ''}${values.repeat ? ` --repeat ${values.repeat}` : ''}${values['cache-sim'] ? ' --cache-sim' : ''}${values['last-level'] ? ` --last-level ${values['last-level']}` : ''}`;
    const md = renderInstr(rows, command);
    writeFileSync(join(outDir, 'instr.md'), md);
    process.stdout.write(`\n${md}\nwritten: bench/out/instr.md\n`);
  } else {
    if (suites.has('throughput')) results.throughput = await runThroughput(ctx);
    if (suites.has('wake')) results.wake = await runWake(ctx);
    if (suites.has('hold')) results.hold = await runHold(ctx);
    if (suites.has('many')) results.many = await runMany(ctx);
    if (suites.has('churn')) results.churn = await runChurn(ctx);
    // Paired A/B of front-proxy mode against proxy_pass; writes bench/out/front.md itself.
    if (suites.has('front')) await runFrontAb(ctx);
    const vm: VmResult | undefined = suites.has('vm') ? await runVm(ctx) : undefined;
    results.durationS = (Date.now() - started) / 1000;
    const md = renderMarkdown(results) + (vm?.markdown ?? '');
    writeFileSync(join(outDir, 'results.json'), JSON.stringify({ ...results, vm }, null, 2));
    writeFileSync(join(outDir, 'results.md'), md);
    if (results.throughput) writeFileSync(join(outDir, 'latency.svg'), latencyChart(results.throughput, results.wake));
    process.stdout.write(`\n${md}\nwritten: bench/out/results.md, results.json${results.throughput ? ', latency.svg' : ''}\n`);
  }
} finally {
  await upstream.stop();
}
