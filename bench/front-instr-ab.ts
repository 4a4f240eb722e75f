/**
 * nginx instructions per warm request under callgrind for front-proxy configs side by side,
 * in interleaved rounds: `plain` (nginx's proxy_pass), `lua` (the config `--cache lua`
 * generates now), and saved snippets of earlier or hand-edited configs. One Smart Proxy (the
 * front suite's, bearer token, static backend) decides for all of them. Each measurement is
 * the front suite's `instructionsPerRequest` (10 connections, counters zeroed after a warm-up).
 *
 * usage: node bench/front-instr-ab.ts [--rounds N] [--save FILE] ITEM...
 *   ITEM: plain | lua | FILE (a snippet saved with --save, possibly edited)
 *   --save FILE: write the current `--cache lua` snippet, ports and names as placeholders
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Context } from './lib/context.ts';
import { extraCacheDir, frontConf, plainProxyConf, startFrontMode } from './lib/front.ts';
import { startNginxUpstream } from './lib/nginx.ts';
import { freePort } from './lib/procs.ts';
import { instructionsPerRequest } from './suites/front.ts';
import { BENCH_HEADERS, BENCH_PATH, smartProxyYaml } from './suites/throughput.ts';

const { values, positionals: items } = parseArgs({ options: { rounds: { type: 'string', default: '1' }, save: { type: 'string' } }, allowPositionals: true });
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1 || items.length === 0) {
  process.stderr.write('usage: node bench/front-instr-ab.ts [--rounds N] [--save FILE] plain|lua|FILE...\n');
  process.exit(2);
}
const workDir = join(import.meta.dirname, 'out', 'front-instr-ab');
rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });
const upstreamPort = await freePort();
const upstream = await startNginxUpstream(workDir, upstreamPort, '1');
const ctx: Context = { quick: true, workDir, proxyCpu: '0', loadCpu: '1', upstreamPort, log: (m) => process.stderr.write(`${m}\n`) };
const lua = await startFrontMode(ctx, smartProxyYaml(upstreamPort), BENCH_PATH, BENCH_HEADERS, 'lua');
const results = new Map<string, number[]>();
try {
  // What a saved snippet names by value in this run: its ports, the decision and data plane
  // addresses, the static backend's upstream block and address.
  const probe = lua.snippetFor(11111, 22222, '/nonexistent');
  const decision = /upstream smart_proxy_decision \{\n\s+server ([^;]+);/.exec(probe)?.[1];
  const data = /upstream smart_proxy_data \{\n\s+server ([^;]+);/.exec(probe)?.[1];
  const block = /upstream ((?:smart_proxy|sp)_[0-9a-f]{10,12}) \{/.exec(probe)?.[1];
  if (decision === undefined || data === undefined || block === undefined) throw new Error('unexpected snippet');
  const backend = `127.0.0.1:${upstreamPort}`;
  const names: [string, string][] = [['11111', '@LISTEN@'], ['22222', '@CONTROL@'], [decision, '@DECISION@'], [data, '@DATA@'], [block, '@UPNAME@'], [backend, '@UPSTREAM@']];
  if (values.save !== undefined) writeFileSync(values.save, names.reduce((s, [v, p]) => s.replaceAll(v, p), probe));
  let n = 0;
  for (let r = 0; r < rounds; r++) {
    for (const item of items) {
      const [port, control] = [await freePort(), await freePort()];
      const name = `${item.replace(/[^a-z0-9]/gi, '_')}-${n++}`;
      const dir = join(workDir, `callgrind-${name}`);
      let conf: string;
      if (item === 'plain') {
        conf = plainProxyConf(dir, port, upstreamPort);
      } else {
        const cache = extraCacheDir(ctx, name);
        const snippet = item === 'lua' ? lua.snippetFor(port, control, cache)
          : [...names.slice(2), [String(port), '@LISTEN@'], [String(control), '@CONTROL@']].reduce((s, [v, p]) => s.replaceAll(p!, v!), readFileSync(item, 'utf8'));
        conf = frontConf(dir, snippet, lua.main);
      }
      const res = await instructionsPerRequest(ctx, name, conf, port);
      results.set(item, [...(results.get(item) ?? []), res.perReq]);
      process.stderr.write(`${item}: ${Math.round(res.perReq)} instructions per request (${res.requests} requests; ${dir})\n`);
    }
  }
} finally {
  await lua.stop();
  await upstream.stop();
}
for (const [item, v] of results) process.stdout.write(`${item}\t${v.map((x) => Math.round(x)).join('\t')}\n`);
