/**
 * Child processes for the benchmarks: spawned pinned to a CPU (`taskset`) with a raised
 * open-files limit (`prlimit`, both exec, so the pid is the program's own), their CPU time
 * and memory read from /proc, and stopped by their own pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { once } from 'node:events';

export interface Spawned {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly name: string;
  stop(): Promise<void>;
}

export interface SpawnOptions {
  /** CPU list for taskset (`"1"`); the process and its threads stay there. */
  readonly cpu: string;
  /** File that receives stdout and stderr. */
  readonly logFile: string;
  /** Open an IPC channel (Node children only). */
  readonly ipc?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  readonly noFiles?: number;
}

export function spawnPinned(name: string, command: string, args: readonly string[], options: SpawnOptions): Spawned {
  const wrapped = ['--nofile=' + String(options.noFiles ?? 20_000), 'taskset', '-c', options.cpu, command, ...args];
  const child = spawn('prlimit', wrapped, {
    stdio: ['ignore', 'pipe', 'pipe', ...(options.ipc === true ? ['ipc' as const] : [])],
    env: options.env ?? process.env,
  });
  const log = createWriteStream(options.logFile);
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
  if (child.pid === undefined) throw new Error(`${name}: could not spawn ${command}`);
  const pid = child.pid;
  const exited = once(child, 'exit');
  return {
    child, pid, name,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

const TICKS_PER_S = 100; // USER_HZ on Linux

/** utime + stime of a process (all its threads), in milliseconds. */
export function cpuTimeMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces: count fields after its closing paren.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) * 1000) / TICKS_PER_S;
}

/** utime and stime of a process (all its threads) apart, in milliseconds: user space and kernel. */
export function cpuSplitMs(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: (Number(fields[11]) * 1000) / TICKS_PER_S, sys: (Number(fields[12]) * 1000) / TICKS_PER_S };
}

/**
 * Minor page faults of a process (all its threads): first touches of memory the kernel must
 * map. A young generation larger than the caches shows here, whatever the machine's load.
 */
export function minorFaults(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
}

/** Resident set size of a process, in bytes. */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m === null ? 0 : Number(m[1]) * 1024;
}

/** Resolves when `url` answers anything, polling without sleeping longer than 20 ms. */
export async function waitForHttp(url: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return;
    } catch (err) {
      if (Date.now() > until) throw new Error(`${url} did not answer within ${timeoutMs} ms`, { cause: err });
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** A free TCP port on 127.0.0.1 (bound and released; fine for a benchmark). */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}
