/**
 * Parsing of the `Authorization` header (RFC 9110 §11.6.2). The scheme is case-insensitive;
 * the credentials are a token68 (RFC 9110 §11.2). Anything else is not ours to interpret.
 */

const BEARER_RE = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;
const BASIC_RE = /^Basic +([A-Za-z0-9+/]+=*) *$/i;
/** A JWS in compact serialisation: three base64url parts (RFC 7515 §7.1). */
const JWS_COMPACT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
/** Longer tokens are refused before any work (no legitimate token comes near it). */
export const MAX_TOKEN_CHARS = 16 * 1024;

/** The bearer token of `Authorization: Bearer <token>`, or undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length > MAX_TOKEN_CHARS) return undefined;
  return BEARER_RE.exec(authorization)?.[1];
}

/** Does this bearer token look like a JWT (so a JWT verifier should judge it)? */
export function looksLikeJwt(token: string): boolean {
  return JWS_COMPACT_RE.test(token);
}

/**
 * The user id and password of `Authorization: Basic …` (RFC 7617), decoded as UTF-8, or
 * undefined when the header is not Basic. Returns `'malformed'` for a Basic header that
 * does not decode to `user:password`.
 */
export function basicCredentials(authorization: string | undefined): { user: string; password: string } | 'malformed' | undefined {
  if (authorization === undefined || authorization.length > MAX_TOKEN_CHARS) return undefined;
  const m = BASIC_RE.exec(authorization);
  if (m === null) return /^Basic(?: |$)/i.test(authorization) ? 'malformed' : undefined;
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return 'malformed';
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}
