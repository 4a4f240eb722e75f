/**
 * `npm run bench -- --profile`: runs the bare dispatch() proxy and Smart Proxy's warm path
 * (public, bearer token, JWT) under wrk with `node --cpu-prof`, prints where the CPU went (self
 * time by function and by file) and draws the flame graphs (lib/flame.ts). The .cpuprofile
 * files stay in bench/out/work/ for Chrome DevTools or speedscope.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIR, startSmartProxy, type Context } from '../lib/context.ts';
import { freePort, spawnPinned, waitForHttp } from '../lib/procs.ts';
import { wrk } from '../lib/wrk.ts';
import { type FlamePanel, flameGraphSvg } from '../lib/flame.ts';
import { ACCESS_CASES, BENCH_HEADERS, BENCH_PATH, headersFor, SMART_ROWS, smartProxyYaml } from './throughput.ts';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface CpuProfile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }

/**
 * Self time by function and by file, as µs per request, counting only samples taken after
 * `skipMs` from the start of the profile (start-up and warm-up left out) and leaving out idle.
 */
export function summariseProfile(file: string, skipMs: number, requests: number, top = 30): string {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  let t = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i]!;
    const dt = prof.timeDeltas[i] ?? 0;
    t += dt;
    if (t < skipMs * 1000) continue;
    if (byId.get(id)?.callFrame.functionName === '(idle)') continue;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const byFn = new Map<string, number>();
  const byFile = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const f = byId.get(id)!.callFrame;
    const file = f.url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, '$1/').replace(/^node:/, 'node:') || '(native)';
    const key = `${f.functionName || '(anonymous)'}  ${file}:${f.lineNumber + 1}`;
    byFn.set(key, (byFn.get(key) ?? 0) + us);
    const fileKey = file.replace(/^(node_modules\/[^/]+).*/, '$1');
    byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + us);
  }
  const rows = (m: Map<string, number>, n: number): string => [...m].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([k, us]) => `${((us / total) * 100).toFixed(1).padStart(5)} %  ${(us / requests).toFixed(2).padStart(6)} µs/req  ${k}`).join('\n');
  return `busy ${(total / requests).toFixed(1)} µs per request (sampled, ${requests} requests)\nself time by function (top ${top}):\n${rows(byFn, top)}\n\nself time by file:\n${rows(byFile, 15)}\n`;
}

/** One profiled run: a process started with --cpu-prof, warmed up, then measured under wrk. */
async function profileOne(ctx: Context, name: string, start: (flags: string[]) => Promise<{ url: string; stop(): Promise<void> }>, headers: readonly string[], durationS: number): Promise<{ file: string; skipMs: number; requests: number }> {
  const file = join(ctx.workDir, `${name}.cpuprofile`);
  const t0 = performance.now();
  const proc = await start(['--cpu-prof', `--cpu-prof-dir=${ctx.workDir}`, `--cpu-prof-name=${name}.cpuprofile`]);
  ctx.log(`profiling ${name} (${durationS} s under wrk, after 3 s of warm-up)`);
  await wrk({ url: proc.url, durationS: 3, connections: 50, cpu: ctx.loadCpu, headers });
  const skipMs = performance.now() - t0;
  const r = await wrk({ url: proc.url, durationS, connections: 50, cpu: ctx.loadCpu, headers });
  await proc.stop();
  return { file, skipMs, requests: r.requests };
}

/**
 * Profiles the bare dispatch() proxy and Smart Proxy's three warm-path cases (public, bearer
 * token, JWT), prints self time by function and file for each, and draws them as flame
 * graphs at one scale into bench/out/flame.svg (docs/img/bench-flame.svg is a copy).
 */
export async function runProfile(ctx: Context): Promise<void> {
  const up = `http://127.0.0.1:${ctx.upstreamPort}`;
  const durationS = ctx.quick ? 8 : 15;
  const out: string[] = [];
  const panels: FlamePanel[] = [];
  const bare = await profileOne(ctx, 'bare-dispatch', async (flags) => {
    const port = await freePort();
    const p = spawnPinned('bare-dispatch-prof', process.execPath, [...flags, join(BENCH_DIR, 'bare-proxy.ts'), String(port), up, 'dispatch'], {
      cpu: ctx.proxyCpu, logFile: join(ctx.workDir, 'bare-dispatch-prof.log'),
    });
    const url = `http://127.0.0.1:${port}${BENCH_PATH}`;
    await waitForHttp(url);
    return { url, stop: () => p.stop() };
  }, BENCH_HEADERS, durationS);
  out.push(`\n== bare dispatch() proxy\n${summariseProfile(bare.file, bare.skipMs, bare.requests)}`);
  panels.push({ title: 'bare node:http + undici dispatch()', ...bare });
  for (const access of ACCESS_CASES) {
    const headers = await headersFor(access);
    const name = `smart-${access}`;
    const r = await profileOne(ctx, name, async (flags) => {
      const smart = await startSmartProxy(ctx, `${name}-prof`, smartProxyYaml(ctx.upstreamPort, access), [], flags);
      return { url: smart.url + BENCH_PATH, stop: () => smart.stop() };
    }, headers, durationS);
    out.push(`\n== ${SMART_ROWS[access].label}\n${summariseProfile(r.file, r.skipMs, r.requests)}`);
    panels.push({ title: SMART_ROWS[access].label, ...r });
  }
  const svg = flameGraphSvg(panels, `Warm path CPU per request, one scale (npm run bench -- --profile, ${new Date().toISOString().slice(0, 10)}); hover a frame for its µs`);
  writeFileSync(join(ctx.workDir, '..', 'flame.svg'), svg);
  out.push('\nwritten: bench/out/flame.svg (the .cpuprofile files are in bench/out/work/)\n');
  process.stdout.write(out.join(''));
}

