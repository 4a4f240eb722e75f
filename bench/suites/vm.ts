/**
 * Real VMs through the proxy (QEMU under TCG, the test VM of scripts/build-test-vm.sh):
 *
 * - cold: a request to a stopped VM with nothing saved → its response; the guest boots.
 * - wake: a request to a VM suspended by the proxy's own stop (suspendOnStop) → its response;
 *   QEMU restores the saved state.
 *
 * Each round starts from a stopped instance (stop over IPC between rounds). The proxy's log
 * gives the parts: `bootMs` (start requested → ready) and the provider's `wakeMs` (QEMU
 * launched → running again). QEMU runs on both CPUs: a VM's boot is not the proxy's cost.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR, startSmartProxy, type Context, type SmartChild } from '../lib/context.ts';
import { ask, nowMs } from '../lib/ipc.ts';
import { fmt, median, quantile } from '../lib/stats.ts';

export interface VmSeries {
  /** Request → response, each round, ms. */
  readonly samplesMs: number[];
  readonly p50Ms: number;
  /** The 9th of 10 (quantile 0.9): "in 9 of 10". */
  readonly p90Ms: number;
  readonly maxMs: number;
  /** Of which, from the proxy's log: start requested → ready (bootMs), per round. */
  readonly proxyBootMs: number[];
  /** Of which, from the provider's log: QEMU launched → running after restore (wake only). */
  readonly qemuRestoreMs: number[];
  readonly errors: number;
}

export interface VmResult {
  readonly rounds: number;
  readonly cold: VmSeries;
  readonly wake: VmSeries;
  readonly markdown: string;
}

const TARGET_COLD_MS = 2_000;
const TARGET_WAKE_MS = 500;

function get(url: string): Promise<{ status: number; ms: number }> {
  const t0 = nowMs();
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 60_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: nowMs() - t0 }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 60 s')));
    req.on('error', reject);
    req.end();
  });
}

/** The test VM's files; fails naming the packages when they cannot be built. */
function testVm(): { kernel: string; initrd: string } {
  const root = join(BENCH_DIR, '..');
  try {
    execFileSync('bash', [join(root, 'scripts/build-test-vm.sh')], { stdio: 'pipe', timeout: 180_000 });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`the vm suite needs qemu-system-x86, linux-image-cloud-amd64, busybox-static and cpio (scripts/install-system-deps.sh): ${e.stderr?.toString().trim() || e.message}`, { cause: err });
  }
  const manifest = JSON.parse(readFileSync(join(root, 'var/vm/manifest.json'), 'utf8')) as { kernel: string; initrd: string };
  return { kernel: join(root, 'var/vm', manifest.kernel), initrd: join(root, 'var/vm', manifest.initrd) };
}

function config(vm: { kernel: string; initrd: string }, stateDir: string): string {
  const provider = (suspend: boolean): string =>
    `{ kind: qemu, kernelPath: "${vm.kernel}", initrdPath: "${vm.initrd}", accel: tcg, consoleReadyMarker: READY, suspendOnStop: ${suspend}, powerdownGraceMs: 1000, stateDir: "${stateDir}" }`;
  const resource = (p: string): string =>
    `{ provider: ${p}, bootTimeoutMs: 60000, idleStopMs: 3600000, probe: { kind: http, path: /health, expectStatus: [200], timeoutMs: 1000 }, access: { public: true } }`;
  return `listen: { host: 127.0.0.1, port: 0 }
log: { level: info }
providers:
  cold: ${provider(false)}
  warm: ${provider(true)}
resources:
  vmcold: ${resource('cold')}
  vmwake: ${resource('warm')}
shutdown: { stopInstances: true }
`;
}

/** Numbers named `field` from the child's JSON log lines with message `msg`, per resource. */
function fromLog(logFile: string, msg: string, field: string, resource: string): number[] {
  const out: number[] = [];
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line) as Record<string, unknown>;
      if (o['msg'] === msg && o['resource'] === resource && typeof o[field] === 'number') out.push(o[field]);
    } catch {
      // a partial line at the end
    }
  }
  return out;
}

function series(samples: number[], errors: number, proxyBootMs: number[], qemuRestoreMs: number[]): VmSeries {
  return {
    samplesMs: samples.map((s) => Math.round(s)), p50Ms: median(samples), p90Ms: quantile(samples, 0.9), maxMs: Math.max(...samples),
    proxyBootMs, qemuRestoreMs, errors,
  };
}

/** QEMU processes left with `stateDir` on their command line (there should be none). */
function killLeftovers(stateDir: string): number {
  let killed = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes('qemu-system') && cmdline.includes(`${stateDir}/`)) {
        process.kill(Number(entry), 'SIGKILL');
        killed++;
      }
    } catch {
      // exited meanwhile
    }
  }
  return killed;
}

async function rounds(child: SmartChild, resource: string, n: number, ctx: Context): Promise<{ samples: number[]; errors: number }> {
  const samples: number[] = [];
  let errors = 0;
  for (let i = 0; i < n; i++) {
    const t0 = nowMs();
    const r = await get(`${child.url}/smart_proxy/${resource}/-/health`).catch((err: unknown) => ({ status: 0, ms: nowMs() - t0, err }));
    if (r.status !== 200) errors++;
    samples.push(r.ms);
    ctx.log(`  ${resource} ${i + 1}/${n}: ${r.status === 0 ? String((r as { err?: unknown }).err) : r.status} in ${r.ms.toFixed(0)} ms`);
    await ask(child.ipc, { type: 'stop-all' }, 'stopped', 120_000);
  }
  return { samples, errors };
}

export async function runVm(ctx: Context): Promise<VmResult> {
  const n = ctx.quick ? 3 : 10;
  const vm = testVm();
  // Short: unix socket paths in it are limited to 107 bytes.
  const stateDir = mkdtempSync(join(tmpdir(), 'spb-'));
  const child = await startSmartProxy({ ...ctx, proxyCpu: '0,1' }, 'vm', config(vm, stateDir));
  const logFile = join(ctx.workDir, 'vm.log');
  try {
    ctx.log(`VMs through the proxy: ${n} cold boots`);
    const cold = await rounds(child, 'vmcold', n, ctx);
    ctx.log(`VMs through the proxy: one boot to suspend, then ${n} wakes from suspend`);
    await rounds(child, 'vmwake', 1, ctx);
    const wake = await rounds(child, 'vmwake', n, ctx);
    const coldS = series(cold.samples, cold.errors, fromLog(logFile, 'instance ready', 'bootMs', 'vmcold'), []);
    const wakeS = series(wake.samples, wake.errors, fromLog(logFile, 'instance ready', 'bootMs', 'vmwake').slice(1),
      fromLog(logFile, 'qemu VM restored from suspend state', 'wakeMs', 'vmwake'));
    return { rounds: n, cold: coldS, wake: wakeS, markdown: render(n, coldS, wakeS) };
  } finally {
    await child.stop();
    const left = killLeftovers(stateDir);
    if (left > 0) ctx.log(`  killed ${left} QEMU process(es) left behind`);
    rmSync(stateDir, { recursive: true, force: true });
  }
}

function render(n: number, cold: VmSeries, wake: VmSeries): string {
  const row = (what: string, s: VmSeries): string =>
    `| ${what} | ${n} | ${fmt(s.p50Ms)} | ${fmt(s.p90Ms)} | ${fmt(s.maxMs)} | ${fmt(median(s.proxyBootMs))} | ${s.qemuRestoreMs.length > 0 ? fmt(median(s.qemuRestoreMs)) : '–'} | ${s.errors} |`;
  const verdict = (ok: boolean): string => (ok ? 'met' : '**missed**');
  return [
    '',
    '### Real VMs through the proxy (QEMU TCG, test VM; request → response, each from a stopped instance)',
    '',
    '| path | rounds | p50 ms | 9 of 10 within, ms | max ms | of which start → ready, p50 ms | of which QEMU restore, p50 ms | errors |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    row('cold boot', cold),
    row('wake from suspend', wake),
    '',
    '| VM target | goal | measured | |',
    '| --- | --- | --- | --- |',
    `| cold boot to first byte | ≤ ${TARGET_COLD_MS} ms | p50 ${fmt(cold.p50Ms)} ms, max ${fmt(cold.maxMs)} ms | ${verdict(cold.p50Ms <= TARGET_COLD_MS)} |`,
    `| wake from suspend, 9 of 10 | ≤ ${TARGET_WAKE_MS} ms | ${fmt(wake.p90Ms)} ms (p50 ${fmt(wake.p50Ms)}) | ${verdict(wake.p90Ms <= TARGET_WAKE_MS)} |`,
    '',
  ].join('\n');
}
