/**
 * Smart Proxy as a user runs it (config file → startApp from src/main.ts), in a child process
 * that the benchmark drives over IPC. The hooks below observe; they do not change the data
 * plane: every named `static` provider is wrapped to count its calls, and `--switch NAME`
 * replaces provider NAME by one whose instances say `starting` until a known instant (IPC
 * "flip", or `--boot-ms` after the start call), then `running` at that provider's endpoint.
 *
 * usage: node bench/smart-proxy-child-entry.js --config FILE [--switch NAME] [--boot-ms N] [--boot-jitter-ms N]
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { enableStartupCompileCache, flushStartupCompileCache } from '../src/config/compile-cache.js';
import type { InspectResult, InstanceRef, Provider, StartResult } from '../src/core/ports.ts';
import { heapCounts } from './lib/heap-counts.ts';

// As bin/smart-proxy.js does: the compile cache first, then the proxy's code ($SMART_PROXY_COMPILE_CACHE).
// Started by its plain-JavaScript entry (smart-proxy-child-entry.js), as the bench does, it is on already.
enableStartupCompileCache();
const { loadConfigFile } = await import('../src/config/load.ts');
const { startApp } = await import('../src/main.ts');
const { createStaticProvider } = await import('../src/providers/static/static-provider.ts');

const nowMs = (): number => performance.timeOrigin + performance.now();

const { values } = parseArgs({
  options: {
    config: { type: 'string' },
    switch: { type: 'string' },
    'boot-ms': { type: 'string' },
    'boot-jitter-ms': { type: 'string', default: '0' },
  },
});
if (values.config === undefined) throw new Error('--config FILE is required');

interface Calls { start: number; inspect: number; stop: number }
/** Provider calls, by provider name. */
const calls: Record<string, Calls> = {};
/** Instants (epoch ms) at which a switched instance turned running. */
const flips: number[] = [];
/** Instants (epoch ms) at which the manager declared an instance ready, by resource id. */
const readyAt: Record<string, number[]> = {};

function counted(inner: Provider, c: Calls): Provider {
  return {
    kind: inner.kind,
    start(ref, signal) { c.start++; return inner.start(ref, signal); },
    inspect(ref, signal) { c.inspect++; return inner.inspect(ref, signal); },
    stop(ref, signal) { c.stop++; return inner.stop(ref, signal); },
  };
}

/** Deterministic jitter (mulberry32), so two runs boot alike. */
let seed = 7;
function rand(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

interface SwitchState { readyAtMs: number; flipped: boolean }
const switched = new Map<string, SwitchState>();
let flipAll = false;

function switchable(endpoint: string, bootMs: number | undefined, jitterMs: number, c: Calls): Provider {
  const key = (ref: InstanceRef): string => `${ref.resourceId}\u0000${ref.instanceKey}`;
  return {
    kind: 'switch',
    async start(ref): Promise<StartResult> {
      c.start++;
      if (!switched.has(key(ref))) {
        const boot = bootMs === undefined ? Infinity : bootMs + (rand() * 2 - 1) * jitterMs;
        switched.set(key(ref), { readyAtMs: nowMs() + boot, flipped: false });
      }
      return {};
    },
    async inspect(ref): Promise<InspectResult> {
      c.inspect++;
      const s = switched.get(key(ref));
      if (s === undefined) return { state: 'stopped' };
      if (!s.flipped && (flipAll || nowMs() >= s.readyAtMs)) {
        s.flipped = true;
        // With a timed boot the instant is exact; with a flip it is when the flip arrived.
        flips.push(Number.isFinite(s.readyAtMs) ? s.readyAtMs : flipAt);
      }
      return s.flipped ? { state: 'running', endpoint } : { state: 'starting' };
    },
    async stop(ref): Promise<void> {
      c.stop++;
      switched.delete(key(ref));
    },
  };
}
let flipAt = 0;

const t0 = performance.now();
const config = await loadConfigFile(values.config);
const parseMs = performance.now() - t0;
const providers = new Map<string, Provider>();
for (const [name, p] of Object.entries(config.providers)) {
  const c: Calls = (calls[name] = { start: 0, inspect: 0, stop: 0 });
  if (name === values.switch && p.kind === 'static') {
    providers.set(name, switchable(p.endpoint, values['boot-ms'] === undefined ? undefined : Number(values['boot-ms']), Number(values['boot-jitter-ms']), c));
  } else if (p.kind === 'static') {
    providers.set(name, counted(createStaticProvider({ endpoint: p.endpoint }), c));
  }
}
const t1 = performance.now();
const app = await startApp(config, { providers });
const appMs = performance.now() - t1;
app.manager.onEvent((e) => {
  if (e.type === 'boot-finished') (readyAt[e.instance.resource.id] ??= []).push(nowMs());
});

// How late this process's timers fire: the scheduling noise every latency figure here includes.
// The histogram holds the time between two ticks of a 10 ms timer: lateness is that minus 10 ms.
const LOOP_RESOLUTION_MS = 10;
const loopDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
loopDelay.enable();
const late = (ns: number): number => Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS);
const loopMs = (): { p50: number; p99: number; max: number } => ({
  p50: late(loopDelay.percentile(50)), p99: late(loopDelay.percentile(99)), max: late(loopDelay.max),
});

type Msg = { type: 'stats' } | { type: 'stop-all' } | { type: 'flip' } | { type: 'gc' } | { type: 'heap-counts' };
process.on('message', (msg: Msg) => {
  switch (msg.type) {
    case 'stats':
      process.send?.({ type: 'stats', heldTotal: app.manager.heldTotal, calls, flips, readyAt, rssBytes: process.memoryUsage.rss(), loopDelayMs: loopMs() });
      break;
    case 'flip':
      flipAt = nowMs();
      flipAll = true;
      process.send?.({ type: 'flipped', at: flipAt });
      break;
    case 'stop-all':
      flipAll = false;
      void Promise.all([...app.manager.allInstances()].map((i) => app.manager.stop(i, 'benchmark'))).then(() => {
        process.send?.({ type: 'stopped' });
      });
      break;
    case 'heap-counts':
      void heapCounts().then((counts) => process.send?.({ type: 'heap-counts', counts, ...process.memoryUsage() }));
      break;
    case 'gc':
      (globalThis as { gc?: () => void }).gc?.();
      process.send?.({ type: 'gc-done', ...process.memoryUsage() });
      break;
  }
});
process.once('SIGTERM', () => {
  void app.close().finally(() => process.exit(0));
});
const cpu = process.cpuUsage();
process.send?.({ type: 'ready', url: app.proxyUrl, startupMs: performance.now(), startupCpuMs: (cpu.user + cpu.system) / 1000, parseMs, appMs, rssBytes: process.memoryUsage.rss() });
// Listening (as the CLI, which flushes after startApp): what start-up compiled is written now.
flushStartupCompileCache();
