/**
 * JWT bearer tokens (RFC 7519), verified with `jose`: signature against configured keys (an
 * HS secret, one PEM public key, an inline JWK set, or a JWKS URL that jose caches and
 * refetches when a token names an unknown `kid`, at most once per cool-down), the accepted
 * algorithms (never chosen by the token alone), issuer, audience, and `exp` (required) with a
 * clock tolerance. The user comes from `userClaim`, the groups from the `groupsClaim` path.
 *
 * A token is verified once, not on every request (a signature check costs more than the whole
 * warm path): the verdict is cached by a SHA-256 of the token in a bounded LRU
 * (credential-cache.ts), a verified one until the earliest of
 * - its `exp` (never beyond it: past exp, jose judges it again, clock tolerance included),
 * - `jwtRecheckMs` after it was verified (default 60 s): the bound on how long a token signed
 *   by a key the issuer removed from its JWKS can live on in the cache;
 * and sooner: a hit whose `kid` is no longer in the key set jose last fetched is verified
 * again at once, and a hit before its `nbf` (minus the tolerance) is not used. Refusals that
 * time cannot cure (bad signature, unknown key, wrong issuer…) are cached for the refusal TTL;
 * "not yet valid" and an unreachable key set are never cached.
 */
import { createRequire } from 'node:module';
import type * as Jose from 'jose';
import type { CryptoKey, JWTPayload, JWTVerifyGetKey } from 'jose';
import type { JwtIdentityConfig } from '../config/access-schema.ts';
import type { Clock, Logger } from '../core/ports.ts';
import { bearerToken, bearerTokenUnchecked, jwsSecondDot } from './bearer.ts';
import { credentialKey, defaultCredentialWork, SingleFlight, VerdictCache, type CredentialWork } from './credential-cache.ts';
import { sha256Key } from './passwords.ts';
import { ABSENT, isValidUserName, normaliseGroups, type Verifier, type VerifyOutcome } from './types.ts';

/**
 * jose, loaded on first use (a JWT identity is built, or a refusal described): loading it costs
 * every start-up ~40 ms otherwise. Synchronous (require() of an ES module, the same module
 * instance as an `import`), because verifiers are built synchronously.
 */
let joseLib: typeof Jose | undefined;
const jose = (): typeof Jose => (joseLib ??= createRequire(import.meta.url)('jose') as typeof Jose);

type KeySource = Uint8Array | JWTVerifyGetKey;

/**
 * A cached verdict on one token: a verified identity (with what a hit re-checks), or a
 * refusal. Cached under the SHA-256 of the token's signature (its last part: the secret one,
 * and a fraction of the token to hash: one SHA-256 block for HS256 instead of four or five
 * for the whole token). `signed` is the rest of that token (header and claims, no secret),
 * compared in full on every hit: a hit is the very token judged before, never one with the
 * same signature and other claims.
 */
type Cached = { readonly signed: string } & (
  | { readonly kind: 'verified'; readonly outcome: VerifyOutcome; readonly kid: string | undefined; readonly notBeforeMs: number }
  | { readonly kind: 'refused'; readonly outcome: VerifyOutcome });

/**
 * A copy of `part` that holds no reference to the string it was cut from (V8 may keep a slice
 * as a view into its parent: here a parent with the signature in it).
 */
function detached(part: string): string {
  return Buffer.from(part, 'latin1').toString('latin1');
}

/** Refusals that a later clock may turn into acceptance: never cached. */
const TIME_BOUND_REASONS = new Set(['token not yet valid', 'token issued in the future']);

function keySource(cfg: JwtIdentityConfig): KeySource {
  if (cfg.secret !== undefined) {
    // src/config reads a { env } / { file } secret before verifiers are built (resolveIdentitySecrets).
    if (typeof cfg.secret !== 'string') throw new Error('JWT verifier: its secret reference was not read (resolveIdentitySecrets)');
    return new TextEncoder().encode(cfg.secret);
  }
  if (cfg.jwksUrl !== undefined) {
    return jose().createRemoteJWKSet(new URL(cfg.jwksUrl), {
      cacheMaxAge: cfg.jwksCacheMaxAgeMs,
      cooldownDuration: cfg.jwksCooldownMs,
      timeoutDuration: cfg.jwksTimeoutMs,
    });
  }
  if (cfg.jwks !== undefined) return jose().createLocalJWKSet(cfg.jwks);
  const pem = cfg.publicKeyPem as string;
  const byAlg = new Map<string, Promise<CryptoKey>>();
  return async (header) => {
    const alg = header.alg ?? '';
    let key = byAlg.get(alg);
    if (key === undefined) {
      key = jose().importSPKI(pem, alg);
      byAlg.set(alg, key);
    }
    return key;
  };
}

/** Reads a dot path (`realm_access.roles`) out of the claims. */
function claimAt(payload: JWTPayload, path: string): unknown {
  let cur: unknown = payload;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, part)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

/** Why jose refused a token, in words fit for a 401 and an audit record. */
export function describeJoseError(err: unknown): { reason: string; unavailable: boolean } {
  if (!(err instanceof jose().errors.JOSEError)) {
    // fetch() of the JWKS failed (refused, DNS, TLS): not the token's fault.
    return { reason: 'the key set could not be fetched', unavailable: true };
  }
  switch (err.code) {
    case 'ERR_JWT_EXPIRED': return { reason: 'token expired', unavailable: false };
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const claim = (err as Jose.errors.JWTClaimValidationFailed).claim;
      if (claim === 'iss') return { reason: 'wrong issuer', unavailable: false };
      if (claim === 'aud') return { reason: 'wrong audience', unavailable: false };
      if (claim === 'nbf') return { reason: 'token not yet valid', unavailable: false };
      if (claim === 'iat') return { reason: 'token issued in the future', unavailable: false };
      return { reason: `claim "${claim}" invalid or missing`, unavailable: false };
    }
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED': return { reason: 'bad signature', unavailable: false };
    case 'ERR_JWKS_NO_MATCHING_KEY': return { reason: 'unknown key id', unavailable: false };
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS': return { reason: 'no matching key verified the signature', unavailable: false };
    case 'ERR_JOSE_ALG_NOT_ALLOWED': return { reason: 'algorithm not allowed', unavailable: false };
    case 'ERR_JOSE_NOT_SUPPORTED': return { reason: 'unsupported algorithm or key', unavailable: false };
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID': return { reason: 'malformed token', unavailable: false };
    case 'ERR_JWKS_TIMEOUT': return { reason: 'the key set could not be fetched in time', unavailable: true };
    case 'ERR_JWKS_INVALID': return { reason: 'the key set is malformed', unavailable: true };
    case 'ERR_JOSE_GENERIC': return { reason: `the key set could not be fetched (${err.message})`, unavailable: true };
    default: return { reason: `token refused (${err.code})`, unavailable: false };
  }
}

export function createJwtVerifier(cfg: JwtIdentityConfig, challenge: string, clock: Clock, log: Logger, work: CredentialWork = defaultCredentialWork(clock)): Verifier {
  jose(); // Loaded with the verifier, at start-up, not on its first request.
  const key = keySource(cfg);
  const remote = cfg.jwksUrl !== undefined ? (key as ReturnType<typeof Jose.createRemoteJWKSet>) : undefined;
  const verdicts = new VerdictCache<Cached>(work.cacheMaxEntries, work.clock);
  const flights = new SingleFlight<VerifyOutcome>();
  /** The kids of the key set jose last fetched (remote sets only; refreshed after each real verification). */
  let liveKids: ReadonlySet<string> | undefined;
  const refreshKids = (): void => {
    if (remote === undefined) return;
    const set = remote.jwks();
    if (set !== undefined) liveKids = new Set(set.keys.flatMap((k) => (typeof k.kid === 'string' ? [k.kid] : [])));
  };
  const options = {
    issuer: cfg.issuer,
    audience: cfg.audience,
    algorithms: [...cfg.algorithms],
    // A token that never expires would be a password in disguise.
    requiredClaims: ['exp'],
    clockTolerance: cfg.clockToleranceMs / 1000,
  };
  let droppedWarned = false;
  const stats = { verifications: 0 };

  return {
    kind: 'jwt',
    challenge,
    stats,
    // Synchronous on a cache hit: a warm request with a known token awaits nothing here.
    verify(credentials): VerifyOutcome | Promise<VerifyOutcome> {
      // The token's syntax and its JWS shape are checked on a miss only: a hit is a token judged
      // before (the same signature, by its SHA-256, and the same rest, compared in full), and
      // only tokens that passed both checks are ever judged. A JWT is a few hundred characters.
      const candidate = bearerTokenUnchecked(credentials.authorization);
      if (candidate === undefined) return ABSENT;
      // Where the signature starts if this is a JWS (after the second dot).
      const dot = candidate.indexOf('.', candidate.indexOf('.') + 1);
      let cacheKey: string | undefined;
      if (dot !== -1) {
        cacheKey = sha256Key(candidate.slice(dot + 1));
        const hit = verdicts.get(cacheKey);
        // Another token with this signature (claims changed, or not yet the one cached) is a miss.
        // (`===` on the slice: a block compare; `startsWith` compiles to a per-character loop.)
        if (hit !== undefined && hit.signed.length === dot && candidate.slice(0, dot) === hit.signed) {
          if (hit.kind === 'refused') return hit.outcome;
          const keyGone = hit.kid !== undefined && liveKids !== undefined && !liveKids.has(hit.kid);
          if (!keyGone && work.clock.now() >= hit.notBeforeMs) return hit.outcome;
          verdicts.delete(cacheKey);
        }
      }
      // Not a Bearer token (bearerToken returns the candidate whenever it returns a token), or
      // not of the JWS shape (one of that shape has its second dot where found above): not ours.
      const token = bearerToken(credentials.authorization);
      if (token === undefined || dot === -1 || cacheKey === undefined || jwsSecondDot(token) !== dot) return ABSENT;
      const key = cacheKey;
      // Concurrent requests share a verification only for the very same token.
      return flights.run(credentialKey('jwt', token), async () => {
        const signed = detached(token.slice(0, dot));
        const out = await verifyNow(token);
        refreshKids();
        if (out.outcome.kind === 'verified') {
          const exp = out.payload?.exp;
          if (typeof exp === 'number') {
            const nbf = out.payload?.nbf;
            const until = Math.min(exp * 1000, work.clock.now() + work.jwtRecheckMs);
            verdicts.set(key, {
              signed, kind: 'verified', outcome: out.outcome, kid: out.kid,
              notBeforeMs: typeof nbf === 'number' ? nbf * 1000 - cfg.clockToleranceMs : 0,
            }, until);
          }
        } else if (out.outcome.kind === 'invalid' && out.outcome.unavailable !== true && !TIME_BOUND_REASONS.has(out.outcome.reason)) {
          verdicts.set(key, { signed, kind: 'refused', outcome: out.outcome }, work.clock.now() + work.refusedTtlMs);
        }
        return out.outcome;
      });
    },
  };

  /** One real verification by jose (the only place that costs a signature check). */
  async function verifyNow(token: string): Promise<{ outcome: VerifyOutcome; payload?: JWTPayload; kid?: string | undefined }> {
    stats.verifications++;
    let payload: JWTPayload;
    try {
      const verified = typeof key === 'function'
        ? await jose().jwtVerify(token, key, { ...options, currentDate: new Date(clock.now()) })
        : await jose().jwtVerify(token, key, { ...options, currentDate: new Date(clock.now()) });
      payload = verified.payload;
    } catch (err) {
      const { reason, unavailable } = describeJoseError(err);
      if (unavailable) log.warn({ jwksUrl: cfg.jwksUrl, reason }, 'JWT key set unavailable');
      return { outcome: { kind: 'invalid', reason, unavailable } };
    }
    const user = claimAt(payload, cfg.userClaim);
    if (typeof user !== 'string' || !isValidUserName(user)) {
      return { outcome: { kind: 'invalid', reason: `claim "${cfg.userClaim}" is missing or not a valid user name` } };
    }
    const raw = claimAt(payload, cfg.groupsClaim);
    const claimed = typeof raw === 'string' ? raw.split(/[\s,]+/).filter((g) => g.length > 0) : Array.isArray(raw) ? raw : [];
    const { groups, dropped } = normaliseGroups(claimed as unknown[]);
    if (dropped > 0 && !droppedWarned) {
      droppedWarned = true;
      log.warn({ issuer: cfg.issuer, groupsClaim: cfg.groupsClaim, dropped }, 'JWT groups that cannot be named in a URL are ignored');
    }
    return { outcome: { kind: 'verified', identity: { user, groups, via: 'jwt' } }, payload, kid: jose().decodeProtectedHeader(token).kid };
  }
}
