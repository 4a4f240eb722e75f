/**
 * The access decision for one request: pure, no I/O. Given the verified identity, the groups
 * the URL names (or the `-` placeholder) and the resource's policy, it says which groups the
 * request acts with, or why not. The URL never grants: it can only narrow what the identity
 * really holds.
 *
 * Order (docs/concepts/access.md):
 * 1. visibility: could this identity use the resource at all (its held groups satisfy the
 *    policy)? If not, the resource is "not found" (or "denied" when it reveals existence);
 * 2. every group named in the URL must be held (403 naming the ones that are not; this
 *    names only what the caller asked for, never which groups exist);
 * 3. the groups acted with (named, or all held for `-`) must satisfy the policy (403).
 */
import type { VerifiedIdentity } from './types.ts';

export interface ResourcePolicy {
  readonly public: boolean;
  /** At least one of these groups must be acted with. */
  readonly anyOf?: readonly string[] | undefined;
  /** All of these groups must be acted with. */
  readonly allOf?: readonly string[] | undefined;
  /** Answer "denied" instead of "not found" to callers who may not see the resource. */
  readonly revealExistence: boolean;
}

export const ANONYMOUS: VerifiedIdentity = Object.freeze({ user: undefined, groups: Object.freeze([]), via: 'anonymous' });

export type Decision =
  | { readonly allowed: true; readonly acting: readonly string[] }
  | { readonly allowed: false; readonly outcome: 'not-found' | 'denied'; readonly reason: string; readonly missing?: readonly string[] };

/** Do these groups (sorted or not) meet the policy's group requirements? */
export function satisfies(policy: ResourcePolicy, groups: readonly string[]): boolean {
  if (policy.public) return true;
  // Scans instead of a Set built per call (this runs on every request): the policy's lists are
  // a few configured names, so the work is a few passes over the groups.
  if (policy.anyOf !== undefined && !policy.anyOf.some((g) => groups.includes(g))) return false;
  if (policy.allOf !== undefined && !policy.allOf.every((g) => groups.includes(g))) return false;
  return true;
}

export function decide(identity: VerifiedIdentity, url: { readonly groups: readonly string[]; readonly allGroups: boolean }, policy: ResourcePolicy): Decision {
  if (!policy.public && identity.via === 'anonymous') {
    return { allowed: false, outcome: policy.revealExistence ? 'denied' : 'not-found', reason: 'the resource needs a verified identity' };
  }
  // Requirements only grow with the groups held, so if all held groups do not satisfy the
  // policy, no URL could: the caller may not see the resource.
  if (!satisfies(policy, identity.groups)) {
    return {
      allowed: false,
      outcome: policy.revealExistence ? 'denied' : 'not-found',
      reason: 'the groups you hold do not satisfy the resource\'s access policy',
    };
  }
  if (url.allGroups) return { allowed: true, acting: identity.groups };
  const held = new Set(identity.groups);
  const missing = url.groups.filter((g) => !held.has(g));
  if (missing.length > 0) {
    return { allowed: false, outcome: 'denied', reason: `you do not hold the group(s) named in the URL: ${missing.join(', ')}`, missing };
  }
  if (!satisfies(policy, url.groups)) {
    return {
      allowed: false, outcome: 'denied',
      reason: 'the groups named in the URL do not satisfy the resource\'s access policy (name more of the groups you hold, or "-" for all of them)',
    };
  }
  return { allowed: true, acting: url.groups };
}
