/**
 * What one held request costs, object by object: holds N requests on one cold resource (the
 * hold suite's setup, smaller), takes a V8 heap snapshot after a GC before and while they are
 * held, and prints the growth per held request by constructor (count and bytes). Then flips
 * the resource to running and reports the release: flip → ready → last response, and the
 * proxy's CPU per released request. Counts are deterministic; the times are not.
 *
 * usage: node bench/hold-heap.ts [--count 1000] [--top 40] [--root DIR] [--node-flag F]... [--floor [--forward [--concurrency N]]]
 *   --no-heap: no snapshots (a CPU profile of the release then shows the release alone)
 *   --callgrind FILE: run the proxy under valgrind's callgrind, counting instructions during the
 *     release only (flip → last response): a figure that does not depend on the machine's load
 *   --strace FILE: count the proxy's system calls during the release only (`strace -c -f`, all
 *     its threads; attached just before the flip, detached after the last response)
 *   --warm-rounds R: hold, release and stop R times first, so that the measured release runs
 *     compiled code (at small N the JIT's own work is otherwise a large, variable part)
 *   --floor: the same on a bare node:http server that holds every request (bench/hold-floor.ts)
 *     and answers them itself on release; with --forward it forwards them to the same upstream
 *     instead (a bare undici dispatch proxy), at most --concurrency N in flight (64, Smart
 *     Proxy's default ramp; 0: all at once), and reports ready → last as Smart Proxy's is
 *   --concurrency N: without --floor, the cold resource's releaseConcurrency (default 64)
 *   --keep: keep the run's folder (bench/out/hold-heap-PID: the proxy's and the client's logs)
 *   --root: the checkout whose proxy to measure (its smartProxyChild()), for before/after
 *   --node-flag: extra flags for the proxy's node, e.g. --cpu-prof --cpu-prof-dir=/tmp/prof
 *   --keep-alive: the client keeps its connections open after each answer (bench/hold-client.ts
 *     --keep-alive), instead of `connection: close` and a TCP teardown per request in the release
 *   --without-launch-flags: without the V8 flags Smart Proxy's launchers use (src/node-flags.ts),
 *     which are otherwise given to the proxy and to the floor alike
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, smartProxyChild } from './lib/context.ts';
import { ask, nextMessage, type Message } from './lib/ipc.ts';
import { startNginxUpstream } from './lib/nginx.ts';
import { cpuSplitMs, cpuTimeMs, freePort, minorFaults, rssBytes, spawnPinned } from './lib/procs.ts';
import { holdYaml } from './suites/hold.ts';
import { NODE_FLAGS } from '../src/node-flags.ts';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '1000' },
    top: { type: 'string', default: '40' },
    root: { type: 'string', default: join(BENCH_DIR, '..') },
    'node-flag': { type: 'string', multiple: true, default: [] },
    floor: { type: 'boolean', default: false },
    forward: { type: 'boolean', default: false },
    concurrency: { type: 'string', default: '64' },
    'no-heap': { type: 'boolean', default: false },
    callgrind: { type: 'string' },
    strace: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'warm-rounds': { type: 'string', default: '0' },
    'without-launch-flags': { type: 'boolean', default: false },
    'keep-alive': { type: 'boolean', default: false },
  },
});
const n = Number(values.count);
const clientFlags = values['keep-alive'] ? ['--keep-alive'] : [];
if (!Number.isInteger(n) || n <= 0) throw new Error(`--count must be a positive integer, not ${values.count}`);
const top = Number(values.top);

type Counts = Record<string, [number, number]>;
interface HeapCounts extends Message { counts: Counts; heapUsed: number; external: number; rss: number }
interface Stats extends Message { heldTotal: number; calls: Record<string, { start: number }>; readyAt: Record<string, number[]> }
interface Done extends Message { statuses: Record<string, number>; errors: Record<string, number>; doneAt: number[] }

// One folder per run: runs under callgrind are slow, and two may go side by side.
const workDir = join(BENCH_DIR, 'out', `hold-heap-${process.pid}`);
rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });
const upstreamPort = await freePort();
const upstream = await startNginxUpstream(workDir, upstreamPort, '0');
const config = join(workDir, 'hold.yaml');
// The hold suite's config. Under callgrind the boot timeout is 20 minutes: a slow warm-up
// round must not run past it and fail every hold.
writeFileSync(config, `${holdYaml(upstreamPort, values.callgrind === undefined ? 120_000 : 1_200_000, values.floor ? undefined : Number(values.concurrency))}state: { kind: sqlite, path: "${join(workDir, 'hold.sqlite')}" }
`);
const callgrind = values.callgrind === undefined ? [] : [
  'valgrind', '--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${values.callgrind}`, '--smc-check=all', process.execPath,
];
// The launchers' V8 flags (src/node-flags.ts), for the floor too: the same runtime underneath.
const launchFlags = values['without-launch-flags'] ? [] : NODE_FLAGS;
const proxy = spawnPinned('proxy', callgrind[0] ?? process.execPath, [...callgrind.slice(1), '--expose-gc', ...launchFlags, ...values['node-flag'], ...(values.floor
  ? [join(BENCH_DIR, 'hold-floor.ts'), ...(values.forward ? ['--forward', `http://127.0.0.1:${upstreamPort}`, '--concurrency', values.concurrency] : [])]
  : [smartProxyChild(values.root), '--config', config, '--switch', 'up'])], {
  cpu: '1', logFile: join(workDir, 'proxy.log'), ipc: true, env: { ...process.env, SMART_PROXY_CONFIG_CACHE: 'off' },
});
try {
  const ready = await nextMessage<Message & { url?: string; port?: number }>(proxy.child, 'ready', values.callgrind === undefined ? 60_000 : 600_000);
  const url = values.floor ? `http://127.0.0.1:${ready.port}` : ready.url!;
  if (!values.floor) for (let i = 0; i < 200; i++) await (await fetch(`${url}/smart_proxy/warmup/-/`)).arrayBuffer();
  for (let round = 0; round < Number(values['warm-rounds']); round++) {
    const warm = spawnPinned('client', process.execPath, [join(BENCH_DIR, 'hold-client.ts'), '--url', `${url}/smart_proxy/cold/-/`, '--count', String(n), ...clientFlags], {
      cpu: '0', logFile: join(workDir, 'client.log'), ipc: true,
    });
    try {
      const warmDone = nextMessage<Done>(warm.child, 'done', 600_000);
      await nextMessage(warm.child, 'sent', 600_000);
      if (values.floor) {
        await allHeld(() => ask<Message & { count: number }>(proxy.child, { type: 'held' }, 'held').then((m) => m.count), warmDone);
        await ask(proxy.child, { type: 'release' }, 'released');
        await warmDone;
        continue;
      }
      await allHeld(() => ask<Stats>(proxy.child, { type: 'stats' }, 'stats').then((s) => s.heldTotal), warmDone);
      await ask(proxy.child, { type: 'flip' }, 'flipped');
      await warmDone;
      await ask(proxy.child, { type: 'stop-all' }, 'stopped', 600_000);
    } finally {
      await warm.stop();
    }
  }
  const heapCounts = (): Promise<HeapCounts> => values['no-heap']
    ? ask<HeapCounts>(proxy.child, { type: 'gc' }, 'gc-done').then((m) => ({ ...m, counts: {} }))
    : ask<HeapCounts>(proxy.child, { type: 'heap-counts' }, 'heap-counts', 120_000);
  const before = await heapCounts();
  const rssBefore = rssBytes(proxy.pid);
  const client = spawnPinned('client', process.execPath, [join(BENCH_DIR, 'hold-client.ts'), '--url', `${url}/smart_proxy/cold/-/`, '--count', String(n), ...clientFlags], {
    cpu: '0', logFile: join(workDir, 'client.log'), ipc: true,
  });
  try {
    const done = nextMessage<Done>(client.child, 'done', 300_000);
    await nextMessage(client.child, 'sent', 120_000);
    const heldNow = async (): Promise<number> => values.floor
      ? (await ask<Message & { count: number }>(proxy.child, { type: 'held' }, 'held')).count
      : (await ask<Stats>(proxy.child, { type: 'stats' }, 'stats')).heldTotal;
    await allHeld(heldNow, done);
    const held = await heapCounts();
    const rssHeld = rssBytes(proxy.pid);
    const cpuBefore = cpuTimeMs(proxy.pid);
    const splitBefore = cpuSplitMs(proxy.pid);
    /** User and kernel CPU per request since the flip, µs: a TCP teardown is kernel time. */
    const split = (): string => {
      const now = cpuSplitMs(proxy.pid);
      return `user ${(((now.user - splitBefore.user) * 1000) / n).toFixed(0)} µs, kernel ${(((now.sys - splitBefore.sys) * 1000) / n).toFixed(0)} µs`;
    };
    const faultsBefore = minorFaults(proxy.pid);
    // Valgrind takes the command when the process next runs: poke it (a stats round trip)
    // until callgrind_control reports it done.
    const collect = async (on: boolean): Promise<void> => {
      if (values.callgrind === undefined) return;
      await callgrindControl(on ? ['-i', 'on'] : ['-i', 'off']);
      // Written now: the process may not get to write it when stopped.
      if (!on) await callgrindControl(['--dump']);
    };
    const callgrindControl = async (args: string[]): Promise<void> => {
      const control = spawn('callgrind_control', [...args, String(proxy.pid)], { stdio: 'ignore' });
      const exited = once(control, 'exit');
      let finished = false;
      void exited.then(() => { finished = true; });
      while (!finished) {
        await (values.floor ? ask(proxy.child, { type: 'held' }, 'held') : ask(proxy.child, { type: 'stats' }, 'stats'));
        await Promise.race([exited, new Promise((r) => setTimeout(r, 50))]);
      }
      if (control.exitCode !== 0) throw new Error(`callgrind_control ${args.join(' ')} failed (${control.exitCode})`);
    };
    await collect(true);
    const traced = values.strace === undefined ? undefined : await attachStrace(proxy.pid, values.strace);
    if (values.floor) {
      const released = await ask<Message & { at: number }>(proxy.child, { type: 'release' }, 'released');
      const outcome = await done;
      await collect(false);
      await traced?.();
      const cpuUsed = cpuTimeMs(proxy.pid) - cpuBefore;
      const userSys = split();
      const faults = (minorFaults(proxy.pid) - faultsBefore) / n;
      const times = outcome.doneAt.sort((a, b) => a - b);
      printDiff(before, held, rssBefore, rssHeld);
      const how = values.forward ? `forwarding, ${values.concurrency === '0' ? 'all at once' : `at most ${values.concurrency} in flight`}` : 'answering itself';
      console.log(`floor (${how}) release: ready→first ${(times[0]! - released.at).toFixed(0)} ms, ready→last ${(times.at(-1)! - released.at).toFixed(0)} ms, proxy CPU ${((cpuUsed * 1000) / n).toFixed(0)} µs (${userSys}) and ${faults.toFixed(2)} minor page faults per request`);
      console.log(`statuses ${JSON.stringify(outcome.statuses)}, errors ${JSON.stringify(outcome.errors)}`);
      process.exitCode = 0;
    } else {
    const flipped = await ask<Message & { at: number }>(proxy.child, { type: 'flip' }, 'flipped');
    const outcome = await done;
    await collect(false);
    await traced?.();
    const cpuUsed = cpuTimeMs(proxy.pid) - cpuBefore;
    const userSys = split();
    const faults = (minorFaults(proxy.pid) - faultsBefore) / n;
    const stats = await ask<Stats>(proxy.child, { type: 'stats' }, 'stats');
    const ready = stats.readyAt.cold!.at(-1)!;
    const times = outcome.doneAt.sort((a, b) => a - b);
    printDiff(before, held, rssBefore, rssHeld);
    console.log(`release: flip→ready ${(ready - flipped.at).toFixed(0)} ms, ready→first ${(times[0]! - ready).toFixed(0)} ms, ready→last ${(times.at(-1)! - ready).toFixed(0)} ms, proxy CPU ${((cpuUsed * 1000) / n).toFixed(0)} µs (${userSys}) and ${faults.toFixed(2)} minor page faults per request`);
    console.log(`starts ${stats.calls.up!.start} (warm-up rounds included), statuses ${JSON.stringify(outcome.statuses)}, errors ${JSON.stringify(outcome.errors)}`);
    }
  } finally {
    await client.stop();
  }
} finally {
  await proxy.stop();
  await upstream.stop();
  if (values.keep) console.log(`logs kept in ${workDir}`);
  else if (process.exitCode === undefined || process.exitCode === 0) rmSync(workDir, { recursive: true, force: true });
}

/**
 * Resolves once `heldNow` says all `n` requests are held. Throws when the client is done first
 * (its requests were answered instead: a boot timeout, a refusal) or after the bound: 60 s, or
 * 20 minutes under callgrind, where the proxy runs some 50 times slower.
 */
async function allHeld(heldNow: () => Promise<number>, clientDone: Promise<Done>): Promise<void> {
  let finished: Done | undefined;
  void clientDone.then((d) => { finished = d; }, () => undefined);
  const boundMs = values.callgrind === undefined ? 60_000 : 1_200_000;
  const until = Date.now() + boundMs;
  while (await heldNow() < n) {
    if (finished !== undefined) throw new Error(`the client was answered before all ${n} were held: ${JSON.stringify(finished.statuses)}`);
    if (Date.now() > until) throw new Error(`fewer than ${n} requests held after ${boundMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Attaches `strace -c -f` to `pid` (all its threads) and resolves once it is attached; the
 * function it resolves with detaches it (SIGINT: the summary is written to `file`) and waits.
 */
async function attachStrace(pid: number, file: string): Promise<() => Promise<void>> {
  const tracer = spawn('strace', ['-c', '-f', '-o', file, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = once(tracer, 'exit');
  let err = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`strace did not attach in 10 s: ${err}`)), 10_000);
    tracer.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (/attached/.test(err)) { clearTimeout(timer); resolve(); }
    });
    void exited.then(() => { clearTimeout(timer); reject(new Error(`strace exited: ${err}`)); });
  });
  return async () => {
    tracer.kill('SIGINT');
    await exited;
  };
}

function printDiff(before: HeapCounts, held: HeapCounts, rssBefore: number, rssHeld: number): void {
    const rows = Object.keys({ ...before.counts, ...held.counts }).map((k) => {
      const [c0, b0] = before.counts[k] ?? [0, 0];
      const [c1, b1] = held.counts[k] ?? [0, 0];
      return { k, count: (c1 - c0) / n, bytes: (b1 - b0) / n };
    });
    const sum = rows.reduce((a, r) => ({ count: a.count + r.count, bytes: a.bytes + r.bytes }), { count: 0, bytes: 0 });
    const shown = rows.filter((r) => Math.abs(r.count) >= 0.5 || Math.abs(r.bytes) >= 8).sort((a, b) => b.bytes - a.bytes);
    console.log(`root ${values.root}, ${n} held`);
    console.log('per held request: objects  bytes  type:constructor');
    for (const r of shown.slice(0, top)) console.log(`${r.count.toFixed(2).padStart(8)} ${r.bytes.toFixed(0).padStart(7)}  ${r.k}`);
    console.log(`total: ${sum.count.toFixed(1)} objects, ${(sum.bytes / 1024).toFixed(2)} KB per held request`);
    console.log(`heapUsed ${((held.heapUsed - before.heapUsed) / n / 1024).toFixed(2)} KB, external ${((held.external - before.external) / n / 1024).toFixed(2)} KB, RSS ${((rssHeld - rssBefore) / n / 1024).toFixed(2)} KB per held request`);
}
