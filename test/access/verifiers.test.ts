import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { createBasicVerifier } from '../../src/access/basic-verifier.ts';
import { verifyChain } from '../../src/access/chain.ts';
import { createHeaderVerifier } from '../../src/access/header-verifier.ts';
import { createJwtVerifier } from '../../src/access/jwt-verifier.ts';
import { hashPassword, hashToken, keysEqual, sha256Key, sha256KeyOfHex } from '../../src/access/passwords.ts';
import { createTokenVerifier } from '../../src/access/token-verifier.ts';
import type { RequestCredentials, Verifier, VerifyOutcome } from '../../src/access/types.ts';
import { jwtIdentitySchema, type JwtIdentityConfig } from '../../src/config/access-schema.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';

const logger = collectingLogger([]);
const CHEAP = { ln: 10, r: 8, p: 1 };

function creds(authorization?: string, headers: Record<string, string[]> = {}, remoteAddress = '127.0.0.1'): RequestCredentials {
  return { authorization, remoteAddress, header: (n) => headers[n] ?? [] };
}

const bearer = (t: string): RequestCredentials => creds(`Bearer ${t}`);
const basic = (u: string, p: string): RequestCredentials => creds(`Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`);

function verified(out: VerifyOutcome): { user: string | undefined; groups: readonly string[] } {
  assert.equal(out.kind, 'verified', `expected verified, got ${JSON.stringify(out)}`);
  return (out).identity;
}

function invalidReason(out: VerifyOutcome): string {
  assert.equal(out.kind, 'invalid', `expected invalid, got ${JSON.stringify(out)}`);
  return (out).reason;
}

describe('static API tokens', () => {
  it('verifies a sha256-stored token and an scrypt-stored one; ignores others for the next verifier', async () => {
    const v = createTokenVerifier({
      kind: 'token',
      tokens: [
        { user: 'alice', groups: ['g2', 'g1'], hash: hashToken('tok-alice') },
        { user: 'svc', groups: [], hash: await hashPassword('tok-svc', CHEAP) },
      ],
    }, 'Bearer realm="t"');
    assert.deepEqual(verified(await v.verify(bearer('tok-alice'))), { user: 'alice', groups: ['g1', 'g2'], via: 'token' });
    assert.equal(verified(await v.verify(bearer('tok-svc'))).user, 'svc');
    assert.equal(verified(await v.verify(creds('bearer tok-alice'))).user, 'alice', 'the scheme is case-insensitive');
    assert.deepEqual(await v.verify(bearer('tok-wrong')), { kind: 'absent' });
    assert.deepEqual(await v.verify(creds()), { kind: 'absent' });
    assert.deepEqual(await v.verify(basic('alice', 'tok-alice')), { kind: 'absent' });
  });
});

describe('HTTP Basic', () => {
  it('verifies scrypt passwords; wrong password, unknown user and malformed headers are invalid', async () => {
    const v = createBasicVerifier({ kind: 'basic', users: [{ user: 'carol', groups: ['g2'], passwordHash: await hashPassword('pässwörd:with colon', CHEAP) }] },
      'Basic realm="t"', new ManualClock());
    assert.equal(verified(await v.verify(basic('carol', 'pässwörd:with colon'))).user, 'carol');
    assert.equal(invalidReason(await v.verify(basic('carol', 'nope'))), 'wrong user name or password');
    assert.equal(invalidReason(await v.verify(basic('mallory', 'pässwörd:with colon'))), 'wrong user name or password');
    assert.equal(invalidReason(await v.verify(creds('Basic !!!'))), 'malformed Basic credentials');
    assert.equal(invalidReason(await v.verify(creds(`Basic ${Buffer.from('nocolon').toString('base64')}`))), 'malformed Basic credentials');
    assert.deepEqual(await v.verify(bearer('x')), { kind: 'absent' });
  });
});

describe('trusted identity header', () => {
  const v = createHeaderVerifier({ kind: 'header', fromAddresses: ['10.0.0.0/8'], userHeader: 'x-forwarded-user', groupsHeader: 'x-forwarded-groups', groupsSeparator: ',' },
    (addr) => addr?.startsWith('10.') === true);
  it('is believed only from the configured addresses', async () => {
    const h = { 'x-forwarded-user': ['dave'], 'x-forwarded-groups': ['g2, g1', 'g3'] };
    assert.deepEqual(verified(await v.verify(creds(undefined, h, '10.1.2.3'))), { user: 'dave', groups: ['g1', 'g2', 'g3'], via: 'header' });
    assert.deepEqual(await v.verify(creds(undefined, h, '192.168.1.1')), { kind: 'absent' });
  });
  it('refuses two user headers (an appending front proxy) and invalid names', async () => {
    assert.match(invalidReason(await v.verify(creds(undefined, { 'x-forwarded-user': ['a', 'b'] }, '10.0.0.1'))), /more than one/);
    assert.match(invalidReason(await v.verify(creds(undefined, { 'x-forwarded-user': ['a\u0001'] }, '10.0.0.1'))), /not a valid user/);
  });
});

/** A JWKS endpoint on 127.0.0.1:0 whose key set the test swaps (rotation). */
async function startJwks(): Promise<{ url: string; keys: JWK[]; fetches: number; close(): Promise<void>; server: Server }> {
  const state = { keys: [] as JWK[], fetches: 0 };
  const server = createServer((_req, res) => {
    state.fetches++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  return {
    url, server,
    get keys() { return state.keys; },
    set keys(k: JWK[]) { state.keys = k; },
    get fetches() { return state.fetches; },
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

interface Pair { privateKey: CryptoKey; publicJwk: JWK }
async function pair(alg: string, kid: string): Promise<Pair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

function jwtConfig(fields: Record<string, unknown>): JwtIdentityConfig {
  return jwtIdentitySchema.parse({ kind: 'jwt', issuer: 'https://idp.test', audience: 'smart-proxy', ...fields });
}

const NOW_S = Math.floor(Date.UTC(2026, 0, 1) / 1000);

async function sign(key: CryptoKey | Uint8Array, header: { alg: string; kid?: string }, claims: Record<string, unknown> = {}, opts: { iss?: string; aud?: string; exp?: number | null; sub?: string } = {}): Promise<string> {
  let j = new SignJWT({ groups: ['g1', 'g2'], ...claims }).setProtectedHeader(header).setIssuedAt(NOW_S - 10)
    .setIssuer(opts.iss ?? 'https://idp.test').setAudience(opts.aud ?? 'smart-proxy').setSubject(opts.sub ?? 'erin');
  if (opts.exp !== null) j = j.setExpirationTime(opts.exp ?? NOW_S + 300);
  return j.sign(key);
}

describe('JWT', () => {
  const clock = new ManualClock(NOW_S * 1000);
  const secret = 'a-shared-secret-that-is-long-enough-0123456789';
  const hsKey = new TextEncoder().encode(secret);
  const hs = createJwtVerifier(jwtConfig({ algorithms: ['HS256'], secret, clockToleranceMs: 30_000 }), 'Bearer', clock, logger);

  it('HS256: valid, with groups and user from the configured claims', async () => {
    assert.deepEqual(verified(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' })))), { user: 'erin', groups: ['g1', 'g2'], via: 'jwt' });
  });
  it('HS256: expired beyond the tolerance is refused, within it accepted', async () => {
    assert.equal(invalidReason(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' }, {}, { exp: NOW_S - 31 })))), 'token expired');
    assert.equal(verified(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' }, {}, { exp: NOW_S - 20 })))).user, 'erin');
  });
  it('HS256: wrong audience, wrong issuer, bad signature, missing exp, algorithm not allowed', async () => {
    assert.equal(invalidReason(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' }, {}, { aud: 'other' })))), 'wrong audience');
    assert.equal(invalidReason(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' }, {}, { iss: 'https://evil.test' })))), 'wrong issuer');
    const good = await sign(hsKey, { alg: 'HS256' });
    const tampered = `${good.slice(0, good.lastIndexOf('.') + 1)}${'A'.repeat(43)}`;
    assert.equal(invalidReason(await hs.verify(bearer(tampered))), 'bad signature');
    const forged = await sign(new TextEncoder().encode('another-secret-also-long-enough-0123456789'), { alg: 'HS256' });
    assert.equal(invalidReason(await hs.verify(bearer(forged))), 'bad signature');
    assert.match(invalidReason(await hs.verify(bearer(await sign(hsKey, { alg: 'HS256' }, {}, { exp: null })))), /exp/);
    assert.equal(invalidReason(await hs.verify(bearer(await sign(hsKey, { alg: 'HS512' })))), 'algorithm not allowed');
  });
  it('a cached verdict answers only the very token judged: its signature with other claims is verified, and refused', async () => {
    const v = createJwtVerifier(jwtConfig({ algorithms: ['HS256'], secret }), 'Bearer', clock, logger);
    const good = await sign(hsKey, { alg: 'HS256' });
    assert.equal(verified(await v.verify(bearer(good))).user, 'erin');
    const hit = v.verify(bearer(good));
    assert.ok(!(hit instanceof Promise), 'the same token again: a cache hit');
    assert.equal(v.stats?.verifications, 1);
    // The claims of a more privileged user under the genuine token's signature.
    const [header, , signature] = good.split('.');
    const claims = { sub: 'root', groups: ['admin'], iss: 'https://idp.test', aud: 'smart-proxy', iat: NOW_S - 10, exp: NOW_S + 300 };
    const swapped = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${signature}`;
    assert.equal(invalidReason(await v.verify(bearer(swapped))), 'bad signature');
    assert.equal(invalidReason(await v.verify(bearer(swapped))), 'bad signature');
    // The genuine token is still verified (afresh: the refusal took its place in the cache).
    assert.equal(verified(await v.verify(bearer(good))).user, 'erin');
  });
  it('leaves a non-JWT bearer token to other verifiers', async () => {
    assert.deepEqual(await hs.verify(bearer('opaque-token')), { kind: 'absent' });
  });
  it('a cached token with anything added or changed that breaks the JWS shape is not a JWT, nor a hit', async () => {
    const v = createJwtVerifier(jwtConfig({ algorithms: ['HS256'], secret }), 'Bearer', clock, logger);
    const good = await sign(hsKey, { alg: 'HS256' });
    assert.equal(verified(await v.verify(bearer(good))).user, 'erin');
    const dot = good.lastIndexOf('.');
    // Valid token68 each, so the Bearer syntax passes; none is three base64url parts.
    for (const t of [`${good}.x`, `${good}=`, `${good}~`, `~${good}`, `${good.slice(0, dot)}.~${good.slice(dot + 1)}`, `${good.slice(0, dot)}..${good.slice(dot + 1)}`]) {
      assert.deepEqual(v.verify(bearer(t)), { kind: 'absent' }, t);
    }
    assert.equal(v.stats?.verifications, 1);
  });
  it('reads groups from a dot path and from a space-separated string; drops names a URL cannot carry', async () => {
    const v = createJwtVerifier(jwtConfig({ algorithms: ['HS256'], secret, groupsClaim: 'realm_access.roles', userClaim: 'preferred_username' }), 'Bearer', clock, logger);
    const t = await sign(hsKey, { alg: 'HS256' }, { preferred_username: 'frank', realm_access: { roles: ['b', 'a', '/not a group', 'a'] } });
    assert.deepEqual(verified(await v.verify(bearer(t))), { user: 'frank', groups: ['a', 'b'], via: 'jwt' });
    const s = createJwtVerifier(jwtConfig({ algorithms: ['HS256'], secret, groupsClaim: 'scope' }), 'Bearer', clock, logger);
    assert.deepEqual(verified(await s.verify(bearer(await sign(hsKey, { alg: 'HS256' }, { scope: 'read write' })))).groups, ['read', 'write']);
  });
  it('RS256 with a PEM public key; EdDSA with an inline JWK set and an unknown key id', async () => {
    const rs = await generateKeyPair('RS256', { extractable: true });
    const vr = createJwtVerifier(jwtConfig({ algorithms: ['RS256'], publicKeyPem: await exportSPKI(rs.publicKey) }), 'Bearer', clock, logger);
    assert.equal(verified(await vr.verify(bearer(await sign(rs.privateKey, { alg: 'RS256' })))).user, 'erin');
    const ed = await pair('EdDSA', 'ed-1');
    const ve = createJwtVerifier(jwtConfig({ algorithms: ['EdDSA'], jwks: { keys: [ed.publicJwk] } }), 'Bearer', clock, logger);
    assert.equal(verified(await ve.verify(bearer(await sign(ed.privateKey, { alg: 'EdDSA', kid: 'ed-1' })))).user, 'erin');
    assert.equal(invalidReason(await ve.verify(bearer(await sign(ed.privateKey, { alg: 'EdDSA', kid: 'ed-2' })))), 'unknown key id');
    // An HS token against public keys: the algorithm is not one of the accepted ones.
    assert.equal(invalidReason(await ve.verify(bearer(await sign(hsKey, { alg: 'HS256', kid: 'ed-1' })))), 'algorithm not allowed');
  });

  describe('JWKS URL', () => {
    let jwks: Awaited<ReturnType<typeof startJwks>>;
    let k1: Pair;
    let k2: Pair;
    before(async () => {
      jwks = await startJwks();
      k1 = await pair('ES256', 'k1');
      k2 = await pair('ES256', 'k2');
    });
    after(async () => { await jwks.close(); });

    it('verifies, caches, refetches on an unknown kid (rotation), and then refuses the retired key', async () => {
      jwks.keys = [k1.publicJwk];
      const v = createJwtVerifier(jwtConfig({ algorithms: ['ES256'], jwksUrl: jwks.url, jwksCooldownMs: 0 }), 'Bearer', clock, logger);
      const t1 = await sign(k1.privateKey, { alg: 'ES256', kid: 'k1' });
      assert.equal(verified(await v.verify(bearer(t1))).user, 'erin');
      assert.equal(verified(await v.verify(bearer(t1))).user, 'erin');
      assert.equal(jwks.fetches, 1, 'the key set is cached');
      // Rotation: the issuer now signs with k2 and has retired k1.
      jwks.keys = [k2.publicJwk];
      const t2 = await sign(k2.privateKey, { alg: 'ES256', kid: 'k2' });
      assert.equal(verified(await v.verify(bearer(t2))).user, 'erin');
      assert.equal(jwks.fetches, 2, 'an unknown kid refetched the key set once');
      assert.equal(invalidReason(await v.verify(bearer(t1))), 'unknown key id');
      // A kid that is nowhere: refused (after at most one more fetch).
      const t3 = await sign(k1.privateKey, { alg: 'ES256', kid: 'k3' });
      assert.equal(invalidReason(await v.verify(bearer(t3))), 'unknown key id');
      // A token signed by the wrong key under a known kid.
      const forged = await sign(k1.privateKey, { alg: 'ES256', kid: 'k2' });
      assert.equal(invalidReason(await v.verify(bearer(forged))), 'bad signature');
    });

    it('an unreachable key set is "unavailable", not a verdict on the token', async () => {
      const dead = await startJwks();
      const url = dead.url;
      await dead.close();
      const v = createJwtVerifier(jwtConfig({ algorithms: ['ES256'], jwksUrl: url, jwksTimeoutMs: 2000 }), 'Bearer', clock, logger);
      const out = await v.verify(bearer(await sign(k1.privateKey, { alg: 'ES256', kid: 'k1' })));
      assert.equal(out.kind, 'invalid');
      assert.equal((out as { unavailable?: boolean }).unavailable, true);
    });
  });
});

describe('verifier chain', () => {
  it('tries in order: first verified wins; an unrecognised Authorization is invalid, none is anonymous', async () => {
    const token = createTokenVerifier({ kind: 'token', tokens: [{ user: 'a', groups: [], hash: hashToken('t-a') }] }, 'Bearer');
    const failing: Verifier = { kind: 'jwt', challenge: undefined, verify: () => { throw new Error('boom'); } };
    assert.equal((await verifyChain([token, failing], bearer('t-a'))).kind, 'verified');
    const bad = await verifyChain([token, failing], bearer('t-b'));
    assert.equal(bad.kind, 'invalid', 'a throwing verifier is a refusal, never a pass');
    const unknown = await verifyChain([token], creds('Digest whatever'));
    assert.deepEqual(unknown.kind === 'invalid' ? unknown.reason : unknown.kind, 'credentials not recognised');
    assert.equal((await verifyChain([token], creds())).kind, 'anonymous');
  });

  it('answers without a promise when every verifier does (a known token: the warm path), and waits for one that does not', async () => {
    const token = createTokenVerifier({ kind: 'token', tokens: [{ user: 'a', groups: ['g'], hash: hashToken('t-a') }] }, 'Bearer');
    const direct = verifyChain([token], bearer('t-a'));
    assert.ok(!(direct instanceof Promise));
    assert.equal(direct.kind === 'verified' ? direct.identity.user : direct.kind, 'a');
    // A later asynchronous verifier still judges what the first one left absent.
    const slow: Verifier = { kind: 'jwt', challenge: undefined, verify: async () => ({ kind: 'verified', identity: { user: 'j', groups: [], via: 'jwt' } }) };
    const waited = verifyChain([token, slow], bearer('other'));
    assert.ok(waited instanceof Promise);
    const out = await waited;
    assert.equal(out.kind === 'verified' ? out.identity.user : out.kind, 'j');
    // A rejected promise is a refusal, as a throw is.
    const rejecting: Verifier = { kind: 'jwt', challenge: undefined, verify: () => Promise.reject(new Error('boom')) };
    assert.equal((await verifyChain([rejecting], bearer('x'))).kind, 'invalid');
    // The token compare is the one the config form names: sha256 of the token.
    assert.equal(sha256Key('t-a'), sha256KeyOfHex(hashToken('t-a').slice('sha256:'.length)));
    assert.ok(keysEqual(sha256Key('t-a'), sha256Key('t-a')));
    assert.ok(!keysEqual(sha256Key('t-a'), sha256Key('t-b')));
    // 16 code units: the 32 digest bytes read as UTF-16LE (the comparison runs 16 rounds).
    assert.equal(sha256Key('t-a').length, 16);
    assert.equal(Buffer.from(sha256Key('t-a'), 'utf16le').toString('hex'), hashToken('t-a').slice('sha256:'.length));
  });
});
