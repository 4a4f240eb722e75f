/**
 * HTTP Basic (RFC 7617) against scrypt-hashed passwords. A known user costs one scrypt; an
 * unknown user costs one too (against a dummy hash with the same parameters), so response
 * times do not reveal which user names exist.
 *
 * Bounded work (credential-cache.ts): browsers resend Basic credentials on every request,
 * and an attacker can send a new one on every request. Verdicts, verified and refused, are
 * remembered for a short while by a SHA-256 of user and password (memory only, bounded LRU);
 * identical credentials arriving together share one scrypt; every scrypt goes through the
 * shared gate, which caps how many run at once and answers 503 past its queue.
 */
import type { BasicIdentityConfig } from '../config/access-schema.ts';
import type { Clock } from '../core/ports.ts';
import { basicCredentials } from './bearer.ts';
import { credentialKey, defaultCredentialWork, SingleFlight, VerdictCache, type CredentialWork } from './credential-cache.ts';
import { parseScrypt, verifyScrypt, type ParsedScrypt } from './passwords.ts';
import { ABSENT, normaliseGroups, type VerifiedIdentity, type Verifier, type VerifyOutcome } from './types.ts';

interface UserEntry {
  readonly hash: ParsedScrypt;
  readonly identity: VerifiedIdentity;
}

const REFUSED: VerifyOutcome = { kind: 'invalid', reason: 'wrong user name or password' };

export function createBasicVerifier(cfg: BasicIdentityConfig, challenge: string, clock: Clock, work: CredentialWork = defaultCredentialWork(clock)): Verifier {
  const users = new Map<string, UserEntry>();
  for (const u of cfg.users) {
    const parsed = parseScrypt(u.passwordHash);
    if (typeof parsed === 'string') throw new Error(`basic user ${u.user}: ${parsed}`);
    users.set(u.user, { hash: parsed, identity: { user: u.user, groups: normaliseGroups(u.groups).groups, via: 'basic' } });
  }
  const first = users.values().next().value as UserEntry;
  const dummy: ParsedScrypt = { params: first.hash.params, salt: Buffer.alloc(first.hash.salt.length, 1), hash: Buffer.alloc(first.hash.hash.length, 2) };
  const verdicts = new VerdictCache<VerifyOutcome>(work.cacheMaxEntries, work.clock);
  const flights = new SingleFlight<VerifyOutcome>();
  const stats = { verifications: 0 };

  const check = async (key: string, user: string, password: string): Promise<VerifyOutcome> => {
    const entry = users.get(user);
    const ok = await work.gate.run(() => {
      stats.verifications++;
      return verifyScrypt(password, entry?.hash ?? dummy);
    });
    const outcome: VerifyOutcome = ok && entry !== undefined ? { kind: 'verified', identity: entry.identity } : REFUSED;
    const ttl = outcome.kind === 'verified' ? work.verifiedTtlMs : work.refusedTtlMs;
    verdicts.set(key, outcome, work.clock.now() + ttl);
    return outcome;
  };

  return {
    kind: 'basic',
    challenge,
    stats,
    async verify(credentials): Promise<VerifyOutcome> {
      const basic = basicCredentials(credentials.authorization);
      if (basic === undefined) return ABSENT;
      if (basic === 'malformed') return { kind: 'invalid', reason: 'malformed Basic credentials' };
      const key = credentialKey('basic', basic.user, basic.password);
      const cached = verdicts.get(key);
      if (cached !== undefined) return cached;
      return flights.run(key, () => check(key, basic.user, basic.password));
    },
  };
}
