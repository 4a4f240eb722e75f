/**
 * Idle CPU: what Smart Proxy costs when nobody uses it. Starts the proxy as a child process
 * (the demo of `npm start`, and a config with many resources), lets it settle, then reads
 * its CPU time (all threads, from each /proc/PID/task/TID/schedstat) over a window. Side by side
 * in one run; the figure is CPU milliseconds per second of wall time.
 *
 * usage: node bench/idle-cpu.ts [--window-s 30] [--settle-s 15] [--resources 1000] [--only demo,many]
 *          [--cli path/to/bin/smart-proxy.js ...] [--extra 'yaml line' ...]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    'window-s': { type: 'string', default: '30' },
    'settle-s': { type: 'string', default: '15' },
    resources: { type: 'string', default: '1000' },
    only: { type: 'string', default: 'demo,many' },
    /** The entry to run (bin/smart-proxy.js, or src/cli.ts of an older checkout), for a before/after in one run; repeatable. */
    cli: { type: 'string', multiple: true },
    /** YAML lines added to the many-resources config (to find what costs: `metrics: { enabled: false }`). */
    extra: { type: 'string', multiple: true, default: [] },
  },
});
const windowS = Number(values['window-s']);
const settleS = Number(values['settle-s']);
const resources = Number(values.resources);
const clis = values.cli ?? [fileURLToPath(new URL('../bin/smart-proxy.js', import.meta.url))];

/**
 * CPU time of every thread of `pid` in ms, from /proc/PID/task/TID/schedstat (nanoseconds,
 * exact), not /proc/PID/stat (whole 10 ms ticks, charged by sampling: too coarse for an idle
 * process).
 */
function cpuMs(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return ns / 1e6;
}

async function measure(name: string, cli: string, args: string[]): Promise<{ name: string; cpuMsPerS: number; windowS: number }> {
  const child: ChildProcess = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  try {
    const pid = child.pid as number;
    // Started once it prints its listening line (the demo's banner, or the log line).
    const deadline = Date.now() + 180_000;
    while (!/listening|Smart Proxy is up|proxy on/i.test(out)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not start:\n${out}`);
      await sleep(100);
    }
    // A benchmark, not a test: the settle time and the window are the measurement itself.
    await sleep(settleS * 1000);
    const c0 = cpuMs(pid);
    const t0 = performance.now();
    await sleep(windowS * 1000);
    const c1 = cpuMs(pid);
    const wallS = (performance.now() - t0) / 1000;
    return { name, cpuMsPerS: (c1 - c0) / wallS, windowS: wallS };
  } finally {
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    if (child.exitCode === null) await once(child, 'exit');
    clearTimeout(killer);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'sp-idle-'));
try {
  const manyConfig = join(dir, 'many.yaml');
  const lines = [
    'listen: { host: 127.0.0.1, port: 0 }',
    'log: { level: info }',
    `state: { kind: sqlite, path: ${JSON.stringify(join(dir, 'state.sqlite'))} }`,
    'admin: { listen: { port: 0 }, anonymousFromLoopback: true }',
    'providers:',
    '  always: { kind: static, endpoint: "http://127.0.0.1:9" }',
    'resources:',
  ];
  lines.splice(1, 0, ...values.extra);
  for (let i = 0; i < resources; i++) lines.push(`  r${i}: { provider: always, access: { public: true } }`);
  writeFileSync(manyConfig, `${lines.join('\n')}\n`);
  const runs: Array<[string, string[]]> = [
    ['demo (npm start)', ['demo', '--port', '0']],
    [`${resources} static resources, SQLite state, admin`, ['start', '--config', manyConfig]],
  ];
  const only = new Set(values.only.split(','));
  for (const [name, args] of runs) {
    if (!only.has(name.startsWith('demo') ? 'demo' : 'many')) continue;
    for (const cli of clis) {
      const r = await measure(name, cli, args);
      process.stdout.write(`${r.name} [${cli}]: ${r.cpuMsPerS.toFixed(2)} ms CPU per s (over ${r.windowS.toFixed(1)} s)\n`);
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
