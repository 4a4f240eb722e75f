/**
 * The warm path's pieces one at a time, this checkout against another (before a change), in one
 * process, alternating: CPU ns per call, median of 7 rounds of 100,000 calls. Steadier than
 * whole-proxy CPU time on a loaded machine; what each named win in docs/benchmarks.md saves.
 *
 * usage: node bench/lib/micro-warm.ts --baseline DIR   (DIR: another checkout, e.g. a git worktree)
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { SignJWT } from 'jose';
import type * as tokMod from '../../src/access/token-verifier.ts';
import type * as jwtMod from '../../src/access/jwt-verifier.ts';
import type * as chainMod from '../../src/access/chain.ts';
import type * as headersMod from '../../src/proxy/headers.ts';
import type * as routeMod from '../../src/proxy/route.ts';
import type * as clockMod from '../../src/core/clock.ts';
import type * as pwMod from '../../src/access/passwords.ts';

const { values } = parseArgs({ options: { baseline: { type: 'string' } } });
if (values.baseline === undefined) throw new Error('usage: node bench/lib/micro-warm.ts --baseline DIR');
const NEW = fileURLToPath(new URL('../../src', import.meta.url));
const OLD = join(values.baseline, 'src');
/** The modules measured; the baseline checkout exports the same names. */
interface Mods {
  tok: typeof tokMod;
  jwt: typeof jwtMod;
  chain: typeof chainMod;
  headers: typeof headersMod;
  route: typeof routeMod;
  clock: typeof clockMod;
  pw: typeof pwMod;
}
const mods = async (root: string): Promise<Mods> => ({
  tok: (await import(`${root}/access/token-verifier.ts`)) as Mods['tok'], jwt: (await import(`${root}/access/jwt-verifier.ts`)) as Mods['jwt'],
  chain: (await import(`${root}/access/chain.ts`)) as Mods['chain'], headers: (await import(`${root}/proxy/headers.ts`)) as Mods['headers'],
  route: (await import(`${root}/proxy/route.ts`)) as Mods['route'], clock: (await import(`${root}/core/clock.ts`)) as Mods['clock'],
  pw: (await import(`${root}/access/passwords.ts`)) as Mods['pw'],
});
const n = await mods(NEW), o = await mods(OLD);
const log = { info() {}, warn() {}, error() {}, debug() {}, child() { return log; } } as never;
const secret = 'bench-jwt-secret-0123456789abcdef0123456789';
const jwt = await new SignJWT({ groups: ['bench', 'staff'] }).setProtectedHeader({ alg: 'HS256' }).setSubject('bench').setIssuer('https://i').setAudience('a').setIssuedAt().setExpirationTime('1d').sign(new TextEncoder().encode(secret));
const jwtCfg: Parameters<Mods['jwt']['createJwtVerifier']>[0] = { kind: 'jwt', issuer: 'https://i', audience: 'a', algorithms: ['HS256'], secret, userClaim: 'sub', groupsClaim: 'groups', clockToleranceMs: 30000, jwksCacheMaxAgeMs: 600000, jwksCooldownMs: 30000, jwksTimeoutMs: 5000 };
const tokCfg: Parameters<Mods['tok']['createTokenVerifier']>[0] = { kind: 'token', tokens: [{ user: 'bench', groups: ['bench', 'staff'], hash: n.pw.hashToken('bench-token-7f3a') }] };
const creds = (a: string) => ({ authorization: a, remoteAddress: '127.0.0.1', header: () => [] });
const cases: Record<string, Record<'old' | 'new', () => unknown>> = {};
for (const [k, m] of [['old', o], ['new', n]] as const) {
  const tv = m.tok.createTokenVerifier(tokCfg, 'Bearer');
  const jv = m.jwt.createJwtVerifier(jwtCfg, 'Bearer', m.clock.systemClock, log);
  await jv.verify(creds(`Bearer ${jwt}`));
  const ct = creds('Bearer bench-token-7f3a'), cj = creds(`Bearer ${jwt}`);
  (cases['chain: bearer token (verify + chain)'] ??= {} as never)[k] = () => m.chain.verifyChain([tv], ct);
  (cases['chain: JWT, cached verdict (verify + chain)'] ??= {} as never)[k] = () => m.chain.verifyChain([jv], cj);
  const resp = { server: 'nginx/1.22.1', date: 'Wed, 02 Dec 2026 17:00:00 GMT', 'content-type': 'text/plain', 'content-length': '2', connection: 'keep-alive' };
  (cases['response-header filtering (downstreamHeaders)'] ??= {} as never)[k] = () => m.headers.downstreamHeaders(resp);
  (cases['target parsing (parseTarget)'] ??= {} as never)[k] = () => m.route.parseTarget('/smart_proxy/bench/-/hello');
}
console.log('| piece of the warm path | before, CPU ns / call | after | |\n| --- | ---: | ---: | ---: |');
for (const [name, impl] of Object.entries(cases)) {
  const res: Record<string, number[]> = { old: [], new: [] };
  for (let r = 0; r < 7; r++) for (const k of ['old', 'new'] as const) {
    const f = impl[k]; const N = 100000;
    const t = process.cpuUsage();
    for (let i = 0; i < N; i++) { const v = f(); if (v instanceof Promise) await v; }
    const u = process.cpuUsage(t); res[k]!.push((u.user + u.system) / N * 1000);
  }
  const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!;
  console.log(`| ${name} | ${med(res.old!).toFixed(0)} | ${med(res.new!).toFixed(0)} | ${(med(res.old!) / med(res.new!)).toFixed(1)}× |`);
}
