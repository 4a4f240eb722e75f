/**
 * From an OIDC provider's claims to the proxy's user and groups: the user claim, the groups
 * claim at a dot path (`groups`, `realm_access.roles`), an optional prefix stripped, an
 * optional map to proxy group names; then the same normalisation as every identity (only
 * names valid in a URL are kept).
 */
import type { OidcIdentityConfig } from '../../config/access-schema.ts';
import { isValidUserName, normaliseGroups } from '../types.ts';

/** Reads a dot path out of the claims; own properties only. */
export function claimAt(claims: unknown, path: string): unknown {
  let cur: unknown = claims;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, part)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

export interface MappedClaims {
  readonly user: string;
  readonly groups: string[];
  /** Claimed groups that could not be named in a URL and were not mapped. */
  readonly dropped: number;
}

export function mapClaims(cfg: Pick<OidcIdentityConfig, 'userClaim' | 'groupsClaim' | 'groupsPrefix' | 'groupsMap'>, claims: unknown): MappedClaims | string {
  const user = claimAt(claims, cfg.userClaim);
  if (typeof user !== 'string' || !isValidUserName(user)) return `claim "${cfg.userClaim}" is missing or not a valid user name`;
  const raw = claimAt(claims, cfg.groupsClaim);
  const claimed = typeof raw === 'string' ? raw.split(/[\s,]+/).filter((g) => g.length > 0) : Array.isArray(raw) ? raw : [];
  const mapped = claimed.map((g: unknown) => {
    if (typeof g !== 'string') return g;
    const stripped = cfg.groupsPrefix !== undefined && g.startsWith(cfg.groupsPrefix) ? g.slice(cfg.groupsPrefix.length) : g;
    return Object.hasOwn(cfg.groupsMap, stripped) ? cfg.groupsMap[stripped] : stripped;
  });
  const { groups, dropped } = normaliseGroups(mapped);
  return { user, groups, dropped };
}
