/** Runs wrk (one thread, pinned) and reads the JSON line that lib/stats.lua prints. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const LIB_DIR = fileURLToPath(new URL('.', import.meta.url));

export interface WrkResult {
  readonly requests: number;
  readonly durationUs: number;
  readonly errors: { connect: number; read: number; write: number; status: number; timeout: number };
  readonly meanUs: number;
  readonly maxUs: number;
  /** Percentile ("50", "99.9") → latency in µs. */
  readonly latencyUs: Record<string, number>;
}

export interface WrkOptions {
  readonly url: string;
  readonly durationS: number;
  readonly connections: number;
  readonly cpu: string;
  /** Spread over paths: url is then the origin, and prefix + i + suffix the paths. */
  readonly paths?: { prefix: string; count: number; suffix: string };
  /** Extra request headers, `Name: value`. */
  readonly headers?: readonly string[];
}

export async function wrk(options: WrkOptions): Promise<WrkResult> {
  const script = options.paths === undefined ? 'stats.lua' : 'paths.lua';
  const args = ['-c', options.cpu, 'wrk', '-t1', `-c${options.connections}`, `-d${options.durationS}s`, '--latency', '--timeout', '10s', '-s', script];
  for (const h of options.headers ?? []) args.push('-H', h);
  args.push(options.url);
  if (options.paths !== undefined) args.push('--', options.paths.prefix, String(options.paths.count), options.paths.suffix);
  const { stdout } = await run('taskset', args, { cwd: LIB_DIR, maxBuffer: 1 << 20 });
  const line = stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (line === undefined) throw new Error(`wrk printed no result:\n${stdout}`);
  return JSON.parse(line.slice('WRKJSON '.length)) as WrkResult;
}

export function errorCount(r: WrkResult): number {
  return r.errors.connect + r.errors.read + r.errors.write + r.errors.status + r.errors.timeout;
}
