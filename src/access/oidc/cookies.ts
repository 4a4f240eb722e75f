/**
 * Cookie header parsing and Set-Cookie building (RFC 6265), just what sessions need.
 */

/** Every value of cookie `name` in the request's Cookie header(s), in order. */
export function cookieValues(headers: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (const h of headers) {
    for (const pair of h.split(';')) {
      const eq = pair.indexOf('=');
      if (eq === -1) continue;
      if (pair.slice(0, eq).trim() === name) out.push(pair.slice(eq + 1).trim());
    }
  }
  return out;
}

/** Cookie names in the request starting with `prefix`, with their values. */
export function cookiesWithPrefix(headers: readonly string[], prefix: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const h of headers) {
    for (const pair of h.split(';')) {
      const eq = pair.indexOf('=');
      if (eq === -1) continue;
      const n = pair.slice(0, eq).trim();
      if (n.startsWith(prefix)) out.push([n, pair.slice(eq + 1).trim()]);
    }
  }
  return out;
}

export interface CookieAttributes {
  readonly path: string;
  readonly secure: boolean;
  /** Seconds; 0 deletes the cookie; undefined: a browser-session cookie. */
  readonly maxAgeS?: number | undefined;
}

/** HttpOnly and SameSite=Lax always: scripts never see sessions, and a top-level return from the provider still carries them. */
export function setCookie(name: string, value: string, attrs: CookieAttributes): string {
  let c = `${name}=${value}; Path=${attrs.path}; HttpOnly; SameSite=Lax`;
  if (attrs.secure) c += '; Secure';
  if (attrs.maxAgeS !== undefined) c += `; Max-Age=${Math.max(0, Math.floor(attrs.maxAgeS))}`;
  return c;
}

