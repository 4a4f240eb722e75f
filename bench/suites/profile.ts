/**
 * `npm run bench -- --profile`: runs Smart Proxy's warm path and the bare proxy under wrk with
 * `node --cpu-prof`, then prints where the CPU went (self time by function and by file).
 * The .cpuprofile files stay in bench/out/work/ for Chrome DevTools or speedscope.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIR, startSmartProxy, type Context } from '../lib/context.ts';
import { freePort, spawnPinned, waitForHttp } from '../lib/procs.ts';
import { wrk } from '../lib/wrk.ts';
import { BENCH_HEADERS, BENCH_PATH, smartProxyYaml } from './throughput.ts';

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

export async function runProfile(ctx: Context): Promise<void> {
  const dir = ctx.workDir;
  const flags = ['--cpu-prof', `--cpu-prof-dir=${dir}`];
  const up = `http://127.0.0.1:${ctx.upstreamPort}`;
  const durationS = 15;
  const out: string[] = [];
  for (const engine of ['request', 'dispatch']) {
    const port = await freePort();
    const t0 = performance.now();
    const bare = spawnPinned(`bare-${engine}-prof`, process.execPath, [...flags, `--cpu-prof-name=bare-${engine}.cpuprofile`, join(BENCH_DIR, 'bare-proxy.ts'), String(port), up, engine], {
      cpu: ctx.proxyCpu, logFile: join(dir, `bare-${engine}-prof.log`),
    });
    await waitForHttp(`http://127.0.0.1:${port}/`);
    ctx.log(`profiling the bare ${engine}() proxy (${durationS} s under wrk, after 3 s of warm-up)`);
    await wrk({ url: `http://127.0.0.1:${port}${BENCH_PATH}`, durationS: 3, connections: 50, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
    const skipMs = performance.now() - t0;
    const r = await wrk({ url: `http://127.0.0.1:${port}${BENCH_PATH}`, durationS, connections: 50, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
    await bare.stop();
    out.push(`\n== bare ${engine}() proxy\n${summariseProfile(join(dir, `bare-${engine}.cpuprofile`), skipMs, r.requests)}`);
  }
  const t0 = performance.now();
  const smart = await startSmartProxy(ctx, 'smart-prof', smartProxyYaml(ctx.upstreamPort), [], [...flags, '--cpu-prof-name=smart.cpuprofile']);
  ctx.log(`profiling Smart Proxy (${durationS} s under wrk, after 3 s of warm-up)`);
  await wrk({ url: smart.url + BENCH_PATH, durationS: 3, connections: 50, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
  const skipMs = performance.now() - t0;
  const r = await wrk({ url: smart.url + BENCH_PATH, durationS, connections: 50, cpu: ctx.loadCpu, headers: BENCH_HEADERS });
  await smart.stop();
  out.push(`\n== Smart Proxy\n${summariseProfile(join(dir, 'smart.cpuprofile'), skipMs, r.requests)}`);
  process.stdout.write(out.join(''));
}
