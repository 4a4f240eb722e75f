/**
 * HTTP Basic (RFC 7617) against scrypt-hashed passwords. A known user costs one scrypt; an
 * unknown user costs one too (against a dummy hash with the same parameters), so response
 * times do not reveal which user names exist. Successful checks are remembered for a short
 * while (by a SHA-256 of user and password, in memory only), because browsers resend Basic
 * credentials on every request and a 32 MiB scrypt per request would make the proxy slow.
 */
import { createHash } from 'node:crypto';
import type { BasicIdentityConfig } from '../config/access-schema.ts';
import type { Clock } from '../core/ports.ts';
import { basicCredentials } from './bearer.ts';
import { parseScrypt, verifyScrypt, type ParsedScrypt } from './passwords.ts';
import { ABSENT, normaliseGroups, type VerifiedIdentity, type Verifier, type VerifyOutcome } from './types.ts';

interface UserEntry {
  readonly hash: ParsedScrypt;
  readonly identity: VerifiedIdentity;
}

const CACHE_MAX = 1000;
/** How long a verified user:password pair is trusted without a new scrypt. */
export const BASIC_CACHE_TTL_MS = 5 * 60_000;

export function createBasicVerifier(cfg: BasicIdentityConfig, challenge: string, clock: Clock): Verifier {
  const users = new Map<string, UserEntry>();
  for (const u of cfg.users) {
    const parsed = parseScrypt(u.passwordHash);
    if (typeof parsed === 'string') throw new Error(`basic user ${u.user}: ${parsed}`);
    users.set(u.user, { hash: parsed, identity: { user: u.user, groups: normaliseGroups(u.groups).groups, via: 'basic' } });
  }
  const first = users.values().next().value as UserEntry;
  const dummy: ParsedScrypt = { params: first.hash.params, salt: Buffer.alloc(first.hash.salt.length, 1), hash: Buffer.alloc(first.hash.hash.length, 2) };
  const verifiedAt = new Map<string, { identity: VerifiedIdentity; until: number }>();

  return {
    kind: 'basic',
    challenge,
    async verify(credentials): Promise<VerifyOutcome> {
      const basic = basicCredentials(credentials.authorization);
      if (basic === undefined) return ABSENT;
      if (basic === 'malformed') return { kind: 'invalid', reason: 'malformed Basic credentials' };
      const key = createHash('sha256').update(basic.user).update('\0').update(basic.password).digest('hex');
      const now = clock.now();
      const cached = verifiedAt.get(key);
      if (cached !== undefined && cached.until > now) return { kind: 'verified', identity: cached.identity };
      const entry = users.get(basic.user);
      const ok = await verifyScrypt(basic.password, entry?.hash ?? dummy);
      if (!ok || entry === undefined) return { kind: 'invalid', reason: 'wrong user name or password' };
      if (verifiedAt.size >= CACHE_MAX) verifiedAt.clear();
      verifiedAt.set(key, { identity: entry.identity, until: now + BASIC_CACHE_TTL_MS });
      return { kind: 'verified', identity: entry.identity };
    },
  };
}
