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

/**
 * Runs the chain. Synchronous as long as every verifier answers synchronously (a token
 * compared by its SHA-256, a JWT found in the verdict cache: the warm path), so a request
 * awaits a promise only when a verifier really has to wait (a slow hash, a signature check).
 */
export function verifyChain(verifiers: readonly Verifier[], credentials: RequestCredentials): ChainOutcome | Promise<ChainOutcome> {
  return step(verifiers, credentials, 0, undefined);
}

function step(verifiers: readonly Verifier[], credentials: RequestCredentials, from: number, firstInvalid: ChainOutcome | undefined): ChainOutcome | Promise<ChainOutcome> {
  for (let i = from; i < verifiers.length; i++) {
    const v = verifiers[i]!;
    let out: VerifyOutcome | Promise<VerifyOutcome>;
    try {
      out = v.verify(credentials);
    } catch (err) {
      out = refusedBy(err);
    }
    if (out instanceof Promise) {
      // The rest of the chain continues once this verifier has answered.
      return out.catch(refusedBy).then((o) => {
        const verdict = judge(o, v, firstInvalid);
        return verdict.done ? verdict.outcome : step(verifiers, credentials, i + 1, verdict.firstInvalid);
      });
    }
    // The warm path's answer, without the verdict object judge() builds.
    if (out.kind === 'verified') return out;
    const verdict = judge(out, v, firstInvalid);
    if (verdict.done) return verdict.outcome;
    firstInvalid = verdict.firstInvalid;
  }
  if (firstInvalid !== undefined) return firstInvalid;
  if (credentials.authorization !== undefined) {
    return { kind: 'invalid', reason: 'credentials not recognised', unavailable: false, via: 'unknown' };
  }
  return ANONYMOUS_OUTCOME;
}

const ANONYMOUS_OUTCOME: ChainOutcome = { kind: 'anonymous', identity: ANONYMOUS };

/** What a verifier that threw means (rethrows what is not a verdict on the credential). */
function refusedBy(err: unknown): VerifyOutcome {
  // Too many credentials being hashed: a 503 for this request, not a verdict on it.
  if (isSmartProxyError(err) && err.code === 'SP_ACCESS_BUSY') throw err;
  // A verifier bug must not turn into a 500 or, worse, an anonymous pass.
  return { kind: 'invalid', reason: `verification failed (${err instanceof Error ? err.message : String(err)})` };
}

/** One verifier's answer: the chain's outcome (verified), or the first invalid answer so far. */
function judge(out: VerifyOutcome, v: Verifier, firstInvalid: ChainOutcome | undefined):
  { readonly done: true; readonly outcome: ChainOutcome } | { readonly done: false; readonly firstInvalid: ChainOutcome | undefined } {
  if (out.kind === 'verified') return { done: true, outcome: out };
  if (out.kind === 'invalid') firstInvalid ??= { kind: 'invalid', reason: out.reason, unavailable: out.unavailable === true, via: v.kind };
  return { done: false, firstInvalid };
}

/** The distinct challenges of the verifiers, for one `WWW-Authenticate` header. */
export function challengesOf(verifiers: readonly Verifier[]): string[] {
  return [...new Set(verifiers.map((v) => v.challenge).filter((c): c is string => c !== undefined))];
}
