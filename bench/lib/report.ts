/** The results as one markdown page (bench/out/results.md; docs/benchmarks.md quotes it). */
import type { ContenderResult } from '../suites/throughput.ts';
import type { WakeResult } from '../suites/wake.ts';
import type { HoldResult } from '../suites/hold.ts';
import type { ManyCase } from '../suites/many.ts';
import type { ChurnResult } from '../suites/churn.ts';
import { fmt, median } from './stats.ts';

export interface Results {
  date: string;
  command: string;
  machine: { nproc: number; cpuModel: string; node: string; nginx: string; kernel: string };
  quick: boolean;
  durationS?: number;
  throughput?: ContenderResult[];
  wake?: WakeResult[];
  hold?: HoldResult;
  many?: ManyCase[];
  churn?: ChurnResult;
}

const mb = (b: number | undefined): string => (b === undefined ? '–' : fmt(b / 2 ** 20, 1));
const x = (n: number): string => (Number.isFinite(n) ? `${n.toFixed(2)}×` : '–');
const verdict = (ok: boolean): string => (ok ? 'met' : '**missed**');

export function renderMarkdown(r: Results): string {
  const out: string[] = [];
  out.push(`Run ${r.date} · \`${r.command}\` · ${r.machine.nproc} CPUs (${r.machine.cpuModel}) · Node ${r.machine.node} · ${r.machine.nginx} · Linux ${r.machine.kernel}${r.durationS ? ` · took ${fmt(r.durationS)} s` : ''}`);
  out.push('');
  const targets: string[] = [];
  const t = r.throughput;
  if (t) {
    const rounds = t[0]!.rounds.length;
    out.push(`### Warm path (wrk: 1 thread, 50 connections; ${rounds} interleaved rounds; medians, spread = (max − min) / median)`);
    out.push('');
    out.push('| contender | req/s | spread | CPU µs / request | spread | capacity, req per CPU-second | p50 ms | p99 ms | RSS MB | errors |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const c of t) {
      out.push(`| ${c.label} | ${fmt(c.reqPerS)} | ${fmt(c.reqPerSSpreadPct, 1)} % | ${c.cpuUsPerReq === undefined ? '–' : fmt(c.cpuUsPerReq, 1)} | ${c.cpuSpreadPct === undefined ? '–' : `${fmt(c.cpuSpreadPct, 1)} %`} | ${c.cpuUsPerReq === undefined ? '–' : fmt(1e6 / c.cpuUsPerReq)} | ${fmt(c.p50Ms, 2)} | ${fmt(c.p99Ms, 2)} | ${mb(c.rssBytes)} | ${c.errors} |`);
    }
    out.push('');
    const proxies = t.filter((c) => c.cpuUsPerReq !== undefined);
    out.push('CPU per request, row ÷ column (lower is cheaper):');
    out.push('');
    out.push(`| | ${proxies.map((c) => c.name).join(' | ')} |`);
    out.push(`| --- | ${proxies.map(() => '---:').join(' | ')} |`);
    for (const a of proxies) out.push(`| ${a.name} | ${proxies.map((b) => x(a.cpuUsPerReq! / b.cpuUsPerReq!)).join(' | ')} |`);
    out.push('');
    out.push('req/s, row ÷ column (higher is faster):');
    out.push('');
    out.push(`| | ${t.map((c) => c.name).join(' | ')} |`);
    out.push(`| --- | ${t.map(() => '---:').join(' | ')} |`);
    for (const a of t) out.push(`| ${a.name} | ${t.map((b) => x(a.reqPerS / b.reqPerS)).join(' | ')} |`);
    out.push('');
    const get = (n: string): ContenderResult | undefined => t.find((c) => c.name === n);
    const smart = get('smart');
    const bare = get('bare');
    const chp = get('chp');
    if (smart && bare) {
      const ratio = smart.cpuUsPerReq! / bare.cpuUsPerReq!;
      targets.push(`| warm CPU / request vs bare undici proxy | ≤ 1.10× | ${x(ratio)} (${fmt(smart.cpuUsPerReq!, 1)} vs ${fmt(bare.cpuUsPerReq!, 1)} µs) | ${verdict(ratio <= 1.1)} |`);
    }
    const dispatch = get('dispatch');
    const cases = t.filter((c) => c.name.startsWith('smart'));
    if (dispatch && cases.length > 0) {
      const cpuRounds = dispatch.cpu?.usPerReq.length ?? 0;
      out.push(`Warm CPU per request against the bare dispatch() proxy, per access case: in the rounds above (each round's ratio, median), and in ${cpuRounds} short CPU-only rounds of the Node proxies alone (median and interquartile range of the paired ratios; the steadier figure on a shared machine):`);
      out.push('');
      out.push('| case | CPU µs / request | ÷ dispatch(), rounds above | CPU-only rounds: µs / request | ÷ dispatch(), median (IQR) | target ≤ 1.10× |');
      out.push('| --- | ---: | ---: | ---: | ---: | --- |');
      for (const c of cases) {
        const ratio = c.cpu?.medianRatio ?? c.pairedCpuRatio ?? NaN;
        out.push(`| ${c.label} | ${fmt(c.cpuUsPerReq ?? NaN, 1)} | ${x(c.pairedCpuRatio ?? NaN)} | ${fmt(c.cpu?.medianUs ?? NaN, 1)} (dispatch ${fmt(dispatch.cpu?.medianUs ?? NaN, 1)}) | ${x(ratio)} (${x(c.cpu?.ratioQ1 ?? NaN)}-${x(c.cpu?.ratioQ3 ?? NaN)}) | ${verdict(ratio <= 1.1)} |`);
        targets.push(`| warm CPU / request vs bare dispatch() proxy, ${c.label} (paired, CPU-only rounds) | ≤ 1.10× | ${x(ratio)} | ${verdict(ratio <= 1.1)} |`);
      }
      out.push('');
    }
    const nginx = get('nginx');
    for (const [name, mode] of [['front', 'proxy_cache'], ['front-lua', '--cache lua']] as const) {
      const front = get(name);
      if (front === undefined || nginx === undefined) continue;
      // Both ran in every round, in rotated order: each round's ratio, then their median.
      const ratio = median(front.rounds.map((r, i) => r.reqPerS / nginx.rounds[i]!.reqPerS));
      targets.push(`| front-proxy mode (${mode}) warm req/s vs nginx proxy_pass (token enforced; median of the rounds' ratios) | ≥ 0.90× | ${x(ratio)} (${fmt(front.reqPerS)} vs ${fmt(nginx.reqPerS)}) | ${verdict(ratio >= 0.9)} |`);
      const cpuRatio = median(front.rounds.map((r, i) => r.cpuUsPerReq! / nginx.rounds[i]!.cpuUsPerReq!));
      targets.push(`| (steadier) front-proxy mode (${mode}) nginx CPU / request vs nginx proxy_pass | – | ${x(cpuRatio)} (${fmt(front.cpuUsPerReq!, 1)} vs ${fmt(nginx.cpuUsPerReq!, 1)} µs) | – |`);
      targets.push(`| Smart Proxy CPU during front-proxy (${mode}) warm load, per request (its idle background included) | ~0 | ${fmt(front.sideCpuUsPerReq ?? 0, 2)} µs (Smart Proxy alone: ${smart ? fmt(smart.cpuUsPerReq!, 1) : '–'} µs) | ${verdict((front.sideCpuUsPerReq ?? 0) < 1)} |`);
    }
    if (smart && chp) {
      const ratio = smart.reqPerS / chp.reqPerS;
      targets.push(`| warm req/s vs configurable-http-proxy | ≥ 1.70× | ${x(ratio)} (${fmt(smart.reqPerS)} vs ${fmt(chp.reqPerS)}) | ${verdict(ratio >= 1.7)} |`);
      const capacity = chp.cpuUsPerReq! / smart.cpuUsPerReq!;
      targets.push(`| (steadier) capacity, req per CPU-second, vs configurable-http-proxy | ≥ 1.70× | ${x(capacity)} (${fmt(1e6 / smart.cpuUsPerReq!)} vs ${fmt(1e6 / chp.cpuUsPerReq!)}) | ${verdict(capacity >= 1.7)} |`);
    }
  }
  if (r.wake) {
    out.push('### Wake latency (readiness flips at T; T → held client\'s response)');
    out.push('');
    out.push('| readiness found by | wakes × held | p50 ms | p99 ms | max ms | of which T → ready, p50 / p99 ms | p50 / p99 ms after the first wake | errors |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const noise: string[] = [];
    for (const w of r.wake) {
      const how = w.path === 'probe' ? 'probe (backend starts listening at T)'
        : w.path === 'provider' ? 'provider poll, then probe (boot 300 ± 50 ms)'
          : 'provider poll, first boots only (each wake a different resource, no history)';
      out.push(`| ${how} | ${w.wakes} × ${w.heldPerWake} | ${fmt(w.p50Ms, 1)} | ${fmt(w.p99Ms, 1)} | ${fmt(w.maxMs, 1)} | ${fmt(w.detectP50Ms, 1)} / ${fmt(w.detectP99Ms, 1)} | ${w.path === 'first-boot' ? '–' : `${fmt(w.warmHistoryP50Ms, 1)} / ${fmt(w.warmHistoryP99Ms, 1)}`} | ${w.errors} |`);
      noise.push(`${w.path} path: p50 ${fmt(w.loopDelayMs.p50, 1)} ms, p99 ${fmt(w.loopDelayMs.p99, 1)} ms, max ${fmt(w.loopDelayMs.max, 0)} ms`);
      // A first boot's target is its tail only (p99 ≤ 50 ms): with nothing to go by, the
      // schedule polls every tenth of the elapsed time, not every 20 ms through a known window.
      targets.push(w.path === 'first-boot'
        ? `| wake p99, first boots (provider path, no history) | ≤ 50 ms | ${fmt(w.p99Ms, 1)} ms (p50 ${fmt(w.p50Ms, 1)}) | ${verdict(w.p99Ms <= 50)} |`
        : `| wake p50 / p99, ${w.path} path | ≤ 20 / 50 ms | ${fmt(w.p50Ms, 1)} / ${fmt(w.p99Ms, 1)} ms | ${verdict(w.p50Ms <= 20 && w.p99Ms <= 50)} |`);
    }
    out.push('');
    out.push(`Scheduling noise during these runs: the proxy's event loop was late by ${noise.join('; ')} (a timer due at t fired at t + this; every latency above includes it).`);
    out.push('');
  }
  const h = r.hold;
  if (h) {
    out.push(`### Holding ${fmt(h.held)} requests on one cold resource (load generator in its own process)`);
    out.push('');
    out.push('| client | provider starts | RSS / held request | flip → ready | ready → first response | ready → last response | CPU µs / released request | floor: release → last response | floor: CPU µs / released request | errors | release ramp |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
    out.push(`| connection: close | ${h.providerStarts} | ${fmt(h.rssPerHeldBytes / 1024, 1)} KB | ${fmt(h.flipToReadyMs)} ms | ${fmt(h.readyToFirstMs)} ms | ${fmt(h.readyToLastMs)} ms | ${fmt(h.releaseCpuUsPerRequest)} | ${h.floorReadyToLastMs === undefined ? '–' : `${fmt(h.floorReadyToLastMs)} ms`} | ${h.floorReleaseCpuUsPerRequest === undefined ? '–' : fmt(h.floorReleaseCpuUsPerRequest)} | ${h.errorCount} | ${h.releaseRamp} |`);
    const ka = h.keepAlive;
    if (ka) out.push(`| keep-alive | ${ka.providerStarts} | – | – | ${fmt(ka.readyToFirstMs)} ms | ${fmt(ka.readyToLastMs)} ms | ${fmt(ka.releaseCpuUsPerRequest)} | ${fmt(ka.floorReadyToLastMs)} ms | ${fmt(ka.floorReleaseCpuUsPerRequest)} | ${ka.errorCount} | the same |`);
    out.push('');
    out.push(`RSS ${mb(h.rssBeforeBytes)} MB before, ${mb(h.rssHeldBytes)} MB with all held (after a GC; of the growth per held request, ${fmt(h.heapPerHeldBytes / 1024, 1)} KB is live JS heap and ${fmt(h.externalPerHeldBytes / 1024, 1)} KB external buffers); a bare node:http + undici forwarding proxy, holding the same ${fmt(h.held)} requests: ${fmt(h.floorRssPerHeldBytes / 1024, 1)} KB RSS each (${fmt(h.floorHeapPerHeldBytes / 1024, 1)} KB live heap)${h.floorReadyToLastMs === undefined ? '' : `, and forwarding them all with the same ramp: release → last response ${fmt(h.floorReadyToLastMs)} ms, ${fmt(h.floorReleaseCpuUsPerRequest ?? 0)} µs of CPU per request`}. Getting all ${fmt(h.held)} in took ${fmt(h.holdRampMs)} ms. From the flip to the last response the proxy used ${fmt(h.releaseCpuUsPerRequest)} µs of CPU per request and got ${fmt(h.releaseCpuSharePct)} % of its core${ka ? ` (keep-alive clients: ${fmt(ka.releaseCpuUsPerRequest)} µs, ${fmt(ka.releaseCpuSharePct)} %; their connections stay open after the answer, as a browser's would, so no TCP teardown falls into the release)` : ''}. Statuses ${JSON.stringify(h.statuses)}${h.errorCount > 0 ? `, errors ${JSON.stringify(h.errors)}` : ''}.`);
    out.push('');
    targets.push(`| ${fmt(h.held)} held: starts, errors, RSS each, ready → last (clients closing each connection) | 1, 0, ≤ 15 KB, ≤ 1 s | ${h.providerStarts}, ${h.errorCount}, ${fmt(h.rssPerHeldBytes / 1024, 1)} KB, ${fmt(h.readyToLastMs)} ms | ${verdict(h.providerStarts === 1 && h.errorCount === 0 && h.rssPerHeldBytes <= 15 * 1024 && h.readyToLastMs <= 1000)} |`);
    if (ka) targets.push(`| ${fmt(h.held)} held, keep-alive clients: starts, errors, ready → last | 1, 0, ≤ 1 s | ${ka.providerStarts}, ${ka.errorCount}, ${fmt(ka.readyToLastMs)} ms | ${verdict(ka.providerStarts === 1 && ka.errorCount === 0 && ka.readyToLastMs <= 1000)} |`);
  }
  const ch = r.churn;
  if (ch && ch.samples.length > 1) {
    out.push(`### Churn soak (${fmt(ch.durationS)} s, ${fmt(ch.resources)} resources, a fresh backend port per boot, idle stop after 100 ms, plus warm traffic)`);
    out.push('');
    out.push('| s | start/stop cycles | warm requests | RSS MB | heap MB (after GC) | handles | timers | upstream pools | known instances | running backends |');
    out.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const s of ch.samples) {
      out.push(`| ${s.atS} | ${fmt(s.cycles)} | ${fmt(s.warmRequests)} | ${mb(s.rssBytes)} | ${mb(s.heapUsedBytes)} | ${s.handles} | ${s.timers} | ${s.pools} | ${s.instances} | ${s.backends} |`);
    }
    out.push('');
    // Flat: from the first sample after a third of the run (every resource has been through
    // a few cycles: maps and JIT are warm) to the last, per 1,000 cycles.
    const a = ch.samples.find((s) => s.atS >= ch.durationS / 3) ?? ch.samples[1]!;
    const z = ch.samples.at(-1)!;
    const perK = (d: number): number => (z.cycles > a.cycles ? (d * 1000) / (z.cycles - a.cycles) : 0);
    const heapPerK = perK(z.heapUsedBytes - a.heapUsedBytes);
    out.push(`Between ${a.atS} s and ${z.atS} s: ${fmt(z.cycles - a.cycles)} cycles; heap ${heapPerK >= 0 ? '+' : ''}${fmt(heapPerK / 1024, 1)} KB and RSS ${fmt(perK(z.rssBytes - a.rssBytes) / 1024, 1)} KB per 1,000 cycles; pools ${a.pools} → ${z.pools}, instances ${a.instances} → ${z.instances}, timers ${a.timers} → ${z.timers}. Errors: ${ch.errors}${ch.errors > 0 ? ` ${JSON.stringify(ch.errorKinds)}` : ''}.`);
    out.push('');
    targets.push(`| churn: heap per 1,000 start/stop cycles | flat (< 100 KB) | ${fmt(heapPerK / 1024, 1)} KB | ${verdict(heapPerK < 100 * 1024)} |`);
  }
  const m = r.many;
  if (m) {
    out.push('### Many resources');
    out.push('');
    const started = m.filter((c) => c.startupMs !== undefined);
    if (started.length > 0) {
      out.push('Start-up (Smart Proxy; median of the starts after a first one filled the compile cache):');
      out.push('');
      out.push('| configured | start-up ms (process → listening) | start-up CPU ms | config ms | startApp ms | first start ever (empty compile cache) ms | RSS after start MB |');
      out.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
      for (const c of started) {
        out.push(`| ${fmt(c.resources)} | ${fmt(c.startupMs ?? 0)} | ${fmt(c.startupCpuMs ?? 0)} | ${fmt(c.configMs ?? 0)} | ${fmt(c.appMs ?? 0)} | ${c.coldStartupMs === undefined ? '–' : `${fmt(c.coldStartupMs)} (config ${fmt(c.coldConfigMs ?? 0)})`} | ${mb(c.rssAfterStartBytes)} |`);
      }
      out.push('');
    }
    const rounds = m[0]?.roundCpuUsPerReq.length ?? 0;
    out.push(`Warm path (same wrk script: 1 thread, 50 connections, paths at random over the first N resources; ${rounds} rounds, every case once per round in rotating order; "vs one" is the median of each round's ratio to the same proxy's one-site case in that round):`);
    out.push('');
    out.push('| proxy and config | configured | requests spread over | req/s | CPU µs / request | spread | vs one | p50 ms | p99 ms | RSS warm MB | errors |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const c of m) {
      const vs = (c.pairedVsOne - 1) * 100;
      out.push(`| ${c.label} | ${fmt(c.resources)} | ${fmt(c.spreadOver)} | ${fmt(c.reqPerS)} | ${fmt(c.cpuUsPerReq, 1)} | ${fmt(c.cpuSpreadPct, 1)} % | ${c.resources === 1 && c.spreadOver === 1 ? '–' : `${vs >= 0 ? '+' : ''}${fmt(vs, 1)} %`} | ${fmt(c.p50Ms, 2)} | ${fmt(c.p99Ms, 2)} | ${mb(c.rssWarmBytes)} | ${c.errors} |`);
    }
    out.push('');
    const one = m.find((c) => c.name === 'many-1');
    const many = m.find((c) => c.name === 'many-10000');
    if (one && many && many.startupMs !== undefined) {
      targets.push(`| ${fmt(many.resources)} resources: start-up (process → listening; median of ${many.startupSamplesMs?.length ?? 0}) | < 1 s | ${fmt(many.startupMs)} ms, CPU ${fmt(many.startupCpuMs ?? 0)} ms (1 resource: ${fmt(one.startupMs ?? 0)} ms, CPU ${fmt(one.startupCpuMs ?? 0)} ms) | ${verdict(many.startupMs < 1000)} |`);
      if (many.coldStartupMs !== undefined) {
        targets.push(`| (first start ever: empty compile cache) | – | ${fmt(many.coldStartupMs)} ms (config ${fmt(many.coldConfigMs ?? 0)} ms) | ${many.coldStartupMs < 1000 ? 'under 1 s' : 'over 1 s'} |`);
      }
    }
    if (one && many) {
      // Each round of one case runs in the same round as the other: the median of the paired
      // ratios cancels most of the drift of a shared machine.
      const d = (many.pairedVsOne - 1) * 100;
      const dMedians = (many.cpuUsPerReq / one.cpuUsPerReq - 1) * 100;
      targets.push(`| ${fmt(many.resources)} resources: warm CPU / request vs one | within 5 % | ${d >= 0 ? '+' : ''}${fmt(d, 1)} % (median of paired rounds; of medians ${dMedians >= 0 ? '+' : ''}${fmt(dMedians, 1)} %) | ${verdict(d <= 5)} |`);
      for (const ref of m.filter((c) => c.proxy === 'nginx' && c.resources > 1)) {
        const dn = (ref.pairedVsOne - 1) * 100;
        targets.push(`| (reference) ${ref.label}, over 1,000, vs 1 location | – | ${dn >= 0 ? '+' : ''}${fmt(dn, 1)} % | – |`);
      }
    }
  }
  if (targets.length > 0) {
    out.push('### Targets');
    out.push('');
    out.push('| target | wanted | measured | |');
    out.push('| --- | --- | --- | --- |');
    out.push(...targets);
    out.push('');
  }
  return out.join('\n');
}
