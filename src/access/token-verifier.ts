/**
 * Static API tokens, sent as `Authorization: Bearer <token>` and stored in the config as
 * `sha256:<hex>` (or, at a cost, `$scrypt$…`). A token that matches no entry is `absent`
 * for this verifier, so that a later one (JWT) may judge it; the chain turns a credential
 * nobody recognised into a 401.
 */
import type { TokenIdentityConfig } from '../config/access-schema.ts';
import { bearerToken } from './bearer.ts';
import { digestsEqual, parseScrypt, sha256Digest, verifyScrypt, type ParsedScrypt } from './passwords.ts';
import { ABSENT, normaliseGroups, type VerifiedIdentity, type Verifier, type VerifyOutcome } from './types.ts';

interface ShaEntry {
  readonly digest: Buffer;
  readonly identity: VerifiedIdentity;
}

interface ScryptEntry {
  readonly hash: ParsedScrypt;
  readonly identity: VerifiedIdentity;
}

/** Positive results of scrypt-hashed tokens, keyed by the token's SHA-256 (memory only). */
const SCRYPT_CACHE_MAX = 1000;

export function createTokenVerifier(cfg: TokenIdentityConfig, challenge: string): Verifier {
  const sha: ShaEntry[] = [];
  const slow: ScryptEntry[] = [];
  for (const t of cfg.tokens) {
    const identity: VerifiedIdentity = { user: t.user, groups: normaliseGroups(t.groups).groups, via: 'token' };
    if (t.hash.startsWith('sha256:')) sha.push({ digest: Buffer.from(t.hash.slice(7), 'hex'), identity });
    else {
      const parsed = parseScrypt(t.hash);
      if (typeof parsed === 'string') throw new Error(`token for ${t.user}: ${parsed}`);
      slow.push({ hash: parsed, identity });
    }
  }
  const scryptHits = new Map<string, VerifiedIdentity>();

  return {
    kind: 'token',
    challenge,
    async verify(credentials): Promise<VerifyOutcome> {
      const token = bearerToken(credentials.authorization);
      if (token === undefined) return ABSENT;
      const digest = sha256Digest(token);
      // Compare against every entry, without stopping at a match, so the time taken does
      // not tell which entry (or whether an early one) matched.
      let found: VerifiedIdentity | undefined;
      for (const e of sha) {
        if (digestsEqual(digest, e.digest)) found ??= e.identity;
      }
      if (found !== undefined) return { kind: 'verified', identity: found };
      if (slow.length === 0) return ABSENT;
      const key = digest.toString('hex');
      const hit = scryptHits.get(key);
      if (hit !== undefined) return { kind: 'verified', identity: hit };
      for (const e of slow) {
        if (await verifyScrypt(token, e.hash)) {
          if (scryptHits.size >= SCRYPT_CACHE_MAX) scryptHits.clear();
          scryptHits.set(key, e.identity);
          return { kind: 'verified', identity: e.identity };
        }
      }
      return ABSENT;
    },
  };
}
