/**
 * Failing clouds and commands, side by side: what one held client gets and how hard the cloud
 * is pressed, for two (or more) checkouts of Smart Proxy. Each case runs in a fresh child
 * process per variant (variants alternate, case by case), against the same mock cloud of this
 * checkout (its stats.apiRequests counts every API request); counts are deterministic, times
 * are wall-clock.
 *
 * Cases:
 * - `429`: every cloud API call answers 429 with Retry-After: 120; boot timeout 20 s. One cold
 *   request: its status, code, Retry-After and time; API requests during it and in the 5 s after.
 * - `500`: every call answers 500 (no Retry-After); boot timeout 5 s (the retry loop as is).
 * - `exit`, `exit-late`: a process resource whose command backgrounds `sleep 300` and exits 3,
 *   at once or 0.3 s later; boot timeout 10 s. The request's status and time, and whether the
 *   sleep outlived it, 5 s after the answer (it is then ended here, by pid).
 *
 * usage: node bench/cloud-faults-ab.ts LABEL=DIR …   e.g. before=/work/main after=.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type * as LoadModule from '../src/config/load.ts';
import type * as MainModule from '../src/main.ts';

interface Row { variant: string; case: string; status: number; code: string; retryAfter: string; ms: number; apiDuring: number; apiAfter: number; leftAlive: string }

const CASES = ['429', '500', 'exit', 'exit-late'] as const;

if (process.argv[2] === '--child') {
  await child(process.argv[3] as string, process.argv[4] as (typeof CASES)[number]);
} else {
  const variants = process.argv.slice(2).map((spec) => {
    const [label, dir] = spec.split('=') as [string, string | undefined];
    if (dir === undefined) throw new Error('usage: node bench/cloud-faults-ab.ts LABEL=DIR …');
    return { label, dir: resolve(dir) };
  });
  const rows: Row[] = [];
  for (const c of CASES) {
    for (const v of variants) {
      const out = await new Promise<string>((done, fail) => {
        const p = fork(new URL(import.meta.url).pathname, ['--child', v.dir, c], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
        let text = '';
        p.stdout?.on('data', (d: Buffer) => { text += d.toString(); });
        p.on('exit', (code) => (code === 0 ? done(text) : fail(new Error(`${v.label} ${c}: exit ${code}`))));
      });
      rows.push({ variant: v.label, case: c, ...JSON.parse(out.trim().split('\n').at(-1) as string) as Omit<Row, 'variant' | 'case'> });
    }
  }
  console.log('| case | variant | status | code | Retry-After | answered after | API requests during | API requests in the 5 s after | left-over child alive |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(`| ${r.case} | ${r.variant} | ${r.status} | ${r.code} | ${r.retryAfter} | ${(r.ms / 1000).toFixed(2)} s | ${r.apiDuring} | ${r.apiAfter} | ${r.leftAlive} |`);
  }
}

async function child(dir: string, c: (typeof CASES)[number]): Promise<void> {
  const { startMockCloud } = await import('../src/mock-cloud/mock-cloud.ts');
  const { parseConfig } = await import(join(dir, 'src/config/load.ts')) as typeof LoadModule;
  const { startApp } = await import(join(dir, 'src/main.ts')) as typeof MainModule;
  const silent = { debug() {}, info() {}, warn() {}, error() {} };
  // Inherited by the process resource's children: how this run's left-overs are told apart.
  process.env.SP_CLOUD_FAULTS_RUN = String(process.pid);
  const cloud = await startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false });
  const tmp = mkdtempSync(join(tmpdir(), 'sp-cloud-faults-'));
  const defaults = { pollIntervalMinMs: 10, pollIntervalMaxMs: 50, probeIntervalMs: 10, failureCooldownMs: 1_000, access: { public: true } };
  // exit: at once (before the provider read the process's start time); exit-late: 0.3 s later.
  const script = c === 'exit' ? 'sleep 300 & exit 3' : 'sleep 300 & sleep 0.3; exit 3';
  const config = c === 'exit' || c === 'exit-late'
    ? {
      providers: { cmd: { kind: 'process', command: ['/bin/sh', '-c', script], stateDir: join(tmp, 'state'), stopGraceMs: 500 } },
      resourceDefaults: { ...defaults, bootTimeoutMs: 10_000 }, resources: { app: { provider: 'cmd' } },
    }
    : {
      providers: { cloud: { kind: 'atmosphere', baseUrl: cloud.url, requestTimeoutMs: 2_000 } },
      resourceDefaults: { ...defaults, bootTimeoutMs: c === '429' ? 20_000 : 5_000 }, resources: { app: { provider: 'cloud' } },
    };
  const app = await startApp(parseConfig(JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, state: { kind: 'memory' }, ...config })), { logger: silent });
  if (c === '429' || c === '500') cloud.failNextApiCalls(100_000, c === '429' ? { kind: 'status', status: 429, retryAfterS: 120 } : { kind: 'status', status: 500 });
  // The start-up check's own GET /vms (atmosphere) is over before counting starts.
  await new Promise((r) => setTimeout(r, 300));
  const before = cloud.stats.apiRequests;
  const t0 = performance.now();
  const res = await fetch(`${app.proxyUrl}/smart_proxy/app/-/x`, { headers: { accept: 'application/json' } });
  const ms = performance.now() - t0;
  const body = await res.json() as { code?: string };
  const during = cloud.stats.apiRequests - before;
  await new Promise((r) => setTimeout(r, 5_000));
  const after = cloud.stats.apiRequests - before - during;
  let leftAlive = '';
  if (c === 'exit' || c === 'exit-late') {
    const pids = ourSleeps();
    leftAlive = pids.length === 0 ? 'no' : `yes (${pids.length})`;
    for (const pid of pids) process.kill(pid, 'SIGKILL');
  }
  await app.close();
  await cloud.close();
  rmSync(tmp, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify({ status: res.status, code: body.code ?? '', retryAfter: res.headers.get('retry-after') ?? '', ms, apiDuring: during, apiAfter: after, leftAlive })}\n`);
  process.exit(0);
}

/** Live `sleep 300` processes of this run (its marker in their environment), by pid. */
function ourSleeps(): number[] {
  const out: number[] = [];
  for (const ent of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${ent}/cmdline`, 'utf8').split('\0');
      const stat = readFileSync(`/proc/${ent}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      const env = readFileSync(`/proc/${ent}/environ`, 'utf8').split('\0');
      if (cmd[0] === 'sleep' && cmd[1] === '300' && state !== 'Z' && env.includes(`SP_CLOUD_FAULTS_RUN=${process.pid}`)) out.push(Number(ent));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}
