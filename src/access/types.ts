/**
 * The shapes the access layer works with. Pure data: no node:http here, so that the policy,
 * the verifiers and the limits are tested without sockets (src/proxy/identify.ts adapts a
 * node:http request to these).
 */
import { GROUP_NAME_RE } from '../config/names.ts';

export { GROUP_NAME_RE, isValidUserName } from '../config/names.ts';

/** How an identity was established. */
export type CredentialKind = 'token' | 'basic' | 'jwt' | 'header' | 'oidc' | 'anonymous';

/** A caller as far as the proxy could verify it. */
export interface VerifiedIdentity {
  /** The user name; undefined only for anonymous callers. */
  readonly user: string | undefined;
  /** Groups the identity really holds: sorted, unique, each valid in a URL. */
  readonly groups: readonly string[];
  readonly via: CredentialKind;
}

/** What a request carries that a verifier may look at. Header names are lower case. */
export interface RequestCredentials {
  /** The `Authorization` header, if exactly one was sent. */
  readonly authorization: string | undefined;
  /** The peer address of the TCP connection (never a forwarded one). */
  readonly remoteAddress: string | undefined;
  /** Every value of a header (lower-case name), in order; [] when absent. */
  header(name: string): readonly string[];
}

/**
 * A verifier's answer:
 * - `absent`: nothing this verifier understands is in the request (try the next one);
 * - `verified`: the credential checked out;
 * - `invalid`: a credential of this kind was presented and did not check out. `reason` is
 *   for the audit log and the 401's detail; it never contains the credential.
 */
export type VerifyOutcome =
  | { readonly kind: 'absent' }
  | { readonly kind: 'verified'; readonly identity: VerifiedIdentity }
  | { readonly kind: 'invalid'; readonly reason: string; readonly unavailable?: boolean };

/** One configured identity kind. Verifiers are tried in configuration order. */
export interface Verifier {
  readonly kind: Exclude<CredentialKind, 'anonymous'>;
  /** The `WWW-Authenticate` challenge this kind answers a 401 with, if any. */
  readonly challenge: string | undefined;
  verify(credentials: RequestCredentials): VerifyOutcome | Promise<VerifyOutcome>;
  /** Real verifications done (signature checks, slow hashes), not cache hits: for tests and metrics. */
  readonly stats?: { readonly verifications: number };
  /** Releases timers or caches, if any. */
  close?(): void;
}

export const ABSENT: VerifyOutcome = { kind: 'absent' };

/** Sorted, unique, valid group names out of what an identity source claims; others are dropped. */
export function normaliseGroups(claimed: Iterable<unknown>): { groups: string[]; dropped: number } {
  const out = new Set<string>();
  let dropped = 0;
  for (const g of claimed) {
    if (typeof g === 'string' && GROUP_NAME_RE.test(g)) out.add(g);
    else dropped++;
  }
  return { groups: [...out].sort(), dropped };
}
