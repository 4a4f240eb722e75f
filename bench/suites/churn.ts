/**
 * Churn soak: thousands of start/stop cycles over many resources whose backends get a fresh
 * port on every boot, plus warm traffic on one resource, for a bounded time. The proxy
 * (bench/churn-child.ts) reports RSS, heap, handles, timers, upstream pools and known
 * instances every few seconds; flat numbers mean nothing grows per cycle. Stops by itself.
 */
import { execFileSync, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import type { Context } from '../lib/context.ts';

export interface ChurnSample {
  readonly atS: number;
  readonly cycles: number;
  readonly warmRequests: number;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly handles: number;
  readonly timers: number;
  readonly pools: number;
  readonly instances: number;
  readonly backends: number;
}

export interface ChurnResult {
  readonly resources: number;
  readonly durationS: number;
  readonly samples: ChurnSample[];
  readonly errors: number;
  /** The errors by kind: an HTTP status with the proxy's error code, or the client's error. */
  readonly errorKinds: Record<string, number>;
}

const child = fileURLToPath(new URL('../churn-child.ts', import.meta.url));

export async function runChurn(ctx: Context, options: { durationS?: number; resources?: number } = {}): Promise<ChurnResult> {
  const durationS = options.durationS ?? (ctx.quick ? 30 : 120);
  const resources = options.resources ?? 200;
  const sampleEveryS = ctx.quick ? 3 : 10;
  ctx.log(`churn: ${durationS} s of start/stop cycles over ${resources} resources with fresh ports, plus warm traffic`);
  const proc = fork(child, [String(resources)], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  // The proxy on its own CPU, the load on the other (as in the other suites).
  if (proc.pid !== undefined) execFileSync('taskset', ['-pc', ctx.proxyCpu, String(proc.pid)], { stdio: 'ignore' });
  const messages: Array<Record<string, unknown>> = [];
  let wake: (() => void) | undefined;
  proc.on('message', (m: Record<string, unknown>) => { messages.push(m); wake?.(); });
  // A child that dies must end the suite with its reason, not leave `next` waiting forever or
  // crash the driver on a send to a closed channel.
  proc.on('exit', () => wake?.());
  proc.on('error', () => wake?.());
  const next = async (type: string): Promise<Record<string, unknown>> => {
    for (;;) {
      const i = messages.findIndex((m) => m.type === type);
      if (i >= 0) return messages.splice(i, 1)[0] as Record<string, unknown>;
      if (proc.exitCode !== null || proc.signalCode !== null || !proc.connected) throw new Error(`churn child exited (${proc.exitCode ?? proc.signalCode ?? 'channel closed'})`);
      await new Promise<void>((r) => { wake = r; });
    }
  };
  const { url } = await next('ready') as { url: string };
  const agent = new Agent({ connections: 32, keepAliveTimeout: 1_000 });
  const started = performance.now();
  const until = started + durationS * 1000;
  let warmRequests = 0;
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  const failed = (kind: string): void => {
    errors++;
    errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
  };
  const get = async (path: string): Promise<void> => {
    try {
      const r = await fetch(`${url}${path}`, { dispatcher: agent });
      const body = await r.text();
      if (r.status !== 200) failed(`${r.status} ${/"code":"([A-Z_]+)"/.exec(body)?.[1] ?? ''}`.trim());
    } catch (err) {
      failed((err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name);
    }
  };
  // Cold: each worker walks resources in its own stride; a resource idles out (100 ms)
  // before a worker comes back to it, so nearly every request is a start and later a stop.
  const cold = async (w: number): Promise<void> => {
    for (let i = w; performance.now() < until; i += 7) await get(`/smart_proxy/r${i % resources}/-/`);
  };
  const warm = async (): Promise<void> => {
    while (performance.now() < until) {
      await get('/smart_proxy/warm/-/');
      warmRequests++;
    }
  };
  const samples: ChurnSample[] = [];
  const sample = async (): Promise<void> => {
    if (!proc.connected) throw new Error(`churn child exited (${proc.exitCode ?? proc.signalCode ?? 'channel closed'})`);
    proc.send({ type: 'stats' });
    const s = await next('stats') as Record<string, number>;
    const row: ChurnSample = {
      atS: Math.round((performance.now() - started) / 1000), cycles: s.stops ?? 0, warmRequests,
      rssBytes: s.rssBytes ?? 0, heapUsedBytes: s.heapUsedBytes ?? 0, handles: s.handles ?? 0, timers: s.timers ?? 0,
      pools: s.pools ?? 0, instances: s.instances ?? 0, backends: s.backends ?? 0,
    };
    samples.push(row);
    ctx.log(`churn ${String(row.atS).padStart(4)} s: ${row.cycles} cycles, RSS ${(row.rssBytes / 2 ** 20).toFixed(1)} MB, heap ${(row.heapUsedBytes / 2 ** 20).toFixed(1)} MB, handles ${row.handles}, timers ${row.timers}, pools ${row.pools}, instances ${row.instances}`);
  };
  const sampler = (async () => {
    await sample();
    while (performance.now() < until) {
      await new Promise((r) => setTimeout(r, Math.min(sampleEveryS * 1000, Math.max(0, until - performance.now()))));
      await sample();
    }
  })();
  await Promise.all([...Array.from({ length: 6 }, (_, w) => cold(w)), warm(), warm(), sampler]);
  await agent.close();
  proc.send({ type: 'stop' });
  await new Promise((r) => proc.once('exit', r));
  return { resources, durationS, samples, errors, errorKinds };
}
