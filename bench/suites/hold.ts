/**
 * Holding at scale: N requests (10,000) held on one cold resource, sent by a load generator
 * in its own process; then the provider flips to running. Reports provider starts, RSS per
 * held request, time from the flip (and from readiness) to the last response, and errors;
 * twice, with a client that closes each connection after its answer and with one that keeps
 * them open, each beside the bare forwarding floor with the same client.
 */
import { join } from 'node:path';
import { BENCH_DIR, startSmartProxy, type Context } from '../lib/context.ts';
import { ask, nextMessage, type Message } from '../lib/ipc.ts';
import { cpuTimeMs, rssBytes, spawnPinned } from '../lib/procs.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';

export interface HoldResult {
  readonly held: number;
  readonly releaseRamp: string;
  readonly providerStarts: number;
  readonly rssBeforeBytes: number;
  readonly rssHeldBytes: number;
  readonly rssPerHeldBytes: number;
  /** Of which live JS heap (after a GC) and memory outside the heap that V8 knows of (buffers). */
  readonly heapPerHeldBytes: number;
  readonly externalPerHeldBytes: number;
  /** Time for the load generator to get all N requests into the proxy, ms. */
  readonly holdRampMs: number;
  /** Flip → the proxy declares the instance ready (poll + probe), ms. */
  readonly flipToReadyMs: number;
  /** Readiness → the first and the last response at the client, ms. */
  readonly readyToFirstMs: number;
  readonly readyToLastMs: number;
  readonly flipToLastMs: number;
  /** CPU time the proxy spent from the flip to the last response, per released request, µs. */
  readonly releaseCpuUsPerRequest: number;
  /** Share of its CPU the proxy got meanwhile (CPU time / wall time): below 100 % it waited for the core. */
  readonly releaseCpuSharePct: number;
  /**
   * The same hold on a bare forwarding proxy (node:http + one undici Pool, bench/hold-floor.ts
   * --forward) that answers nothing until told, then forwards all to the same upstream with
   * the same ramp (64 in flight): Node's own floor, for the memory and for the release.
   */
  readonly floorRssPerHeldBytes: number;
  readonly floorHeapPerHeldBytes: number;
  // Absent in results written before the floor forwarded.
  readonly floorReadyToLastMs?: number;
  readonly floorReleaseCpuUsPerRequest?: number;
  /**
   * The same release with a client that keeps its connections open (the fields above are
   * with `connection: close`): no TCP teardown per answer. Absent in earlier results.
   */
  readonly keepAlive?: HoldReleaseRun;
  readonly statuses: Record<string, number>;
  readonly errors: Record<string, number>;
  readonly errorCount: number;
}

interface Stats extends Message { heldTotal: number; calls: Record<string, { start: number }>; readyAt: Record<string, number[]>; rssBytes: number }
interface Memory extends Message { heapUsed: number; external: number; arrayBuffers: number }
interface Done extends Message { statuses: Record<string, number>; errors: Record<string, number>; doneAt: number[] }

/**
 * The hold setup's config: `cold`, whose provider the child switches (`--switch up`), and a
 * `warmup` resource to load the code paths first; room for 20,000 held requests.
 */
export function holdYaml(upstreamPort: number, bootTimeoutMs: number, releaseConcurrency?: number): string {
  return `listen: { host: 127.0.0.1, port: 0 }
log: { level: warn }
limits: { maxHeldRequests: 20000, maxHeldRequestsPerResource: 20000 }
providers:
  up: { kind: static, endpoint: "http://127.0.0.1:${upstreamPort}" }
  warm: { kind: static, endpoint: "http://127.0.0.1:${upstreamPort}" }
resourceDefaults: { access: { public: true } }
resources:
  cold: { provider: up, bootTimeoutMs: ${bootTimeoutMs}${releaseConcurrency === undefined ? '' : `, releaseConcurrency: ${releaseConcurrency}`} }
  warmup: { provider: warm }
`;
}

/**
 * One release with a given kind of client: `close` sends `connection: close` (a TCP teardown
 * per answer, inside the release), `keep-alive` keeps its connections open after the answer,
 * as browsers and most API clients do.
 */
export type HoldClientKind = 'close' | 'keep-alive';

/** A release measured with the keep-alive client, Smart Proxy and the floor side by side. */
export interface HoldReleaseRun {
  readonly client: HoldClientKind;
  readonly providerStarts: number;
  readonly readyToFirstMs: number;
  readonly readyToLastMs: number;
  readonly releaseCpuUsPerRequest: number;
  readonly releaseCpuSharePct: number;
  readonly floorReadyToLastMs: number;
  readonly floorReleaseCpuUsPerRequest: number;
  readonly errorCount: number;
}

/** The load generator's arguments for a kind of client (bench/hold-client.ts). */
function clientArgs(url: string, n: number, client: HoldClientKind): string[] {
  return [join(BENCH_DIR, 'hold-client.ts'), '--url', url, '--count', String(n), ...(client === 'keep-alive' ? ['--keep-alive'] : [])];
}

function errorsOf(outcome: Done): number {
  return Object.values(outcome.errors).reduce((a, b) => a + b, 0)
    + Object.entries(outcome.statuses).filter(([s]) => s !== '200').reduce((a, [, c]) => a + c, 0);
}

export async function runHold(ctx: Context): Promise<HoldResult> {
  const n = 10_000;
  ctx.log(`holding: ${n} requests on one cold resource (client: connection: close)`);
  const close = await holdSmartProxy(ctx, n, 'close');
  const floor = await holdFloor(ctx, n, 'close');
  // The same release with clients that keep their connections: Smart Proxy, then the floor.
  ctx.log(`holding: ${n} requests on one cold resource (client: keep-alive)`);
  const ka = await holdSmartProxy(ctx, n, 'keep-alive');
  const kaFloor = await holdFloor(ctx, n, 'keep-alive');
  const result: HoldResult = {
    ...close.result,
    ...floor,
    keepAlive: {
      client: 'keep-alive',
      providerStarts: ka.result.providerStarts,
      readyToFirstMs: ka.result.readyToFirstMs,
      readyToLastMs: ka.result.readyToLastMs,
      releaseCpuUsPerRequest: ka.result.releaseCpuUsPerRequest,
      releaseCpuSharePct: ka.result.releaseCpuSharePct,
      floorReadyToLastMs: kaFloor.floorReadyToLastMs,
      floorReleaseCpuUsPerRequest: kaFloor.floorReleaseCpuUsPerRequest,
      errorCount: ka.result.errorCount,
    },
    errorCount: close.result.errorCount,
  };
  if (floor.errorCount + kaFloor.errorCount > 0) ctx.log(`  the floor's clients met errors: ${floor.errorCount} (close), ${kaFloor.errorCount} (keep-alive)`);
  for (const [kind, sp, fl] of [['close', result, floor], ['keep-alive', result.keepAlive!, kaFloor]] as const) {
    ctx.log(`  ${kind}: bare forwarding proxy (node:http + undici) release ready→last ${fl.floorReadyToLastMs.toFixed(0)} ms, ${fl.floorReleaseCpuUsPerRequest.toFixed(0)} µs CPU per request; Smart Proxy ready→last ${sp.readyToLastMs.toFixed(0)} ms, ${sp.releaseCpuUsPerRequest.toFixed(0)} µs CPU per request, ${sp.releaseCpuSharePct.toFixed(0)} % of the core`);
  }
  ctx.log(`  starts ${result.providerStarts}, ${(result.rssPerHeldBytes / 1024).toFixed(1)} KB RSS per held request (heap ${(result.heapPerHeldBytes / 1024).toFixed(1)} KB, external ${(result.externalPerHeldBytes / 1024).toFixed(1)} KB; floor ${(result.floorRssPerHeldBytes / 1024).toFixed(1)} KB, heap ${(result.floorHeapPerHeldBytes / 1024).toFixed(1)} KB), flip→ready ${result.flipToReadyMs.toFixed(0)} ms, errors ${result.errorCount}`);
  return result;
}

/** Smart Proxy holding N requests of one kind of client, then releasing them. */
async function holdSmartProxy(ctx: Context, n: number, kind: HoldClientKind): Promise<{ result: Omit<HoldResult, 'floorRssPerHeldBytes' | 'floorHeapPerHeldBytes'> }> {
  const yaml = holdYaml(ctx.upstreamPort, 120_000);
  const child = await startSmartProxy(ctx, `hold-${kind}`, yaml, ['--switch', 'up'], ['--expose-gc']);
  try {
    // Load the code paths first, so the baseline is the proxy at work, not a fresh process.
    for (let i = 0; i < 200; i++) await (await fetch(`${child.url}/smart_proxy/warmup/-/`)).arrayBuffer();
    const memBefore = await ask<Memory>(child.ipc, { type: 'gc' }, 'gc-done');
    const rssBeforeBytes = rssBytes(child.pid);

    const t0 = performance.now();
    const client = spawnPinned(`hold-client-${kind}`, process.execPath, clientArgs(`${child.url}/smart_proxy/cold/-/`, n, kind), {
      cpu: ctx.loadCpu, logFile: join(ctx.workDir, `hold-client-${kind}.log`), ipc: true,
    });
    const done = nextMessage<Done>(client.child, 'done', 300_000);
    await nextMessage(client.child, 'sent', 120_000);
    for (;;) {
      const s = await ask<Stats>(child.ipc, { type: 'stats' }, 'stats');
      if (s.heldTotal >= n) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const holdRampMs = performance.now() - t0;
    const memHeld = await ask<Memory>(child.ipc, { type: 'gc' }, 'gc-done');
    const rssHeldBytes = rssBytes(child.pid);
    const cpuBefore = cpuTimeMs(child.pid);
    const flipped = await ask<Message & { at: number }>(child.ipc, { type: 'flip' }, 'flipped');
    const outcome = await done;
    // Read before the client stops: a keep-alive client's connections close after this.
    const cpuUsed = cpuTimeMs(child.pid) - cpuBefore;
    await client.stop();
    const stats = await ask<Stats>(child.ipc, { type: 'stats' }, 'stats');
    const ready = stats.readyAt.cold![0]!;
    const times = outcome.doneAt.sort((a, b) => a - b);
    return {
      result: {
        held: n,
        releaseRamp: 'on (releaseConcurrency 64, the default)',
        providerStarts: stats.calls.up!.start,
        rssBeforeBytes, rssHeldBytes,
        rssPerHeldBytes: (rssHeldBytes - rssBeforeBytes) / n,
        heapPerHeldBytes: (memHeld.heapUsed - memBefore.heapUsed) / n,
        externalPerHeldBytes: (memHeld.external - memBefore.external) / n,
        holdRampMs,
        flipToReadyMs: ready - flipped.at,
        readyToFirstMs: times[0]! - ready,
        readyToLastMs: times.at(-1)! - ready,
        flipToLastMs: times.at(-1)! - flipped.at,
        releaseCpuUsPerRequest: (cpuUsed * 1000) / n,
        releaseCpuSharePct: (cpuUsed / (times.at(-1)! - flipped.at)) * 100,
        statuses: outcome.statuses, errors: outcome.errors, errorCount: errorsOf(outcome),
      },
    };
  } finally {
    await child.stop();
  }
}

/**
 * Node's own cost of N open requests and of forwarding them all (bench/hold-floor.ts
 * --forward), same client, same upstream, same release ramp.
 */
async function holdFloor(ctx: Context, n: number, kind: HoldClientKind): Promise<{
  floorRssPerHeldBytes: number; floorHeapPerHeldBytes: number; floorReadyToLastMs: number; floorReleaseCpuUsPerRequest: number; errorCount: number;
}> {
  // With the launchers' V8 flags, as Smart Proxy has them: the same runtime underneath.
  const floor = spawnPinned(`hold-floor-${kind}`, process.execPath, ['--expose-gc', ...NODE_FLAGS, join(BENCH_DIR, 'hold-floor.ts'), '--forward', `http://127.0.0.1:${ctx.upstreamPort}`, '--concurrency', '64'], {
    cpu: ctx.proxyCpu, logFile: join(ctx.workDir, `hold-floor-${kind}.log`), ipc: true,
  });
  try {
    const { port } = await nextMessage<Message & { port: number }>(floor.child, 'ready');
    const before = await ask<Memory>(floor.child, { type: 'gc' }, 'gc-done');
    const rssBefore = rssBytes(floor.pid);
    const client = spawnPinned(`hold-floor-client-${kind}`, process.execPath, clientArgs(`http://127.0.0.1:${port}/`, n, kind), {
      cpu: ctx.loadCpu, logFile: join(ctx.workDir, `hold-floor-client-${kind}.log`), ipc: true,
    });
    const done = nextMessage<Done>(client.child, 'done', 300_000);
    await nextMessage(client.child, 'sent', 120_000);
    while ((await ask<Message & { count: number }>(floor.child, { type: 'held' }, 'held')).count < n) await new Promise((r) => setTimeout(r, 10));
    const heldMem = await ask<Memory>(floor.child, { type: 'gc' }, 'gc-done');
    const rssHeld = rssBytes(floor.pid);
    const cpuBefore = cpuTimeMs(floor.pid);
    const released = await ask<Message & { at: number }>(floor.child, { type: 'release' }, 'released');
    const outcome = await done;
    const cpuUsed = cpuTimeMs(floor.pid) - cpuBefore;
    await client.stop();
    return {
      floorRssPerHeldBytes: (rssHeld - rssBefore) / n,
      floorHeapPerHeldBytes: (heldMem.heapUsed - before.heapUsed) / n,
      floorReadyToLastMs: Math.max(...outcome.doneAt) - released.at,
      floorReleaseCpuUsPerRequest: (cpuUsed * 1000) / n,
      errorCount: errorsOf(outcome),
    };
  } finally {
    await floor.stop();
  }
}
