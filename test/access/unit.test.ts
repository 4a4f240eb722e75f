import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { encodeGroups, encodeHeaderValue } from '../../src/access/backend-headers.ts';
import { basicCredentials, bearerToken, bearerTokenUnchecked, jwsSecondDot, looksLikeJwt, MAX_TOKEN_CHARS } from '../../src/access/bearer.ts';
import { hashFormatProblem, hashPassword, parseScrypt, verifyScrypt } from '../../src/access/passwords.ts';
import { ANONYMOUS, decide, type ResourcePolicy } from '../../src/access/policy.ts';
import { createBasicVerifier } from '../../src/access/basic-verifier.ts';
import { createTokenVerifier } from '../../src/access/token-verifier.ts';
import { GROUP_NAME_RE, type VerifiedIdentity } from '../../src/access/types.ts';
import { loadConfigFile, ConfigError, parseConfig } from '../../src/config/load.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { demoCredentials } from '../../src/demo-banner.ts';
import { parseTarget } from '../../src/proxy/route.ts';
import '../helpers/test-caches.ts';

const run = promisify(execFile);
const cli = new URL('../../bin/smart-proxy.js', import.meta.url).pathname;

const alice: VerifiedIdentity = { user: 'alice', groups: ['g1', 'g2', 'staff'], via: 'token' };
const policy = (p: Partial<ResourcePolicy>): ResourcePolicy => ({ public: false, revealExistence: false, ...p });
const url = (groups: string[], allGroups = false): { groups: string[]; allGroups: boolean } => ({ groups: [...groups].sort(), allGroups });

describe('policy decision', () => {
  it('URL groups must all be held; the refusal names only those asked for', () => {
    const d = decide(alice, url(['g1', 'nope', 'other']), policy({}));
    assert.deepEqual(d, { allowed: false, outcome: 'denied', reason: 'you do not hold the group(s) named in the URL: nope, other', missing: ['nope', 'other'] });
  });
  it('the named set must satisfy anyOf / allOf', () => {
    assert.deepEqual(decide(alice, url(['g1']), policy({ anyOf: ['g1', 'x'] })), { allowed: true, acting: ['g1'] });
    assert.equal(decide(alice, url(['staff']), policy({ anyOf: ['g1', 'g2'] })).allowed, false);
    assert.equal(decide(alice, url(['g1']), policy({ allOf: ['g1', 'staff'] })).allowed, false);
    assert.deepEqual(decide(alice, url(['g1', 'staff']), policy({ allOf: ['g1', 'staff'], anyOf: ['g1'] })), { allowed: true, acting: ['g1', 'staff'] });
  });
  it('the placeholder acts with every group held', () => {
    assert.deepEqual(decide(alice, url([], true), policy({ allOf: ['staff'] })), { allowed: true, acting: ['g1', 'g2', 'staff'] });
  });
  it('a resource the identity could never satisfy is not found, or denied when it reveals existence', () => {
    const bob: VerifiedIdentity = { user: 'bob', groups: ['g1'], via: 'basic' };
    assert.equal((decide(bob, url([], true), policy({ allOf: ['staff'] })) as { outcome: string }).outcome, 'not-found');
    assert.equal((decide(bob, url(['g1']), policy({ allOf: ['staff'] })) as { outcome: string }).outcome, 'not-found', 'even before the URL groups are looked at');
    assert.equal((decide(bob, url([], true), policy({ allOf: ['staff'], revealExistence: true })) as { outcome: string }).outcome, 'denied');
  });
  it('anonymous: allowed on public resources with "-" only; never on others', () => {
    assert.deepEqual(decide(ANONYMOUS, url([], true), policy({ public: true })), { allowed: true, acting: [] });
    assert.equal(decide(ANONYMOUS, url(['g1']), policy({ public: true })).allowed, false);
    assert.equal(decide(ANONYMOUS, url([], true), policy({})).allowed, false);
  });
  it('a verified identity with no groups may use a resource that requires none', () => {
    assert.deepEqual(decide({ user: 'u', groups: [], via: 'jwt' }, url([], true), policy({})), { allowed: true, acting: [] });
  });
});

describe('group names', () => {
  it('the access grammar is exactly what the URL parser accepts', () => {
    for (const g of ['g1', 'a.b', 'x_y', 'team:ops', 'a=b', 'ü', 'a b', 'a,b', 'a/b', '', 'a%20b', 'x'.repeat(128), 'x'.repeat(129), '~@+-']) {
      let urlOk: boolean;
      try {
        urlOk = parseTarget(`/smart_proxy/r/${encodeURIComponent(g)}/`).groups.includes(g);
      } catch {
        urlOk = false;
      }
      assert.equal(GROUP_NAME_RE.test(g), urlOk, `group ${JSON.stringify(g)}`);
    }
  });
});

describe('backend header values', () => {
  it('keep safe values as they are and percent-encode everything else, % included', () => {
    assert.equal(encodeHeaderValue('alice@example.com'), 'alice@example.com');
    assert.equal(encodeHeaderValue('a,b c\r\n%'), 'a%2Cb%20c%0D%0A%25');
    assert.equal(encodeHeaderValue('Jürgen'), 'J%C3%BCrgen');
    for (const v of ['a,b c\r\n%', 'Jürgen', '日本', '"q"']) assert.equal(decodeURIComponent(encodeHeaderValue(v)), v);
    assert.equal(encodeGroups(['g1', 'team:ops']), 'g1,team:ops');
  });
});

describe('credentials parsing and hashes', () => {
  it('parses Bearer and Basic; refuses oversized headers', () => {
    assert.equal(bearerToken('Bearer abc.def-_~+/='), 'abc.def-_~+/=');
    assert.equal(bearerToken('Bearer a b'), undefined);
    assert.equal(bearerToken(`Bearer ${'a'.repeat(20_000)}`), undefined);
    assert.deepEqual(basicCredentials(`Basic ${Buffer.from('u:p:q').toString('base64')}`), { user: 'u', password: 'p:q' });
    assert.equal(basicCredentials('Bearer x'), undefined);
  });
  it('reads Bearer tokens and JWS shapes exactly as the regular expressions they replace', () => {
    // The reference: RFC 9110 §11.6.2 / §11.2 (token68) and RFC 7515 §7.1, as regexes.
    const bearerRe = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;
    const jwsRe = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
    const reference = (h: string): string | undefined => (h.length > MAX_TOKEN_CHARS ? undefined : bearerRe.exec(h)?.[1]);
    const piece = fc.constantFrom('Bearer', 'bearer', 'BEARER', 'bEaReR', 'Bearer\t', 'Bearerx', 'Basic', 'Beare', ' ', ' ', '  ', '\t', '.', '.', '=', '==',
      'a', 'Z', '0', '-', '_', '~', '+', '/', 'eyJhbGciOiJIUzI1NiJ9', 'é', 'ſ', 'K', '\u0100', '\u0162', '\r\n', ',', ';', '"', '\u0000', '\u007f');
    const header = fc.array(piece, { maxLength: 14 }).map((parts) => parts.join(''));
    const headerLike = fc.tuple(fc.constantFrom('Bearer ', 'bearer  ', 'BEARER '), header).map(([a, b]) => a + b);
    // "Bearer " with one code unit replaced, then a token: every position of the scheme is checked.
    const nearScheme = fc.tuple(fc.nat(6), fc.constantFrom('B', 'b', 'r', 'R', 'x', ' ', '\t', '@', '`', '\u0142', 'e'), header)
      .map(([at, c, rest]) => `${'Bearer '.slice(0, at)}${c}${'Bearer '.slice(at + 1)}${rest}`);
    fc.assert(fc.property(fc.oneof(header, headerLike, nearScheme, fc.string()), (h) => {
      const token = bearerToken(h);
      assert.equal(token, reference(h));
      // What the JWT verifier's cache lookup relies on: the unchecked bounds are the token's.
      if (bearerTokenUnchecked(h) === undefined) assert.equal(token, undefined);
      if (token !== undefined) {
        assert.equal(bearerTokenUnchecked(h), token);
        assert.equal(looksLikeJwt(token), jwsRe.test(token));
        if (jwsRe.test(token)) assert.equal(jwsSecondDot(token), token.indexOf('.', token.indexOf('.') + 1));
      }
    }), { numRuns: 20_000 });
    for (const t of ['a.b.c', 'a.b.', '.b.c', 'a..c', 'a.b.c.d', 'a.b', 'a=.b.c', 'a+.b.c', 'ab']) assert.equal(looksLikeJwt(t), jwsRe.test(t), t);
    assert.equal(bearerToken(`Bearer ${'a'.repeat(MAX_TOKEN_CHARS - 7)}`), 'a'.repeat(MAX_TOKEN_CHARS - 7));
    assert.equal(bearerToken(`Bearer ${'a'.repeat(MAX_TOKEN_CHARS - 6)}`), undefined);
  });
  it('hashes and verifies scrypt; rejects malformed or extravagant parameters', async () => {
    const h = await hashPassword('secret', { ln: 10, r: 8, p: 1 });
    const parsed = parseScrypt(h);
    assert.ok(typeof parsed !== 'string');
    assert.equal(await verifyScrypt('secret', parsed), true);
    assert.equal(await verifyScrypt('Secret', parsed), false);
    assert.match(hashFormatProblem(h.replace('ln=10', 'ln=30'), false) ?? '', /out of range/);
    assert.match(hashFormatProblem('plaintext', true) ?? '', /expected/);
    assert.match(hashFormatProblem(`sha256:${'0'.repeat(64)}`, false) ?? '', /passwords need/);
  });
});

describe('config', () => {
  const base = 'providers: { c: { kind: atmosphere, baseUrl: "http://127.0.0.1:5000" } }\n';
  const problems = (text: string): string => {
    try {
      parseConfig(text, 't.yaml');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.problems.join('\n');
    }
    assert.fail('expected a ConfigError');
  };
  it('refuses a resource nobody could reach, a public per-user resource, and clear-text secrets', () => {
    assert.match(problems(`${base}resources: { a: { provider: c } }\n`), /resources\.a\.access: is not public and no identities are configured/);
    assert.match(problems(`${base}resources: { a: { provider: c, sharing: user, access: { public: true } } }\n`), /resources\.a\.sharing: "user" needs a verified user/);
    assert.match(problems(`${base}identities: [{ kind: token, tokens: [{ user: a, hash: "my-token" }] }]\nresources: { a: { provider: c } }\n`),
      /identities\.0\.tokens\.0\.hash: expected/);
    assert.match(problems(`${base}identities: [{ kind: jwt, issuer: i, audience: a, algorithms: [RS256], secret: "${'x'.repeat(40)}" }]\nresources: { a: { provider: c } }\n`),
      /a secret verifies HS\* algorithms only/);
    assert.match(problems(`${base}identities: [{ kind: header, fromAddresses: ["10.0.0.0/33"] }]\nresources: { a: { provider: c } }\n`),
      /fromAddresses\.0: an IP address or CIDR/);
  });
  it('the demo credentials printed at start verify against the demo config', async () => {
    const cfg = await loadConfigFile(new URL('../../examples/demo.yaml', import.meta.url).pathname);
    const tokenCfg = cfg.identities.find((i) => i.kind === 'token');
    const basicCfg = cfg.identities.find((i) => i.kind === 'basic');
    assert.ok(tokenCfg?.kind === 'token' && basicCfg?.kind === 'basic');
    const tokens = createTokenVerifier(tokenCfg, 'Bearer');
    for (const [user, c] of [['alice', demoCredentials.alice], ['bob', demoCredentials.bob]] as const) {
      const out = await tokens.verify({ authorization: `Bearer ${c.token}`, remoteAddress: undefined, header: () => [] });
      assert.deepEqual(out.kind === 'verified' ? [out.identity.user, out.identity.groups] : out, [user, [...c.groups]]);
    }
    const basic = createBasicVerifier(basicCfg, 'Basic', new ManualClock());
    for (const [user, c] of [['carol', demoCredentials.carol], ['alice', demoCredentials.alice]] as const) {
      const out = await basic.verify({ authorization: `Basic ${Buffer.from(`${user}:${c.password}`).toString('base64')}`, remoteAddress: undefined, header: () => [] });
      assert.deepEqual(out.kind === 'verified' ? [out.identity.user, out.identity.groups] : out, [user, [...c.groups]]);
    }
    const kinds = Object.fromEntries(Object.entries(cfg.resources).map(([id, r]) => [id, [r.sharing, r.access?.public === true]]));
    assert.deepEqual(kinds.hello, ['shared', true], 'a public resource');
    assert.deepEqual(kinds.notebook, ['user', false], 'a user-scoped one');
    assert.ok(cfg.resources.reports?.access?.allOf?.includes('staff'), 'a group-protected one');
  });
});

describe('hash-password command', () => {
  it('hashes a password read from stdin, and makes tokens', async () => {
    const child = execFile(process.execPath, [cli, 'hash-password', '--cost', '10']);
    child.stdin?.end('pw-from-stdin\n');
    const out = await new Promise<string>((resolve, reject) => {
      let s = '';
      child.stdout?.on('data', (d: Buffer) => { s += d.toString(); });
      child.on('close', (code) => (code === 0 ? resolve(s) : reject(new Error(`exit ${code}`))));
    });
    const parsed = parseScrypt(out.trim());
    assert.ok(typeof parsed !== 'string', out);
    assert.equal(parsed.params.ln, 10);
    assert.equal(await verifyScrypt('pw-from-stdin', parsed), true);
    const tok = await run(process.execPath, [cli, 'hash-password', '--token']);
    const m = /^token: (spt_\S+)\nhash: {2}(sha256:[0-9a-f]{64})\n$/.exec(tok.stdout);
    assert.ok(m, tok.stdout);
    const v = createTokenVerifier({ kind: 'token', tokens: [{ user: 'x', groups: [], hash: m[2]! }] }, 'Bearer');
    assert.equal((await v.verify({ authorization: `Bearer ${m[1]}`, remoteAddress: undefined, header: () => [] })).kind, 'verified');
  });
});
