/**
 * JWT bearer tokens (RFC 7519), verified with `jose`: signature against configured keys (an
 * HS secret, one PEM public key, an inline JWK set, or a JWKS URL that jose caches and
 * refetches when a token names an unknown `kid`, at most once per cool-down), the accepted
 * algorithms (never chosen by the token alone), issuer, audience, and `exp` (required) with a
 * clock tolerance. The user comes from `userClaim`, the groups from the `groupsClaim` path.
 */
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, importSPKI, jwtVerify, type CryptoKey, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { JwtIdentityConfig } from '../config/access-schema.ts';
import type { Clock, Logger } from '../core/ports.ts';
import { bearerToken, looksLikeJwt } from './bearer.ts';
import { ABSENT, isValidUserName, normaliseGroups, type Verifier, type VerifyOutcome } from './types.ts';

type KeySource = Uint8Array | JWTVerifyGetKey;

function keySource(cfg: JwtIdentityConfig): KeySource {
  if (cfg.secret !== undefined) return new TextEncoder().encode(cfg.secret);
  if (cfg.jwksUrl !== undefined) {
    return createRemoteJWKSet(new URL(cfg.jwksUrl), {
      cacheMaxAge: cfg.jwksCacheMaxAgeMs,
      cooldownDuration: cfg.jwksCooldownMs,
      timeoutDuration: cfg.jwksTimeoutMs,
    });
  }
  if (cfg.jwks !== undefined) return createLocalJWKSet(cfg.jwks);
  const pem = cfg.publicKeyPem as string;
  const byAlg = new Map<string, Promise<CryptoKey>>();
  return async (header) => {
    const alg = header.alg ?? '';
    let key = byAlg.get(alg);
    if (key === undefined) {
      key = importSPKI(pem, alg);
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
  if (!(err instanceof joseErrors.JOSEError)) {
    // fetch() of the JWKS failed (refused, DNS, TLS): not the token's fault.
    return { reason: 'the key set could not be fetched', unavailable: true };
  }
  switch (err.code) {
    case 'ERR_JWT_EXPIRED': return { reason: 'token expired', unavailable: false };
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const claim = (err as joseErrors.JWTClaimValidationFailed).claim;
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

export function createJwtVerifier(cfg: JwtIdentityConfig, challenge: string, clock: Clock, log: Logger): Verifier {
  const key = keySource(cfg);
  const options = {
    issuer: cfg.issuer,
    audience: cfg.audience,
    algorithms: [...cfg.algorithms],
    // A token that never expires would be a password in disguise.
    requiredClaims: ['exp'],
    clockTolerance: cfg.clockToleranceMs / 1000,
  };
  let droppedWarned = false;

  return {
    kind: 'jwt',
    challenge,
    async verify(credentials): Promise<VerifyOutcome> {
      const token = bearerToken(credentials.authorization);
      if (token === undefined || !looksLikeJwt(token)) return ABSENT;
      let payload: JWTPayload;
      try {
        const verified = typeof key === 'function'
          ? await jwtVerify(token, key, { ...options, currentDate: new Date(clock.now()) })
          : await jwtVerify(token, key, { ...options, currentDate: new Date(clock.now()) });
        payload = verified.payload;
      } catch (err) {
        const { reason, unavailable } = describeJoseError(err);
        if (unavailable) log.warn({ jwksUrl: cfg.jwksUrl, reason }, 'JWT key set unavailable');
        return { kind: 'invalid', reason, unavailable };
      }
      const user = claimAt(payload, cfg.userClaim);
      if (typeof user !== 'string' || !isValidUserName(user)) {
        return { kind: 'invalid', reason: `claim "${cfg.userClaim}" is missing or not a valid user name` };
      }
      const raw = claimAt(payload, cfg.groupsClaim);
      const claimed = typeof raw === 'string' ? raw.split(/[\s,]+/).filter((g) => g.length > 0) : Array.isArray(raw) ? raw : [];
      const { groups, dropped } = normaliseGroups(claimed as unknown[]);
      if (dropped > 0 && !droppedWarned) {
        droppedWarned = true;
        log.warn({ issuer: cfg.issuer, groupsClaim: cfg.groupsClaim, dropped }, 'JWT groups that cannot be named in a URL are ignored');
      }
      return { kind: 'verified', identity: { user, groups, via: 'jwt' } };
    },
  };
}
