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
import { keysEqual, parseScrypt, sha256Key, sha256KeyOfHex, verifyScrypt, type ParsedScrypt } from './passwords.ts';
import { ABSENT, normaliseGroups, type VerifiedIdentity, type Verifier, type VerifyOutcome } from './types.ts';

interface ShaEntry {
  /** The configured SHA-256, as sha256Key text. */
  readonly key: string;
  /** Built once: outcomes are read-only, so every request that matches shares it. */
  readonly outcome: VerifyOutcome;
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
    if (t.hash.startsWith('sha256:')) sha.push({ key: sha256KeyOfHex(t.hash.slice(7)), outcome: { kind: 'verified', identity } });
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
  const outcomeOf = (verdict: VerifiedIdentity | 'none'): VerifyOutcome => (verdict === 'none' ? ABSENT : { kind: 'verified', identity: verdict });
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
    // Synchronous unless a slow hash must run: a warm request awaits nothing here.
    verify(credentials): VerifyOutcome | Promise<VerifyOutcome> {
      const token = bearerToken(credentials.authorization);
      if (token === undefined) return ABSENT;
      const key = sha256Key(token);
      // Compare against every entry, without stopping at a match, so the time taken does
      // not tell which entry (or whether an early one) matched.
      let found: VerifyOutcome | undefined;
      for (const e of sha) {
        if (keysEqual(key, e.key)) found ??= e.outcome;
      }
      if (found !== undefined) return found;
      if (slow.length === 0) return ABSENT;
      const cached = verdicts.get(key);
      if (cached !== undefined) return outcomeOf(cached);
      return flights.run(key, () => slowCheck(key, token)).then(outcomeOf);
    },
  };
}
