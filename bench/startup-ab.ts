/**
 * Start-up side by side: process start → listening of two (or more) checkouts of Smart Proxy,
 * each through its own Smart Proxy child (config file → startApp; bench/smart-proxy-child-entry.js,
 * or the .ts in a checkout without that plain-JavaScript entry), on the same
 * generated configs (the many suite's: N resources, each with an inline static provider).
 * Starts alternate between the variants (ABAB…, reversed every other round) after one
 * discarded warm-up start each (which also fills a compile cache); reported per variant:
 * the median start-up, the median CPU time (all threads, read from /proc at 'ready'), and the
 * median of each round's ratio to the first variant.
 *
 * usage: node bench/startup-ab.ts [--rounds 9] [--resources 1,10000] LABEL=DIR[,ENV=VALUE…] …
 *   e.g. git worktree add /tmp/sp-before <commit>
 *        node bench/startup-ab.ts before=/tmp/sp-before after=.
 * Each variant gets a compile cache of its own (SMART_PROXY_COMPILE_CACHE, unless given);
 * SMART_PROXY_COMPILE_CACHE=fresh gives every start a new, empty one (a first start).
 */
import { fork } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { median } from './lib/stats.ts';
import { smartProxyChild, type ReadyMessage } from './lib/context.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { rounds: { type: 'string', default: '9' }, resources: { type: 'string', default: '1,10000' } },
});
if (positionals.length === 0) throw new Error('usage: node bench/startup-ab.ts [--rounds N] [--resources 1,10000] LABEL=DIR[,ENV=VALUE…] …');
const work = join(tmpdir(), `sp-startup-ab-${process.pid}`);
mkdirSync(work, { recursive: true });
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

interface Variant { label: string; dir: string; env: Record<string, string>; rows: Array<ReadyMessage & { cpuMs: number }> }
const variants: Variant[] = positionals.map((spec, i) => {
  const [label, rest] = spec.split(/=(.*)/s) as [string, string | undefined];
  if (rest === undefined) throw new Error(`"${spec}": expected LABEL=DIR[,ENV=VALUE…]`);
  const [dir, ...envs] = rest.split(',');
  const env = Object.fromEntries(envs.map((e) => e.split(/=(.*)/s).slice(0, 2) as [string, string]));
  return { label, dir: resolve(dir!), env: { SMART_PROXY_COMPILE_CACHE: join(work, `compile-cache-${i}`), ...env }, rows: [] };
});

function yamlFor(count: number, name: string): string {
  const lines = ['listen: { host: 127.0.0.1, port: 0 }', 'log: { level: warn }', 'resourceDefaults: { access: { public: true } }', 'resources:'];
  for (let i = 1; i <= count; i++) lines.push(`  r${i}:`, '    provider:', '      kind: static', '      endpoint: "http://127.0.0.1:9"');
  return `${lines.join('\n')}\nstate: { kind: sqlite, path: "${join(work, `${name}.sqlite`)}" }\n`;
}

/** CPU time of a process so far (user + system, all its threads), ms. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

let starts = 0;

async function startOnce(v: Variant, config: string): Promise<ReadyMessage & { cpuMs: number }> {
  const env: NodeJS.ProcessEnv = { ...process.env, SMART_PROXY_CONFIG_CACHE: 'off', ...v.env };
  if (env.SMART_PROXY_COMPILE_CACHE === 'fresh') env.SMART_PROXY_COMPILE_CACHE = join(work, `fresh-compile-cache-${++starts}`);
  const child = fork(smartProxyChild(v.dir), ['--config', config], {
    env, stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    return await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${v.label}: no 'ready' within 60 s`)), 60_000);
      child.on('message', (m: ReadyMessage) => {
        if (m.type !== 'ready') return;
        clearTimeout(timer);
        res({ ...m, cpuMs: cpuMs(child.pid!) });
      });
      void exited.then(() => { clearTimeout(timer); rej(new Error(`${v.label}: exited before 'ready'`)); });
    });
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
}

for (const count of values.resources.split(',').map(Number)) {
  const config = join(work, `r${count}.yaml`);
  writeFileSync(config, yamlFor(count, `r${count}`));
  for (const v of variants) {
    v.rows = [];
    await startOnce(v, config);
  }
  const rounds = Number(values.rounds);
  for (let i = 0; i < rounds; i++) for (const v of i % 2 === 0 ? variants : [...variants].reverse()) v.rows.push(await startOnce(v, config));
  const base = variants[0]!;
  for (const v of variants) {
    const ratio = (f: (r: ReadyMessage & { cpuMs: number }) => number): string => median(v.rows.map((r, i) => f(r) / f(base.rows[i]!))).toFixed(2);
    process.stdout.write(`${String(count).padStart(6)} resources  ${v.label.padEnd(12)} start-up ${median(v.rows.map((r) => r.startupMs)).toFixed(0).padStart(5)} ms  CPU ${median(v.rows.map((r) => r.cpuMs)).toFixed(0).padStart(5)} ms  config ${median(v.rows.map((r) => r.parseMs)).toFixed(0).padStart(4)} ms  startApp ${median(v.rows.map((r) => r.appMs)).toFixed(0).padStart(4)} ms  vs ${base.label}: ${ratio((r) => r.startupMs)}× start-up, ${ratio((r) => r.cpuMs)}× CPU\n`);
  }
}
