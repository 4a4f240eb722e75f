/**
 * `npm run bench -- --profile`: runs Smart Proxy's warm path and the bare proxy under wrk with
 * `node --cpu-prof`, then prints where the CPU went (self time by function and by file).
 * The .cpuprofile files stay in bench/out/work/ for Chrome DevTools or speedscope.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIR, startSmartProxy, type Context } from '../lib/context.ts';
import { freePort, spawnPinned, waitForHttp } from '../lib/procs.ts';
import { wrk } from '../lib/wrk.ts';
import { BENCH_PATH, smartProxyYaml } from './throughput.ts';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface CpuProfile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }

export function summariseProfile(file: string, top = 30): string {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
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
    .map(([k, us]) => `${((us / total) * 100).toFixed(1).padStart(5)} %  ${k}`).join('\n');
  return `self time by function (top ${top}):\n${rows(byFn, top)}\n\nself time by file:\n${rows(byFile, 15)}\n`;
}

export async function runProfile(ctx: Context): Promise<void> {
  const dir = ctx.workDir;
  const flags = ['--cpu-prof', `--cpu-prof-dir=${dir}`];
  const barePort = await freePort();
  const up = `http://127.0.0.1:${ctx.upstreamPort}`;
  const bare = spawnPinned('bare-prof', process.execPath, [...flags, '--cpu-prof-name=bare.cpuprofile', join(BENCH_DIR, 'bare-proxy.ts'), String(barePort), up], {
    cpu: ctx.proxyCpu, logFile: join(dir, 'bare-prof.log'),
  });
  await waitForHttp(`http://127.0.0.1:${barePort}/`);
  ctx.log('profiling the bare proxy (10 s under wrk)');
  await wrk({ url: `http://127.0.0.1:${barePort}${BENCH_PATH}`, durationS: 10, connections: 50, cpu: ctx.loadCpu });
  await bare.stop();
  const smart = await startSmartProxy(ctx, 'smart-prof', smartProxyYaml(ctx.upstreamPort), [], [...flags, '--cpu-prof-name=smart.cpuprofile']);
  ctx.log('profiling Smart Proxy (10 s under wrk)');
  await wrk({ url: smart.url + BENCH_PATH, durationS: 10, connections: 50, cpu: ctx.loadCpu });
  await smart.stop();
  for (const name of ['bare.cpuprofile', 'smart.cpuprofile']) {
    if (!readdirSync(dir).includes(name)) throw new Error(`${name} was not written`);
    process.stdout.write(`\n== ${name}\n${summariseProfile(join(dir, name))}`);
  }
}
