/**
 * Tries the configured verifiers in order. The first that verifies wins. Otherwise the
 * first `invalid` answer is the result; and a request that sent an `Authorization` header
 * nobody recognised is invalid too, so that a mistyped token is a 401, never a silent
 * anonymous request.
 */
import { isSmartProxyError } from '../core/errors.ts';
import { ANONYMOUS } from './policy.ts';
import type { RequestCredentials, VerifiedIdentity, Verifier, VerifyOutcome } from './types.ts';

export type ChainOutcome =
  | { readonly kind: 'verified'; readonly identity: VerifiedIdentity }
  | { readonly kind: 'anonymous'; readonly identity: VerifiedIdentity }
  | { readonly kind: 'invalid'; readonly reason: string; readonly unavailable: boolean; readonly via: Verifier['kind'] | 'unknown' };

export async function verifyChain(verifiers: readonly Verifier[], credentials: RequestCredentials): Promise<ChainOutcome> {
  let firstInvalid: ChainOutcome | undefined;
  for (const v of verifiers) {
    let out: VerifyOutcome;
    try {
      out = await v.verify(credentials);
    } catch (err) {
      // Too many credentials being hashed: a 503 for this request, not a verdict on it.
      if (isSmartProxyError(err) && err.code === 'SP_ACCESS_BUSY') throw err;
      // A verifier bug must not turn into a 500 or, worse, an anonymous pass.
      out = { kind: 'invalid', reason: `verification failed (${err instanceof Error ? err.message : String(err)})` };
    }
    if (out.kind === 'verified') return out;
    if (out.kind === 'invalid') firstInvalid ??= { kind: 'invalid', reason: out.reason, unavailable: out.unavailable === true, via: v.kind };
  }
  if (firstInvalid !== undefined) return firstInvalid;
  if (credentials.authorization !== undefined) {
    return { kind: 'invalid', reason: 'credentials not recognised', unavailable: false, via: 'unknown' };
  }
  return { kind: 'anonymous', identity: ANONYMOUS };
}

/** The distinct challenges of the verifiers, for one `WWW-Authenticate` header. */
export function challengesOf(verifiers: readonly Verifier[]): string[] {
  return [...new Set(verifiers.map((v) => v.challenge).filter((c): c is string => c !== undefined))];
}
