/**
 * An identity asserted by an authenticating front proxy (oauth2-proxy, Pomerium, a corporate
 * SSO gateway) in request headers. Believed only when the TCP peer is one of the configured
 * addresses: from anyone else the headers are ignored here, and the data plane strips them
 * (with their underscore variants) before forwarding.
 */
import type { HeaderIdentityConfig } from '../config/access-schema.ts';
import { ABSENT, isValidUserName, normaliseGroups, type Verifier, type VerifyOutcome } from './types.ts';

export function createHeaderVerifier(cfg: HeaderIdentityConfig, isTrustedSource: (address: string | undefined) => boolean): Verifier {
  const userHeader = cfg.userHeader.toLowerCase();
  const groupsHeader = cfg.groupsHeader.toLowerCase();
  return {
    kind: 'header',
    challenge: undefined,
    verify(credentials): VerifyOutcome {
      if (!isTrustedSource(credentials.remoteAddress)) return ABSENT;
      const users = credentials.header(userHeader);
      if (users.length === 0) return ABSENT;
      // Two values mean someone upstream appended instead of replacing: believe neither.
      if (users.length > 1) return { kind: 'invalid', reason: `more than one ${cfg.userHeader} header` };
      const user = (users[0] as string).trim();
      if (!isValidUserName(user)) return { kind: 'invalid', reason: `${cfg.userHeader} is not a valid user name` };
      const parts = credentials.header(groupsHeader).flatMap((v) => v.split(cfg.groupsSeparator)).map((g) => g.trim()).filter((g) => g.length > 0);
      return { kind: 'verified', identity: { user, groups: normaliseGroups(parts).groups, via: 'header' } };
    },
  };
}
