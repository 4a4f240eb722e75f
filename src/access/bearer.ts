/**
 * Parsing of the `Authorization` header (RFC 9110 §11.6.2). The scheme is case-insensitive;
 * the credentials are a token68 (RFC 9110 §11.2). Anything else is not ours to interpret.
 */

const BASIC_RE = /^Basic +([A-Za-z0-9+/]+=*) *$/i;
/** Longer tokens are refused before any work (no legitimate token comes near it). */
export const MAX_TOKEN_CHARS = 16 * 1024;

/** What a character (code < 128) may be in a token: bits below. */
const TOKEN68 = 1;
/** base64url: a character of a JWS part. */
const B64URL = 2;
const CHAR_CLASS = (() => {
  const t = new Uint8Array(128);
  for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_') t[c.charCodeAt(0)] = TOKEN68 | B64URL;
  for (const c of '.~+/') t[c.charCodeAt(0)] = TOKEN68;
  return t;
})();

/**
 * The bearer token of `Authorization: Bearer <token>`, or undefined: `Bearer` in any case,
 * one or more spaces, a token68 (`[A-Za-z0-9-._~+/]+=*`), optional trailing spaces.
 *
 * A loop over a table rather than the equivalent case-insensitive regular expression (kept in
 * test/access/unit.test.ts as the reference): this runs on every request that carries a
 * token, and a JWT is a few hundred characters; the regex cost about three times as much.
 */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || !isBearerScheme(authorization)) return undefined;
  const n = authorization.length;
  let i = 7;
  while (i < n && authorization.charCodeAt(i) === 0x20) i++;
  const start = i;
  for (; i < n; i++) {
    const c = authorization.charCodeAt(i);
    if (c >= 128 || (CHAR_CLASS[c]! & TOKEN68) === 0) break;
  }
  if (i === start) return undefined;
  while (i < n && authorization.charCodeAt(i) === 0x3d /* = */) i++;
  const end = i;
  while (i < n && authorization.charCodeAt(i) === 0x20) i++;
  if (i !== n) return undefined;
  return authorization.slice(start, end);
}

/** `Bearer ` (in any case) at the start, within the length bounds of a token. */
function isBearerScheme(authorization: string): boolean {
  const n = authorization.length;
  if (n > MAX_TOKEN_CHARS || n < 8) return false;
  // `| 0x20` lower-cases an ASCII letter and maps no other code unit onto one of these.
  return (authorization.charCodeAt(0) | 0x20) === 0x62 /* b */ && (authorization.charCodeAt(1) | 0x20) === 0x65 /* e */
    && (authorization.charCodeAt(2) | 0x20) === 0x61 /* a */ && (authorization.charCodeAt(3) | 0x20) === 0x72 /* r */
    && (authorization.charCodeAt(4) | 0x20) === 0x65 /* e */ && (authorization.charCodeAt(5) | 0x20) === 0x72 /* r */
    && authorization.charCodeAt(6) === 0x20;
}

/**
 * What bearerToken would return if the token's characters are valid, found without checking
 * them: the text between the spaces after `Bearer` and the spaces at the end (undefined when
 * there is no such text, or a space inside it). For a cache lookup only: a hit is a token
 * that bearerToken accepted before, so its characters were checked then; a miss goes through
 * bearerToken. Whenever bearerToken returns a token, this returns the same one.
 */
export function bearerTokenUnchecked(authorization: string | undefined): string | undefined {
  if (authorization === undefined || !isBearerScheme(authorization)) return undefined;
  const n = authorization.length;
  let start = 7;
  while (start < n && authorization.charCodeAt(start) === 0x20) start++;
  if (start === n) return undefined;
  let end = authorization.indexOf(' ', start);
  if (end === -1) end = n;
  else for (let i = end; i < n; i++) if (authorization.charCodeAt(i) !== 0x20) return undefined;
  return authorization.slice(start, end);
}

/**
 * Does this bearer token look like a JWT (so a JWT verifier should judge it): a JWS in compact
 * serialisation, three base64url parts of which the first two are not empty (RFC 7515 §7.1)?
 * Returns the index of the second dot (where the signature starts, less one), or -1.
 */
export function jwsSecondDot(token: string): number {
  let first = -1;
  let second = -1;
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    if (c === 0x2e /* . */) {
      if (first === -1) {
        if (i === 0) return -1;
        first = i;
      } else if (second === -1) {
        if (i === first + 1) return -1;
        second = i;
      } else return -1;
    } else if (c >= 128 || (CHAR_CLASS[c]! & B64URL) === 0) return -1;
  }
  return second;
}

/** Does this bearer token look like a JWT (see jwsSecondDot)? */
export function looksLikeJwt(token: string): boolean {
  return jwsSecondDot(token) !== -1;
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
