/**
 * Warm path side by side: direct, nginx, configurable-http-proxy, the bare undici proxy and
 * Smart Proxy, all in front of the same nginx upstream. Interleaved rounds; per round and
 * contender: req/s, CPU time of the proxy process per request, latency percentiles.
 */
import { createHash } from 'node:crypto';
import { SignJWT } from 'jose';
import { join } from 'node:path';
import { CHP_BIN } from '../lib/deps.ts';
import { BENCH_DIR, startSmartProxy, type Context } from '../lib/context.ts';
import { startFrontMode } from '../lib/front.ts';
import { startNginxProxy } from '../lib/nginx.ts';
import { cpuTimeMs, freePort, rssBytes, spawnPinned, waitForHttp, type Spawned } from '../lib/procs.ts';
import { median, quantile, spreadPct } from '../lib/stats.ts';
import { errorCount, wrk, type WrkResult } from '../lib/wrk.ts';

export const BENCH_PATH = '/smart_proxy/bench/-/hello';

export interface Round {
  readonly reqPerS: number;
  /** CPU time of the proxy process per request, µs (undefined for direct). */
  readonly cpuUsPerReq: number | undefined;
  /** Front-proxy mode: CPU time of Smart Proxy (behind nginx) per request, µs. */
  readonly sideCpuUsPerReq?: number | undefined;
  readonly errors: number;
  readonly latencyUs: Record<string, number>;
}

export interface ContenderResult {
  readonly name: string;
  readonly label: string;
  readonly rounds: Round[];
  readonly rssBytes: number | undefined;
  /** Medians over rounds. */
  readonly reqPerS: number;
  readonly reqPerSSpreadPct: number;
  readonly cpuUsPerReq: number | undefined;
  readonly cpuSpreadPct: number | undefined;
  /** Front-proxy mode: Smart Proxy's CPU per request behind nginx (median), µs. */
  readonly sideCpuUsPerReq?: number | undefined;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly errors: number;
  /** Median over rounds of each latency percentile, µs. */
  readonly latencyUs: Record<string, number>;
  /** CPU per request ÷ the bare dispatch() proxy's in the same round, median over rounds. */
  readonly pairedCpuRatio?: number | undefined;
  /** The CPU-only rounds (Node proxies only; see runCpuRounds). */
  readonly cpu?: CpuSeries | undefined;
}

/**
 * CPU per request of one Node proxy over many short interleaved rounds: the figure that
 * load from outside moves least. Each round's value is also divided by the bare dispatch()
 * proxy's in the same round (paired ratio), so that a busy minute slows both sides of it.
 */
export interface CpuSeries {
  readonly usPerReq: readonly number[];
  readonly medianUs: number;
  readonly spreadPct: number;
  readonly ratios: readonly number[];
  readonly medianRatio: number;
  /** Interquartile range of the ratios. */
  readonly ratioQ1: number;
  readonly ratioQ3: number;
}

interface Contender {
  readonly name: string;
  readonly label: string;
  readonly url: string;
  readonly proc: Spawned | undefined;
  /** Request headers wrk sends (default BENCH_HEADERS). */
  readonly headers?: readonly string[];
  /** A second process doing part of the work (Smart Proxy behind nginx in front-proxy mode). */
  readonly side?: Spawned | undefined;
  /** Stops proc and side together (front-proxy mode). */
  readonly stop?: () => Promise<void>;
}

/** The credential every contender is sent (Smart Proxy verifies it; the others pass it on). */
export const BENCH_TOKEN = 'bench-token-7f3a';
export const BENCH_HEADERS = [`Authorization: Bearer ${BENCH_TOKEN}`];

/** How Smart Proxy's warm-path contender checks its callers. */
export type AccessCase = 'public' | 'bearer' | 'jwt';
export const ACCESS_CASES: readonly AccessCase[] = ['public', 'bearer', 'jwt'];

const JWT_SECRET = 'bench-jwt-secret-0123456789abcdef0123456789';
const JWT_ISSUER = 'https://issuer.bench.invalid';
const JWT_AUDIENCE = 'smart-proxy-bench';
let benchJwt: string | undefined;

/**
 * A JWT for the bench (HS256, groups bench and staff, valid for a day): Smart Proxy verifies
 * it once and then serves it from its verdict cache, as it would a real client's token.
 */
export async function benchJwtHeaders(): Promise<string[]> {
  benchJwt ??= await new SignJWT({ groups: ['bench', 'staff'] }).setProtectedHeader({ alg: 'HS256' })
    .setSubject('bench').setIssuer(JWT_ISSUER).setAudience(JWT_AUDIENCE).setIssuedAt().setExpirationTime('1d')
    .sign(new TextEncoder().encode(JWT_SECRET));
  return [`Authorization: Bearer ${benchJwt}`];
}

/** The request headers wrk sends to Smart Proxy for one access case. */
export async function headersFor(access: AccessCase): Promise<string[]> {
  return access === 'jwt' ? benchJwtHeaders() : BENCH_HEADERS;
}

/**
 * Smart Proxy as a user runs it: routing, groups sharing, a static backend, and one of three
 * ways of checking the caller: a public resource (no identity needed; the bearer header
 * goes to the backend untouched by any verifier), a bearer token hashed in the config, or a
 * JWT (HS256), each with a group policy the identity's groups must satisfy.
 */
export function smartProxyYaml(upstreamPort: number, access: AccessCase = 'bearer'): string {
  const hash = createHash('sha256').update(BENCH_TOKEN).digest('hex');
  const identities = access === 'jwt'
    ? `  - kind: jwt
    issuer: "${JWT_ISSUER}"
    audience: "${JWT_AUDIENCE}"
    algorithms: [HS256]
    secret: "${JWT_SECRET}"
`
    : `  - kind: token
    tokens:
      - { user: bench, groups: [bench, staff], hash: "sha256:${hash}" }
`;
  return `# Smart Proxy as a user runs it (access case: ${access}).
listen: { host: 127.0.0.1, port: 0 }
log: { level: info }
identities:
${identities}providers:
  up: { kind: static, endpoint: "http://127.0.0.1:${upstreamPort}" }
resources:
  bench:
    provider: up
    sharing: groups
    access: ${access === 'public' ? '{ public: true }' : '{ anyOf: [bench] }'}
`;
}

/** Row names and labels of Smart Proxy's three warm-path cases. */
export const SMART_ROWS: Record<AccessCase, { name: string; label: string }> = {
  public: { name: 'smart-public', label: 'Smart Proxy (warm, public resource)' },
  bearer: { name: 'smart', label: 'Smart Proxy (warm, bearer token verified)' },
  jwt: { name: 'smart-jwt', label: 'Smart Proxy (warm, JWT verified, cached verdict)' },
};

async function startContenders(ctx: Context): Promise<Contender[]> {
  const up = `http://127.0.0.1:${ctx.upstreamPort}`;
  const out: Contender[] = [{ name: 'direct', label: 'direct (no proxy)', url: up + BENCH_PATH, proc: undefined }];

  const nginxPort = await freePort();
  const nginx = await startNginxProxy(ctx.workDir, nginxPort, ctx.upstreamPort, ctx.proxyCpu);
  out.push({ name: 'nginx', label: 'nginx proxy_pass', url: `http://127.0.0.1:${nginxPort}${BENCH_PATH}`, proc: nginx });

  const chpPort = await freePort();
  const chpApiPort = await freePort();
  const token = 'bench-token';
  const chp = spawnPinned('chp', process.execPath, [CHP_BIN, '--ip', '127.0.0.1', '--port', String(chpPort), '--api-ip', '127.0.0.1',
    '--api-port', String(chpApiPort), '--log-level', 'warn'], {
    cpu: ctx.proxyCpu, logFile: join(ctx.workDir, 'chp.log'), env: { ...process.env, CONFIGPROXY_AUTH_TOKEN: token },
  });
  await waitForHttp(`http://127.0.0.1:${chpApiPort}/api/routes`);
  // A route as JupyterHub would add it, rather than the default target.
  const added = await fetch(`http://127.0.0.1:${chpApiPort}/api/routes/smart_proxy/bench`, {
    method: 'POST', headers: { authorization: `token ${token}` }, body: JSON.stringify({ target: up }),
  });
  if (added.status !== 201) throw new Error(`CHP route not added: ${added.status}`);
  out.push({ name: 'chp', label: 'configurable-http-proxy', url: `http://127.0.0.1:${chpPort}${BENCH_PATH}`, proc: chp });

  const barePort = await freePort();
  const bare = spawnPinned('bare', process.execPath, [join(BENCH_DIR, 'bare-proxy.ts'), String(barePort), up], {
    cpu: ctx.proxyCpu, logFile: join(ctx.workDir, 'bare.log'),
  });
  await waitForHttp(`http://127.0.0.1:${barePort}${BENCH_PATH}`);
  out.push({ name: 'bare', label: 'bare node:http + undici request()', url: `http://127.0.0.1:${barePort}${BENCH_PATH}`, proc: bare });

  const dispatchPort = await freePort();
  const dispatch = spawnPinned('bare-dispatch', process.execPath, [join(BENCH_DIR, 'bare-proxy.ts'), String(dispatchPort), up, 'dispatch'], {
    cpu: ctx.proxyCpu, logFile: join(ctx.workDir, 'bare-dispatch.log'),
  });
  await waitForHttp(`http://127.0.0.1:${dispatchPort}${BENCH_PATH}`);
  out.push({ name: 'dispatch', label: 'bare node:http + undici dispatch()', url: `http://127.0.0.1:${dispatchPort}${BENCH_PATH}`, proc: dispatch });

  for (const access of ACCESS_CASES) {
    const smart = await startSmartProxy(ctx, `smart-proxy-${access}`, smartProxyYaml(ctx.upstreamPort, access));
    await waitForHttp(smart.url + BENCH_PATH);
    out.push({ ...SMART_ROWS[access], url: smart.url + BENCH_PATH, proc: smart, headers: await headersFor(access) });
  }

  // Front-proxy mode (bench/lib/front.ts): the row's CPU is nginx's, Smart Proxy's own beside it.
  const front = await startFrontMode(ctx, smartProxyYaml(ctx.upstreamPort), BENCH_PATH, BENCH_HEADERS);
  out.push({ name: 'front', label: 'nginx front-proxy mode (token checked by Smart Proxy, grant cached 5 s)', url: `http://127.0.0.1:${front.port}${BENCH_PATH}`, proc: front.nginx, side: front.smart, stop: () => front.stop() });
  // The same mode with the decisions in nginx's memory (`nginx-config --cache lua`).
  const lua = await startFrontMode(ctx, smartProxyYaml(ctx.upstreamPort), BENCH_PATH, BENCH_HEADERS, 'lua');
  out.push({ name: 'front-lua', label: 'nginx front-proxy mode, decisions in nginx\'s memory (--cache lua; the same grant)', url: `http://127.0.0.1:${lua.port}${BENCH_PATH}`, proc: lua.nginx, side: lua.smart, stop: () => lua.stop() });
  return out;
}

async function measure(c: Contender, ctx: Context, durationS: number): Promise<Round> {
  const before = c.proc === undefined ? 0 : cpuTimeMs(c.proc.pid);
  const sideBefore = c.side === undefined ? 0 : cpuTimeMs(c.side.pid);
  const r: WrkResult = await wrk({ url: c.url, durationS, connections: 50, cpu: ctx.loadCpu, headers: c.headers ?? BENCH_HEADERS });
  const after = c.proc === undefined ? 0 : cpuTimeMs(c.proc.pid);
  const sideAfter = c.side === undefined ? 0 : cpuTimeMs(c.side.pid);
  return {
    reqPerS: r.requests / (r.durationUs / 1e6),
    cpuUsPerReq: c.proc === undefined ? undefined : ((after - before) * 1000) / r.requests,
    sideCpuUsPerReq: c.side === undefined ? undefined : ((sideAfter - sideBefore) * 1000) / r.requests,
    errors: errorCount(r),
    latencyUs: r.latencyUs,
  };
}

export async function runThroughput(ctx: Context): Promise<ContenderResult[]> {
  const rounds = ctx.quick ? 2 : 5;
  const durationS = ctx.quick ? 5 : 10;
  const warmS = ctx.quick ? 2 : 3;
  const contenders = await startContenders(ctx);
  try {
    for (const c of contenders) {
      ctx.log(`warm-up ${c.name} (${warmS} s)`);
      await wrk({ url: c.url, durationS: warmS, connections: 50, cpu: ctx.loadCpu, headers: c.headers ?? BENCH_HEADERS });
    }
    const byName = new Map<string, Round[]>(contenders.map((c) => [c.name, []]));
    for (let round = 0; round < rounds; round++) {
      // Rotate the order so that no contender always runs right after the same one.
      const order = contenders.map((_, i) => contenders[(i + round) % contenders.length]!);
      for (const c of order) {
        const r = await measure(c, ctx, durationS);
        byName.get(c.name)!.push(r);
        ctx.log(`round ${round + 1}/${rounds} ${c.name.padEnd(6)} ${r.reqPerS.toFixed(0).padStart(6)} req/s  ${r.cpuUsPerReq?.toFixed(1) ?? '  -'} µs CPU/req  p50 ${(r.latencyUs['50']! / 1000).toFixed(2)} ms  p99 ${(r.latencyUs['99']! / 1000).toFixed(2)} ms${r.errors > 0 ? `  ERRORS ${r.errors}` : ''}`);
      }
    }
    const cpu = await runCpuRounds(ctx, contenders.filter((c) => CPU_ROUNDS_CONTENDERS.has(c.name)));
    const base = byName.get('dispatch');
    return contenders.map((c) => summarise(c, byName.get(c.name)!, base, cpu.get(c.name)));
  } finally {
    await Promise.all(contenders.map((c) => c.stop?.() ?? c.proc?.stop() ?? Promise.resolve()));
  }
}

/** The Node proxies compared in the CPU-only rounds: the reference and Smart Proxy's cases. */
const CPU_ROUNDS_CONTENDERS = new Set(['dispatch', ...ACCESS_CASES.map((a) => SMART_ROWS[a].name)]);

/**
 * Many short rounds of the Node proxies only (15 × 3 s; quick: 6 × 2 s), order rotated,
 * CPU time per request of each, and its ratio to the dispatch() proxy's in the same round.
 */
async function runCpuRounds(ctx: Context, contenders: readonly Contender[]): Promise<Map<string, CpuSeries>> {
  const rounds = ctx.quick ? 6 : 15;
  const durationS = ctx.quick ? 2 : 3;
  const perRound = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < rounds; round++) {
    const order = contenders.map((_, i) => contenders[(i + round) % contenders.length]!);
    for (const c of order) perRound.get(c.name)!.push((await measure(c, ctx, durationS)).cpuUsPerReq!);
    ctx.log(`cpu round ${round + 1}/${rounds}: ${contenders.map((c) => `${c.name} ${perRound.get(c.name)!.at(-1)!.toFixed(1)}`).join(', ')} µs/req`);
  }
  const base = perRound.get('dispatch')!;
  const out = new Map<string, CpuSeries>();
  for (const [name, us] of perRound) {
    const ratios = us.map((v, i) => v / base[i]!);
    out.set(name, {
      usPerReq: us, medianUs: median(us), spreadPct: spreadPct(us),
      ratios, medianRatio: median(ratios), ratioQ1: quantile(ratios, 0.25), ratioQ3: quantile(ratios, 0.75),
    });
  }
  return out;
}

function summarise(c: Contender, rounds: Round[], base: Round[] | undefined, cpuSeries: CpuSeries | undefined): ContenderResult {
  const cpu = rounds.map((r) => r.cpuUsPerReq).filter((v): v is number => v !== undefined);
  const paired = base === undefined || c.proc === undefined ? [] : rounds.map((r, i) => r.cpuUsPerReq! / base[i]!.cpuUsPerReq!);
  const percentiles = Object.keys(rounds[0]!.latencyUs);
  const latencyUs = Object.fromEntries(percentiles.map((p) => [p, median(rounds.map((r) => r.latencyUs[p]!))]));
  return {
    name: c.name,
    label: c.label,
    rounds,
    rssBytes: c.proc === undefined ? undefined : safeRss(c.proc.pid),
    reqPerS: median(rounds.map((r) => r.reqPerS)),
    reqPerSSpreadPct: spreadPct(rounds.map((r) => r.reqPerS)),
    cpuUsPerReq: cpu.length > 0 ? median(cpu) : undefined,
    cpuSpreadPct: cpu.length > 0 ? spreadPct(cpu) : undefined,
    sideCpuUsPerReq: c.side === undefined ? undefined : median(rounds.map((r) => r.sideCpuUsPerReq ?? 0)),
    pairedCpuRatio: paired.length > 0 ? median(paired) : undefined,
    cpu: cpuSeries,
    p50Ms: latencyUs['50']! / 1000,
    p99Ms: latencyUs['99']! / 1000,
    errors: rounds.reduce((n, r) => n + r.errors, 0),
    latencyUs,
  };
}

function safeRss(pid: number): number | undefined {
  try {
    return rssBytes(pid);
  } catch {
    return undefined;
  }
}
