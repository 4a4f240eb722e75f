/** What every suite gets from run.ts. */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { spawnPinned, type Spawned } from './procs.ts';
import { nextMessage, type Message } from './ipc.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';

export const BENCH_DIR = fileURLToPath(new URL('../', import.meta.url));

/**
 * The Smart Proxy child's entry in a checkout (this one by default): bench/smart-proxy-child-entry.js,
 * which turns the compile cache on before any TypeScript is loaded, as bin/smart-proxy.js does;
 * the .ts itself in an older checkout that has no such entry (before/after runs).
 */
export function smartProxyChild(root: string = join(BENCH_DIR, '..')): string {
  const js = join(root, 'bench', 'smart-proxy-child-entry.js');
  return existsSync(js) ? js : join(root, 'bench', 'smart-proxy-child.ts');
}

export interface Context {
  readonly quick: boolean;
  /** Scratch folder for configs and logs (under bench/out/). */
  readonly workDir: string;
  /** CPU of the process under test; wrk, upstreams and clients share the other. */
  readonly proxyCpu: string;
  readonly loadCpu: string;
  /** Port of the shared nginx upstream. */
  readonly upstreamPort: number;
  log(msg: string): void;
}

export interface ReadyMessage extends Message {
  readonly url: string;
  readonly startupMs: number;
  /** CPU time of the whole process (every thread) at that moment, ms: steadier than wall time on a busy machine. */
  readonly startupCpuMs?: number;
  readonly parseMs: number;
  readonly appMs: number;
  readonly rssBytes: number;
}

export interface SmartChild extends Spawned {
  readonly url: string;
  readonly ready: ReadyMessage;
  readonly ipc: ChildProcess;
}

/**
 * Writes `yaml` and starts Smart Proxy on it (smartProxyChild(root): this checkout's by
 * default), pinned to the proxy CPU, with the V8 flags its launchers use (src/node-flags.ts)
 * before `nodeFlags`.
 */
export async function startSmartProxy(ctx: Context, name: string, yaml: string, extraArgs: readonly string[] = [], nodeFlags: readonly string[] = [], env?: NodeJS.ProcessEnv, root?: string): Promise<SmartChild> {
  const file = join(ctx.workDir, `${name}.yaml`);
  // The default state store (SQLite), as a user runs it, in a file of this child's own.
  writeFileSync(file, `${yaml}state: { kind: sqlite, path: "${join(ctx.workDir, `${name}.sqlite`)}" }\n`);
  const proc = spawnPinned(name, process.execPath, [...NODE_FLAGS, ...nodeFlags, smartProxyChild(root), '--config', file, ...extraArgs], {
    cpu: ctx.proxyCpu, logFile: join(ctx.workDir, `${name}.log`), ipc: true, env: { ...process.env, SMART_PROXY_CONFIG_CACHE: 'off', SMART_PROXY_COMPILE_CACHE: join(ctx.workDir, 'compile-cache'), ...env },
  });
  const ready = await nextMessage<ReadyMessage>(proc.child, 'ready', 60_000);
  return { ...proc, url: ready.url, ready, ipc: proc.child };
}
