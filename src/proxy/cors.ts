/**
 * Cross-origin requests (CORS, WHATWG Fetch §3.2) for resources that configure `cors`.
 *
 * A page on another origin that calls an API behind the proxy with a bearer token makes the
 * browser send a preflight first: `OPTIONS` with `Origin` and `Access-Control-Request-Method`,
 * and never with credentials. Through the access steps that preflight is a 401, and the page
 * can never make its real request. With `cors` configured the proxy answers preflights itself,
 * before identify: nothing is woken, nothing reaches the backend, a cold resource stays cold
 * (a preflight is anonymous by design, so letting it through to the backend would let anyone
 * wake any resource). The real request then goes through every access step as usual.
 *
 * The proxy also adds the CORS fields to every answer for the resource, its own included
 * (401, 403, the 202 and 503 while it starts, 504), so that the page can read why a call
 * failed instead of seeing an opaque "CORS error". When `cors` is configured the proxy owns
 * these fields: the backend's `Access-Control-*` fields are dropped, so that the configured
 * policy is the one browsers see (two `Access-Control-Allow-Origin` fields fail every call).
 *
 * CORS decides which pages may read answers in a browser; it is no access control (any other
 * client sends what it likes): identities and groups still decide who gets an answer.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SmartProxyError } from '../core/errors.ts';

export interface CorsPolicy {
  /** Origins (scheme://host[:port], lower case, no trailing slash), or '*' for any. */
  readonly allowedOrigins: readonly string[];
  readonly allowedMethods: readonly string[];
  /** Request fields a page may send; undefined: whatever the preflight asks for. */
  readonly allowedHeaders: readonly string[] | undefined;
  readonly exposedHeaders: readonly string[];
  readonly allowCredentials: boolean;
  readonly maxAgeS: number;
}

/** The response fields the proxy owns for a resource with a CORS policy. */
const OWNED_PREFIX = 'access-control-';

/** Set on a response whose CORS fields the proxy wrote (see stripBackendCors). */
const OWNED: unique symbol = Symbol('smart-proxy.cors');
type Marked = ServerResponse & { [OWNED]?: true };

/** RFC 9110 token, as field names in Access-Control-Request-Headers are. */
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
/** More requested fields than any real page sends: a hostile preflight gets no echo past it. */
const MAX_REFLECTED_HEADERS = 64;

/** Lower-cased, without a trailing slash: `https://App.example/` and `https://app.example` are one origin. */
export function normalizeOrigin(origin: string): string {
  const o = origin.trim().toLowerCase();
  return o.endsWith('/') ? o.slice(0, -1) : o;
}

/** The policy from the validated config (origins normalized, methods and names as given). */
export function corsPolicy(cfg: {
  allowedOrigins: readonly string[]; allowedMethods: readonly string[]; allowedHeaders?: readonly string[] | undefined;
  exposedHeaders: readonly string[]; allowCredentials: boolean; maxAgeS: number;
}): CorsPolicy {
  return {
    allowedOrigins: cfg.allowedOrigins.map((o) => (o === '*' ? o : normalizeOrigin(o))),
    allowedMethods: [...cfg.allowedMethods],
    allowedHeaders: cfg.allowedHeaders === undefined ? undefined : [...cfg.allowedHeaders],
    exposedHeaders: [...cfg.exposedHeaders],
    allowCredentials: cfg.allowCredentials,
    maxAgeS: cfg.maxAgeS,
  };
}

/** A CORS preflight: OPTIONS naming the method the page wants to use (Fetch §4.8). */
export function isPreflight(req: IncomingMessage): boolean {
  return req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined;
}

/**
 * The CORS step for a request with an `Origin` to a resource with a policy: puts the CORS
 * fields on `res` for whatever answers it, and answers a preflight (true: answered). A
 * preflight from an origin not allowed is refused (403), also before anything is woken.
 */
export function applyCors(req: IncomingMessage, res: ServerResponse, policy: CorsPolicy, origin: string): boolean {
  const any = policy.allowedOrigins.includes('*');
  const allowed = any || policy.allowedOrigins.includes(normalizeOrigin(origin));
  const preflight = isPreflight(req);
  (res as Marked)[OWNED] = true;
  // The answer depends on Origin unless every origin gets the same '*': caches must know.
  if (!any) res.setHeader('vary', preflight ? 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers' : 'Origin');
  if (!allowed) {
    if (preflight) {
      throw new SmartProxyError('SP_CORS_ORIGIN_DENIED', `pages from origin "${origin.slice(0, 200)}" may not call this resource`, {
        data: { origin: origin.slice(0, 200) },
      });
    }
    // A simple request is answered as usual, without CORS fields: the browser keeps the
    // answer from the page (the request itself was possible from any form anyway).
    return false;
  }
  // Echoed as the browser sent it: it matched an allowed origin, and browsers compare the
  // serialized origin byte for byte.
  res.setHeader('access-control-allow-origin', any ? '*' : origin);
  if (policy.allowCredentials) res.setHeader('access-control-allow-credentials', 'true');
  if (!preflight) {
    if (policy.exposedHeaders.length > 0) res.setHeader('access-control-expose-headers', policy.exposedHeaders.join(', '));
    return false;
  }
  res.setHeader('access-control-allow-methods', policy.allowedMethods.join(', '));
  const headers = policy.allowedHeaders ?? reflectedHeaders(req.headers['access-control-request-headers']);
  if (headers.length > 0) res.setHeader('access-control-allow-headers', headers.join(', '));
  res.setHeader('access-control-max-age', String(policy.maxAgeS));
  res.setHeader('cache-control', 'no-store');
  res.writeHead(204);
  res.end();
  return true;
}

/** The field names a preflight asks for, when they are field names (anything else is left out). */
function reflectedHeaders(value: string | undefined): string[] {
  if (value === undefined) return [];
  const out: string[] = [];
  for (const part of value.split(',')) {
    const name = part.trim();
    if (TOKEN_RE.test(name)) out.push(name.toLowerCase());
    if (out.length === MAX_REFLECTED_HEADERS) break;
  }
  return out;
}

/**
 * For a forwarded answer (a flat [name, value, …] list from the backend): drops the backend's
 * `Access-Control-*` fields when the proxy owns them for this response, and keeps its `Vary:
 * Origin` beside the backend's own Vary (writeHead with a list replaces fields set before).
 */
export function stripBackendCors(res: ServerResponse, head: string[]): void {
  if ((res as Marked)[OWNED] !== true) return;
  let w = 0;
  for (let i = 0; i < head.length; i += 2) {
    const name = head[i]!;
    if (name.toLowerCase().startsWith(OWNED_PREFIX)) continue;
    head[w++] = name;
    head[w++] = head[i + 1]!;
  }
  head.length = w;
  for (const name of res.getHeaderNames()) {
    if (!name.startsWith(OWNED_PREFIX) && name !== 'vary') continue;
    const v = res.getHeader(name);
    if (v !== undefined) head.push(name, String(v));
  }
}

/** A Vary value that keeps what the CORS step put there (a 202 or waiting page adds its own). */
export function withVary(res: ServerResponse, value: string): string {
  const own = res.getHeader('vary');
  return own === undefined ? value : `${String(own)}, ${value}`;
}
