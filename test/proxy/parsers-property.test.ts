/**
 * Property-based tests (fast-check) of the parsers every request goes through: target
 * parsing (route.ts), header rewriting (headers.ts) and the Prefer parser (prefer.ts). No
 * input crashes them, hangs them, or changes what the forwarded path means.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { SmartProxyError } from '../../src/core/errors.ts';
import { downstreamHeaders, fieldProblem, foldName, isProxyClaim, upstreamHeaders, type ForwardContext } from '../../src/proxy/headers.ts';
import { parsePrefer, planWait } from '../../src/proxy/prefer.ts';
import { joinUpstreamPath, parseTarget, type ParsedTarget } from '../../src/proxy/route.ts';

/** A call that takes longer than this on any input counts as a hang (generous: shared CI machines). */
const HANG_MS = 500;

function timed<T>(fn: () => T): T {
  const start = performance.now();
  try {
    return fn();
  } finally {
    const ms = performance.now() - start;
    assert.ok(ms < HANG_MS, `took ${ms.toFixed(1)} ms`);
  }
}

/** parseTarget, with its only allowed failure (a SmartProxyError 400/404) as undefined. */
function tryParse(url: string): ParsedTarget | undefined {
  try {
    return timed(() => parseTarget(url));
  } catch (err) {
    assert.ok(err instanceof SmartProxyError, `threw a non-domain error: ${String(err)}`);
    assert.ok(err.code === 'SP_ROUTE_BAD_TARGET' || err.code === 'SP_ROUTE_NOT_FOUND', err.code);
    return undefined;
  }
}

/** Pieces that make paths dangerous or confusing, mixed with harmless ones. */
const PIECE = fc.constantFrom(
  '/', '/', '/', 'a', 'b', 'x.y', '.', '..', '...', ';', ';p=1', '..;', '.;', '%2e', '%2E', '%2e%2e', '%252e', '%25252e', '%25', '%2f',
  '%2F', '%252f', '%5c', '%255c', '\\', '%c0%ae', '%e0%80%ae', '%ef%bc%8e', '%u002e', '%25u002e', '%00', '%7f', '%20', ' ', '#', '?',
  '?q=..', '%', '%g1', 'é', '%c3%a9', '-', ',', 'g1,g2',
);
const PATH_TAIL = fc.array(PIECE, { maxLength: 24 }).map((parts) => parts.join(''));

/** A lenient backend's reading of a path: percent-decoded `times` times (bytewise), `;params` dropped, dot segments resolved. */
function backendView(path: string, times: number): string {
  let p = path;
  for (let i = 0; i < times; i++) p = p.replace(/%([0-9a-fA-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
  const segments = p.split(/[/\\]/).map((s) => (s.includes(';') ? s.slice(0, s.indexOf(';')) : s));
  const out: string[] = [];
  for (const s of segments.slice(1)) {
    if (s === '..') out.pop();
    else if (s !== '.') out.push(s);
  }
  return `/${out.join('/')}`;
}

describe('property: target parsing (route.ts)', () => {
  it('no input crashes or hangs the parser', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (s) => {
      tryParse(s);
      tryParse(`/smart_proxy/${s}`);
      tryParse(`/smart_proxy/app/g1/${s}`);
    }), { numRuns: 2000 });
  });

  it('pathological lengths finish quickly', () => {
    for (const url of [
      `/smart_proxy/app/g1/${'%25'.repeat(5000)}2e`,
      `/smart_proxy/app/g1/${'a/'.repeat(8000)}`,
      `/smart_proxy/app/g1/${'.%'.repeat(8000)}`,
      `/smart_proxy/app/g1/${';'.repeat(16000)}`,
      `/smart_proxy/app/${'g,'.repeat(8000)}/x`,
    ]) tryParse(url);
  });

  it('an accepted path never escapes the endpoint prefix, however often a backend decodes it', () => {
    fc.assert(fc.property(PATH_TAIL, (tail) => {
      const route = tryParse(`/smart_proxy/app/g1/${tail}`);
      if (route === undefined) return;
      assert.ok(route.path.startsWith('/'));
      const upstream = joinUpstreamPath('/vm/1', route.path, '');
      for (let times = 0; times <= 3; times++) {
        const seen = backendView(upstream, times);
        assert.ok(seen === '/vm/1' || seen.startsWith('/vm/1/'), `${JSON.stringify(upstream)} decoded ${times}x is ${JSON.stringify(seen)}`);
      }
    }), { numRuns: 5000 });
  });

  it('parsing is idempotent: the parsed target parses to itself', () => {
    fc.assert(fc.property(PATH_TAIL, fc.constantFrom('g1', '-', 'b,a,b', 'g%2C1'), (tail, groups) => {
      const route = tryParse(`/smart_proxy/app/${groups}/${tail}`);
      if (route === undefined) return;
      const again = tryParse(route.prefix + route.path + route.query);
      assert.deepEqual(again, route);
    }), { numRuns: 3000 });
  });
});

const NAMES = fc.oneof(
  fc.constantFrom(
    'host', 'Host', 'connection', 'Connection', 'keep-alive', 'te', 'transfer-encoding', 'upgrade', 'expect', 'proxy-authorization',
    'x-forwarded-for', 'X-Forwarded-Email', 'x_forwarded_user', 'X-Forwarded-Groups', 'forwarded', 'x-real-ip', 'true-client-ip',
    'x-forwarded-prefix', 'x-forwarded-host', 'x-forwarded-proto', 'cookie', 'x-custom', 'authorization', ':authority', ':path',
  ),
  fc.stringMatching(/^[a-zA-Z0-9_-]{1,20}$/),
);
const VALUES = fc.oneof(fc.constantFrom('close', 'x-custom, keep-alive', 'a, b', '', '6.6.6.6', 'h.example'), fc.string({ maxLength: 40 }));
const RAW_HEADERS = fc.array(fc.tuple(NAMES, VALUES), { maxLength: 30 }).map((pairs) => pairs.flat());

describe('property: header rewriting (headers.ts)', () => {
  const protectedNames = new Set(['x-forwarded-user', 'x-forwarded-groups']);
  const ctx = (trusted: boolean): ForwardContext => ({ remoteAddress: '10.1.2.3', encrypted: false, trusted, prefix: '/smart_proxy/app/g1', protectedNames });

  it('an untrusted client cannot smuggle hop-by-hop, identity or proxy-claim headers, and the proxy\'s own values win', () => {
    fc.assert(fc.property(RAW_HEADERS, (raw) => {
      const out = timed(() => upstreamHeaders(raw, ctx(false)));
      assert.equal(out.length % 2, 0);
      const listed = new Set<string>();
      for (let i = 0; i < raw.length; i += 2) {
        if ((raw[i] as string).toLowerCase() === 'connection') for (const t of (raw[i + 1] as string).split(',')) listed.add(t.trim().toLowerCase());
      }
      const counts = new Map<string, number>();
      for (let i = 0; i < out.length; i += 2) {
        const name = (out[i] as string).toLowerCase();
        counts.set(name, (counts.get(name) ?? 0) + 1);
        assert.ok(!name.startsWith(':'), `pseudo-header ${name}`);
        assert.ok(!['connection', 'keep-alive', 'te', 'transfer-encoding', 'upgrade', 'expect', 'host', 'proxy-authorization'].includes(name), `hop-by-hop ${name}`);
        assert.ok(!listed.has(name), `Connection-listed ${name}`);
        assert.ok(!protectedNames.has(foldName(name)), `identity header ${name}`);
        if (isProxyClaim(foldName(name))) assert.ok(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-prefix'].includes(name), `proxy claim ${name}`);
      }
      for (const own of ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-prefix']) assert.equal(counts.get(own), 1, own);
      // X-Forwarded-Host is the Host (or HTTP/2's :authority), once; none when there is
      // neither (HTTP/1.0), never empty.
      const hosts = raw.flatMap((v, i) => (i % 2 === 0 && ['host', ':authority'].includes(v.toLowerCase()) && raw[i + 1] !== '' ? [raw[i + 1] as string] : []));
      const forwardedHost = counts.has('x-forwarded-host') ? out[out.indexOf('x-forwarded-host') + 1] : undefined;
      assert.ok((counts.get('x-forwarded-host') ?? 0) <= 1);
      assert.notEqual(forwardedHost, '');
      // (Two Host fields, or a Host that contradicts :authority, never get here: fieldProblem
      // refuses the request first.)
      const hostFields = raw.filter((v, i) => i % 2 === 0 && v.toLowerCase() === 'host').length;
      const authorityFields = raw.filter((v, i) => i % 2 === 0 && v === ':authority').length;
      if (hostFields + authorityFields <= 1) {
        if (hosts.length === 0) assert.equal(forwardedHost, undefined);
        else assert.ok(forwardedHost !== undefined && hosts.includes(forwardedHost), `X-Forwarded-Host ${forwardedHost}`);
      }
      assert.equal(out[out.indexOf('x-forwarded-for') + 1], '10.1.2.3');
    }), { numRuns: 3000 });
  });

  it('drops the fields Connection lists, also those before it (Cookie included); folds `_` for the proxy\'s own names only', () => {
    const raw = ['X-Custom', '1', 'Cookie', 'a=1', 'x_forwarded_for', '9.9.9.9', 'Connection', 'x-custom, Cookie', 'Host', 'h.example',
      'X-Forwarded-For', '8.8.8.8', 'Transfer_Encoding', 'x', 'Accept', '*/*', ':authority', 'other', 'cookie', 'b=2', 'X_Forwarded_User', 'evil'];
    assert.deepEqual(upstreamHeaders(raw, ctx(false)), ['Transfer_Encoding', 'x', 'Accept', '*/*', 'x-forwarded-for', '10.1.2.3',
      'x-forwarded-proto', 'http', 'x-forwarded-host', 'h.example', 'x-forwarded-prefix', '/smart_proxy/app/g1']);
    assert.deepEqual(upstreamHeaders(raw, ctx(true)).slice(4, 6), ['x-forwarded-for', '8.8.8.8, 10.1.2.3']);
    assert.deepEqual(upstreamHeaders(['Cookie', 'a=1', 'connection', 'close', 'Close', 'x', 'cookie', 'b=2'], ctx(false)).slice(0, 2), ['cookie', 'a=1; b=2']);
  });

  it('a trusted proxy\'s chain is extended, never replaced; identity headers are dropped even from it', () => {
    fc.assert(fc.property(RAW_HEADERS, (raw) => {
      const out = upstreamHeaders(raw, ctx(true));
      const xff = out[out.indexOf('x-forwarded-for') + 1] as string;
      assert.ok(xff === '10.1.2.3' || xff.endsWith(', 10.1.2.3'));
      for (let i = 0; i < out.length; i += 2) assert.ok(!protectedNames.has(foldName(out[i] as string)));
    }), { numRuns: 1000 });
  });

  it('fieldProblem and downstreamHeaders take any input', () => {
    fc.assert(fc.property(RAW_HEADERS, fc.dictionary(NAMES, fc.oneof(VALUES, fc.array(VALUES, { maxLength: 3 }))), (raw, dict) => {
      const problem = timed(() => fieldProblem(raw));
      const names = raw.filter((_v, i) => i % 2 === 0).map((n) => n.toLowerCase());
      if (names.filter((n) => n === 'host').length > 1) assert.ok(problem !== undefined);
      const codings = raw.filter((_v, i) => i % 2 === 1 && names[(i - 1) / 2] === 'transfer-encoding');
      if (codings.some((c) => c.trim().toLowerCase() !== 'chunked')) assert.ok(problem !== undefined);
      if (problem !== undefined) assert.match(problem.detail, /^[\x20-\x7e…]*$/);
      const down = timed(() => downstreamHeaders(dict));
      for (let i = 0; i < down.length; i += 2) assert.ok(!['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te'].includes(down[i] as string));
    }), { numRuns: 2000 });
  });
});

describe('property: the Prefer parser (prefer.ts)', () => {
  const PREFER_PIECE = fc.constantFrom('wait=5', 'wait=0', 'WAIT=7', 'wait="3"', 'wait=-1', 'wait=1e3', 'wait=99999999999999999999', 'respond-async', 'handling=lenient',
    ';', ',', '"', '\\', '=', ' ', 'x="a,b;c"', 'return=minimal', 'wait = 2');
  const PREFER = fc.oneof(fc.string({ maxLength: 200 }), fc.array(PREFER_PIECE, { maxLength: 20 }).map((p) => p.join('')));

  it('no value crashes or hangs it; wait is a whole number of seconds within bounds', () => {
    fc.assert(fc.property(fc.oneof(PREFER, fc.array(PREFER, { maxLength: 4 })), (value) => {
      const prefs = timed(() => parsePrefer(value));
      if (prefs.waitS !== undefined) {
        assert.ok(Number.isInteger(prefs.waitS) && prefs.waitS >= 0 && prefs.waitS <= 2_147_483_648);
      }
    }), { numRuns: 3000 });
  });

  it('a hold never exceeds the resource\'s hold timeout, whatever the client prefers', () => {
    fc.assert(fc.property(PREFER, fc.integer({ min: 0, max: 600_000 }), fc.option(fc.integer({ min: 0, max: 600_000 }), { nil: undefined }), (prefer, holdTimeoutMs, defaultWaitMs) => {
      const req = { method: 'GET', headers: { prefer, accept: '*/*' } } as unknown as IncomingMessage;
      const plan = planWait(req, { browserPage: true, defaultWaitMs }, holdTimeoutMs);
      if (plan.kind === 'hold') assert.ok(plan.holdMs >= 0 && plan.holdMs <= holdTimeoutMs, String(plan.holdMs));
    }), { numRuns: 2000 });
  });

  it('the first wait preference counts', () => {
    fc.assert(fc.property(fc.nat({ max: 10_000 }), fc.nat({ max: 10_000 }), (a, b) => {
      assert.equal(parsePrefer(`respond-async, wait=${a}, wait=${b}`).waitS, a);
      assert.equal(parsePrefer([`wait=${a}`, `wait=${b}`]).waitS, a);
    }));
  });
});
