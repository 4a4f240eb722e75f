/**
 * Wake latency: from the instant a backend's readiness flips to the held client's response.
 *
 * - probe path: a `static` resource whose backend (a server in this process) starts
 *   listening at instant T while K requests are held; readiness is found by the probe.
 * - provider path: the provider says `starting` until T = start + boot (300 ± 50 ms), then
 *   `running`; readiness is found by polling the provider, then one probe.
 * - first boots: the provider path again, but every wake is of a different resource, so none
 *   has a boot history to go by (the provider path's other wakes learn from the earlier ones).
 *
 * Between wakes the instance is stopped (IPC), so every wake is a cold start.
 */
import { createServer, request, type Server } from 'node:http';
import { startSmartProxy, type Context, type SmartChild } from '../lib/context.ts';
import { ask, nowMs, type Message } from '../lib/ipc.ts';
import { freePort } from '../lib/procs.ts';
import { quantile } from '../lib/stats.ts';

export interface WakeResult {
  readonly path: 'probe' | 'provider' | 'first-boot';
  readonly wakes: number;
  readonly heldPerWake: number;
  /** Every held request's T → response head, ms. */
  readonly samplesMs: number[];
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** Of which: T → the proxy declares the instance ready (median over wakes), ms. */
  readonly detectP50Ms: number;
  readonly detectP99Ms: number;
  /** T → ready of each wake, in order, ms. */
  readonly detectMs: number[];
  /** p50/p99 over the wakes after the first (the first has no boot history to go by). */
  readonly warmHistoryP50Ms: number;
  readonly warmHistoryP99Ms: number;
  readonly errors: number;
  /** The proxy's event-loop delay over the run (monitorEventLoopDelay): machine noise. */
  readonly loopDelayMs: { p50: number; p99: number; max: number };
}

interface Stats extends Message {
  heldTotal: number;
  flips: number[];
  readyAt: Record<string, number[]>;
  loopDelayMs: { p50: number; p99: number; max: number };
  rssBytes: number;
}

const HELD = 4;

function get(url: string): Promise<{ status: number; at: number }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false }, (res) => {
      const at = nowMs();
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, at }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Public resources on a static backend at `port`: `wake` (both wake paths use it), and with
 * `firstBoots` also `wake0` … `wake{firstBoots - 1}`, each woken once.
 */
function wakeConfig(port: number, firstBoots = 0): string {
  const more = Array.from({ length: firstBoots }, (_, i) => `  wake${i}: { provider: up, bootTimeoutMs: 30000, access: { public: true } }\n`).join('');
  return `listen: { host: 127.0.0.1, port: 0 }
log: { level: warn }
providers:
  up: { kind: static, endpoint: "http://127.0.0.1:${port}" }
resources:
  wake: { provider: up, bootTimeoutMs: 30000, access: { public: true } }
${more}`;
}

async function waitHeld(child: SmartChild, n: number): Promise<void> {
  for (;;) {
    const s = await ask<Stats>(child.ipc, { type: 'stats' }, 'stats');
    if (s.heldTotal >= n) return;
    await new Promise((r) => setTimeout(r, 2));
  }
}

function summarise(path: WakeResult['path'], wakes: number, samples: number[], detect: number[], errors: number, loopDelayMs: Stats['loopDelayMs']): WakeResult {
  return {
    loopDelayMs,
    path, wakes, heldPerWake: HELD, samplesMs: samples.map((s) => Math.round(s * 100) / 100),
    p50Ms: quantile(samples, 0.5), p99Ms: quantile(samples, 0.99), maxMs: Math.max(...samples),
    detectP50Ms: quantile(detect, 0.5), detectP99Ms: quantile(detect, 0.99), detectMs: detect.map((d) => Math.round(d * 100) / 100),
    warmHistoryP50Ms: quantile(samples.slice(HELD), 0.5), warmHistoryP99Ms: quantile(samples.slice(HELD), 0.99), errors,
  };
}

async function probePath(ctx: Context, wakes: number): Promise<WakeResult> {
  const backendPort = await freePort();
  const yaml = wakeConfig(backendPort);
  const child = await startSmartProxy(ctx, 'wake-probe', yaml);
  const url = `${child.url}/smart_proxy/wake/-/`;
  const samples: number[] = [];
  const detect: number[] = [];
  let errors = 0;
  let loop: Stats['loopDelayMs'];
  try {
    for (let i = 0; i < wakes; i++) {
      const server: Server = createServer((_req, res) => res.end('ok'));
      const pending = Array.from({ length: HELD }, () => get(url));
      await waitHeld(child, HELD);
      // A random pause, so that T falls anywhere within the probe schedule.
      await new Promise((r) => setTimeout(r, Math.random() * 40));
      const t = nowMs();
      server.listen(backendPort, '127.0.0.1');
      for (const r of await Promise.all(pending)) {
        if (r.status !== 200) errors++;
        samples.push(r.at - t);
      }
      detect.push((await ask<Stats>(child.ipc, { type: 'stats' }, 'stats')).readyAt.wake!.at(-1)! - t);
      await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); });
      await ask(child.ipc, { type: 'stop-all' }, 'stopped');
    }
    loop = (await ask<Stats>(child.ipc, { type: 'stats' }, 'stats')).loopDelayMs;
  } finally {
    await child.stop();
  }
  return summarise('probe', wakes, samples, detect, errors, loop);
}

/** With `firstBoots`, wake i is of resource `wake{i}`, which has never booted. */
async function providerPath(ctx: Context, wakes: number, firstBoots: boolean): Promise<WakeResult> {
  const yaml = wakeConfig(ctx.upstreamPort, firstBoots ? wakes : 0);
  const child = await startSmartProxy(ctx, firstBoots ? 'wake-first-boot' : 'wake-provider', yaml, ['--switch', 'up', '--boot-ms', '300', '--boot-jitter-ms', '50']);
  const samples: number[] = [];
  const detect: number[] = [];
  let errors = 0;
  let loop: Stats['loopDelayMs'];
  try {
    for (let i = 0; i < wakes; i++) {
      const id = firstBoots ? `wake${i}` : 'wake';
      const url = `${child.url}/smart_proxy/${id}/-/`;
      const results = await Promise.all(Array.from({ length: HELD }, () => get(url)));
      const s = await ask<Stats>(child.ipc, { type: 'stats' }, 'stats');
      const t = s.flips.at(-1)!;
      detect.push(s.readyAt[id]!.at(-1)! - t);
      for (const r of results) {
        if (r.status !== 200) errors++;
        samples.push(r.at - t);
      }
      await ask(child.ipc, { type: 'stop-all' }, 'stopped');
    }
    loop = (await ask<Stats>(child.ipc, { type: 'stats' }, 'stats')).loopDelayMs;
  } finally {
    await child.stop();
  }
  return summarise(firstBoots ? 'first-boot' : 'provider', wakes, samples, detect, errors, loop);
}

export async function runWake(ctx: Context): Promise<WakeResult[]> {
  const wakes = ctx.quick ? 15 : 50;
  ctx.log(`wake latency, probe path: ${wakes} wakes × ${HELD} held`);
  const probe = await probePath(ctx, wakes);
  ctx.log(`  p50 ${probe.p50Ms.toFixed(1)} ms, p99 ${probe.p99Ms.toFixed(1)} ms (T → ready p50 ${probe.detectP50Ms.toFixed(1)} ms), errors ${probe.errors}`);
  ctx.log(`wake latency, provider path (boot 300 ± 50 ms): ${wakes} wakes × ${HELD} held`);
  const provider = await providerPath(ctx, wakes, false);
  ctx.log(`  p50 ${provider.p50Ms.toFixed(1)} ms, p99 ${provider.p99Ms.toFixed(1)} ms (T → ready p50 ${provider.detectP50Ms.toFixed(1)} ms), errors ${provider.errors}`);
  ctx.log(`wake latency, provider path, first boots only (boot 300 ± 50 ms, no history): ${wakes} resources × ${HELD} held`);
  const first = await providerPath(ctx, wakes, true);
  ctx.log(`  p50 ${first.p50Ms.toFixed(1)} ms, p99 ${first.p99Ms.toFixed(1)} ms (T → ready p50 ${first.detectP50Ms.toFixed(1)} ms), errors ${first.errors}`);
  return [probe, provider, first];
}
