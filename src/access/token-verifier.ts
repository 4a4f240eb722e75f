/**
 * Static API tokens, sent as `Authorization: Bearer <token>` and stored in the config as
 * `sha256:<hex>` (or, at a cost, `$scrypt$…`). A token that matches no entry is `absent`
 * for this verifier, so that a later one (JWT) may judge it; the chain turns a credential
 * nobody recognised into a 401.
 */
import type { TokenIdentityConfig } from '../config/access-schema.ts';
import { systemClock } from '../core/clock.ts';
import { bearerToken } from './bearer.ts';
import { defaultCredentialWork, SingleFlight, VerdictCache, type CredentialWork } from './credential-cache.ts';
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

export function createTokenVerifier(cfg: TokenIdentityConfig, challenge: string, work: CredentialWork = defaultCredentialWork(systemClock)): Verifier {
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
  // Verdicts on scrypt-hashed tokens, keyed by the token's SHA-256 (memory only, bounded,
  // expiring): a token presented again costs no scrypt, whether it matched or not.
  const verdicts = new VerdictCache<VerifiedIdentity | 'none'>(work.cacheMaxEntries, work.clock);
  const flights = new SingleFlight<VerifiedIdentity | 'none'>();
  const stats = { verifications: 0 };
  const slowCheck = async (key: string, token: string): Promise<VerifiedIdentity | 'none'> => {
    let found: VerifiedIdentity | 'none' = 'none';
    for (const e of slow) {
      if (await work.gate.run(() => {
        stats.verifications++;
        return verifyScrypt(token, e.hash);
      })) {
        found = e.identity;
        break;
      }
    }
    verdicts.set(key, found, work.clock.now() + (found === 'none' ? work.refusedTtlMs : work.verifiedTtlMs));
    return found;
  };

  return {
    kind: 'token',
    challenge,
    stats,
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
      const key = digest.toString('base64url');
      const verdict = verdicts.get(key) ?? await flights.run(key, () => slowCheck(key, token));
      return verdict === 'none' ? ABSENT : { kind: 'verified', identity: verdict };
    },
  };
}
