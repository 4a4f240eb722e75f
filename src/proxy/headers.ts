/**
 * Header work for forwarding, done in one pass over the raw header list.
 *
 * Hop-by-hop headers (RFC 9110 §7.6.1: Connection, Proxy-Connection, Keep-Alive, TE,
 * Transfer-Encoding, Upgrade, and every name listed in Connection) are not forwarded, nor is
 * `Expect`: the proxy answers `100 Continue` itself (client-state.ts), and undici refuses it.
 *
 * Headers a backend may take as set by a proxy (the whole `X-Forwarded-*` namespace, such as
 * `X-Forwarded-Email` or `X-Forwarded-Server` that auth proxies set, `Forwarded`,
 * `X-Real-IP` and the other client-address names in CLIENT_CLAIMS) are dropped unless the
 * peer is a configured trusted proxy; the proxy sets X-Forwarded-For/-Proto/-Host/-Prefix
 * from what it knows (a trusted proxy's values extended). `_` folds to `-` in this test. Protected names (the identity headers
 * the proxy sets for backends) are removed whatever their spelling: Node accepts
 * `X_Forwarded_User`, and some backends (CGI, PHP, WSGI) fold `_` and `-` together, so the
 * comparison folds them too.
 */
import { BlockList, isIP } from 'node:net';

const HOP_BY_HOP = new Set([
  'connection', 'proxy-connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'proxy-authorization', 'proxy-authenticate', 'host', 'http2-settings', 'expect',
]);

/** The names the proxy sets itself: never passed as the client sent them. */
const SET_BY_PROXY = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-prefix']);

/**
 * Names outside `X-Forwarded-*` that frameworks and backends read as "set by the proxy in
 * front": client address and original URL/host claims. Believed only from trusted proxies.
 */
const CLIENT_CLAIMS = new Set([
  'forwarded', 'x-forwarded', 'x-real-ip', 'x-client-ip', 'client-ip', 'true-client-ip', 'x-cluster-client-ip',
  'cf-connecting-ip', 'fastly-client-ip', 'x-original-forwarded-for', 'x-original-url', 'x-rewrite-url',
  'x-original-host', 'x-host',
]);

/** Whether a folded name is one a backend would take as set by a proxy (see the file comment). */
export function isProxyClaim(folded: string): boolean {
  return folded.startsWith('x-forwarded-') || CLIENT_CLAIMS.has(folded);
}

/** What makes a request unforwardable before any step looks at it (see fieldProblem). */
export interface FieldProblem {
  readonly code: 'SP_ROUTE_BAD_HOST' | 'SP_BODY_UNSUPPORTED_CODING';
  readonly detail: string;
}

/**
 * What makes a request's fields unforwardable, in one pass, or undefined:
 * - two Host fields (RFC 9112 §3.2: 400), or a Host that differs from the HTTP/2 `:authority`
 *   (RFC 9113 §8.3.1);
 * - a Host (or `:authority`) that is not `uri-host [":" port]` (RFC 9112 §3.2: 400): spaces,
 *   `/`, `@`, non-ASCII bytes. The value becomes X-Forwarded-Host, from which backends build
 *   absolute links and redirects; an empty Host (HTTP/1.0, or a target without authority) is
 *   allowed and sends none;
 * - a Transfer-Encoding other than `chunked` alone. Node's parser takes `gzip, chunked` and
 *   hands over the de-chunked bytes, which are still gzip-coded; forwarded without the
 *   coding's name they would reach the backend as a different body. A server answers 501 to a
 *   transfer coding it does not implement (RFC 9112 §6.1), as nginx does.
 */
export function fieldProblem(rawHeaders: readonly string[]): FieldProblem | undefined {
  let host: string | undefined;
  let authority: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (host !== undefined) return { code: 'SP_ROUTE_BAD_HOST', detail: 'more than one Host header' };
      host = rawHeaders[i + 1];
    } else if (name === ':authority') authority = rawHeaders[i + 1];
    else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      const coding = (rawHeaders[i + 1] as string).trim();
      if (coding.toLowerCase() !== 'chunked') {
        return { code: 'SP_BODY_UNSUPPORTED_CODING', detail: `transfer coding "${printable(coding)}" is not supported: send the body chunked or with Content-Length (compression as Content-Encoding)` };
      }
    }
  }
  if (host !== undefined && authority !== undefined && host.toLowerCase() !== authority.toLowerCase()) {
    return { code: 'SP_ROUTE_BAD_HOST', detail: 'Host differs from :authority' };
  }
  const named = host ?? authority;
  if (named !== undefined && named !== '' && !HOST_VALUE.test(named)) {
    return { code: 'SP_ROUTE_BAD_HOST', detail: `Host "${printable(named)}" is not a host name or address with an optional port` };
  }
  return undefined;
}

/**
 * `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets, or a
 * reg-name / IPv4 address (unreserved, sub-delims and percent-encoding), then up to five port
 * digits. As absolute-form.ts checks a target's authority.
 */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]{0,5})?$/;

/** A client's value, short and printable, for an error message. */
function printable(value: string): string {
  const clean = value.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 64 ? `${clean.slice(0, 64)}…` : clean;
}

/** Folds a header name for comparison: lower case, `_` as `-`. */
export function foldName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

/**
 * A header name the proxy adds, in the form undici checks at least cost. Lower case: undici
 * lower-cases every name outside its table of well-known ones, and `toLowerCase` of a name
 * that has a capital letter is a new string on every request. Internalized (V8's single copy
 * of a string, which a property key is): undici looks each name up as a key of that table,
 * and a name built at run time (from the config) would first be looked up in V8's string
 * table on every request. Measured (callgrind, undici's Request alone): 845 instructions per
 * name and request less for `X-Forwarded-User` read from a config. Names are case-insensitive
 * (RFC 9110 §5.1); HTTP/2 sends them in lower case anyway.
 */
export function wireName(name: string): string {
  const lower = name.toLowerCase();
  return Object.keys({ [lower]: 0 })[0] ?? lower;
}

/** Addresses and CIDRs whose forwarding headers are believed. */
export class TrustedProxies {
  readonly #list = new BlockList();
  readonly empty: boolean;

  constructor(entries: readonly string[]) {
    for (const e of entries) {
      const [addr, bits] = e.split('/');
      const family = isIP(addr ?? '');
      if (family === 0) throw new Error(`trustedProxies: "${e}" is not an IP address or CIDR`);
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (bits === undefined) this.#list.addAddress(addr as string, type);
      else {
        const prefix = Number(bits);
        if (!Number.isInteger(prefix) || prefix < 0 || prefix > (family === 6 ? 128 : 32)) {
          throw new Error(`trustedProxies: "${e}" has an invalid prefix length`);
        }
        this.#list.addSubnet(addr as string, prefix, type);
      }
    }
    this.empty = entries.length === 0;
  }

  /**
   * The client's address for per-client limits: the peer, or behind trusted proxies the
   * right-most X-Forwarded-For entry that is not itself a trusted proxy (entries left of it
   * could be forged by the client).
   */
  clientAddress(peer: string | undefined, rawHeaders: readonly string[]): string {
    const fallback = peer ?? 'unknown';
    if (!this.has(peer)) return fallback;
    const hops: string[] = [];
    for (let i = 0; i < rawHeaders.length; i += 2) {
      if ((rawHeaders[i] as string).toLowerCase() === 'x-forwarded-for') {
        for (const h of (rawHeaders[i + 1] as string).split(',')) hops.push(h.trim());
      }
    }
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i] as string;
      if (isIP(hop) === 0) return fallback;
      if (!this.has(hop)) return hop;
    }
    return fallback;
  }

  has(address: string | undefined): boolean {
    if (this.empty || address === undefined) return false;
    const v4mapped = address.startsWith('::ffff:') ? address.slice(7) : address;
    const family = isIP(v4mapped);
    if (family === 0) return false;
    return this.#list.check(v4mapped, family === 6 ? 'ipv6' : 'ipv4');
  }
}

export interface ForwardContext {
  readonly remoteAddress: string | undefined;
  readonly encrypted: boolean;
  readonly trusted: boolean;
  readonly prefix: string;
  /** Folded names (see foldName) to drop from the client's request. */
  readonly protectedNames: ReadonlySet<string>;
  /** Extra headers to add (identity for the backend), already safe to send. */
  readonly extra?: ReadonlyArray<readonly [string, string]> | undefined;
  /** Cookies (by name) not to forward: the proxy's own session cookies. */
  readonly dropCookies?: ((name: string) => boolean) | undefined;
}

/** What upstreamHeaders does with a request field, by its lower-case name (bits of NAME_KIND). */
const HOP = 1;
const SET = 2;
const CLAIM = 4;
const COOKIE = 8;
const CONNECTION = 16;
const HOST = 32;
const XFF = 64;
const XFP = 128;
const XFH = 256;
const TE = 512;

/**
 * Every name the filter or the captures react to, with what it is: one Map lookup per field
 * instead of a Set lookup per rule (a field of any other name, the usual case, misses once).
 */
const NAME_KIND: ReadonlyMap<string, number> = (() => {
  const kinds = new Map<string, number>();
  const add = (name: string, bits: number): void => {
    kinds.set(name, (kinds.get(name) ?? 0) | bits);
  };
  for (const n of HOP_BY_HOP) add(n, HOP);
  for (const n of SET_BY_PROXY) add(n, SET);
  for (const n of CLIENT_CLAIMS) add(n, CLAIM);
  add('cookie', COOKIE);
  add('connection', CONNECTION);
  add('host', HOST);
  add('x-forwarded-for', XFF);
  add('x-forwarded-proto', XFP);
  add('x-forwarded-host', XFH);
  add('te', TE);
  return kinds;
})();

/**
 * Builds the upstream request's headers as a flat [name, value, …] list, in one pass over the
 * raw list. The names a Connection field lists are dropped wherever they stand; they are known
 * only once that field has been read, so a request whose Connection lists any (rare: clients
 * send `keep-alive`) has its kept fields filtered once more at the end.
 */
export function upstreamHeaders(rawHeaders: readonly string[], ctx: ForwardContext): string[] {
  let connectionListed: Set<string> | undefined;
  let host = '';
  let clientXff = '';
  let clientProto = '';
  let clientHost = '';
  const out: string[] = [];
  let cookie: string | undefined;
  let teTrailers = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const rawName = rawHeaders[i] as string;
    const value = rawHeaders[i + 1] as string;
    const name = rawName.toLowerCase();
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) are not fields for HTTP/1.1;
    // the authority comes as :authority there (RFC 9113 §8.3.1).
    if (name.charCodeAt(0) === 0x3a /* : */) {
      if (name === ':authority' && host === '') host = value;
      continue;
    }
    const kind = NAME_KIND.get(name) ?? 0;
    if (kind !== 0) {
      if ((kind & CONNECTION) !== 0) {
        // `keep-alive`, as nearly every client sends, names a field that is dropped anyway:
        // no split, no set. (`close` is not skipped: a field named Close must still go.)
        if (!HOP_BY_HOP.has(value.toLowerCase())) {
          for (const token of value.split(',')) {
            const t = token.trim().toLowerCase();
            if (t.length > 0) (connectionListed ??= new Set()).add(t);
          }
        }
      } else if ((kind & HOST) !== 0) host = value;
      else if ((kind & XFF) !== 0) clientXff = clientXff ? `${clientXff}, ${value}` : value;
      else if ((kind & XFP) !== 0) clientProto = value;
      else if ((kind & XFH) !== 0) clientHost = value;
      else if ((kind & TE) !== 0 && /(?:^|,)\s*trailers\s*(?:[;,]|$)/i.test(value)) teTrailers = true;
      if ((kind & HOP) !== 0) continue;
    }
    // The proxy's own names and the identity names are compared folded (`_` as `-`).
    let folded = name;
    let foldedKind = kind;
    if (name.includes('_')) {
      folded = name.replaceAll('_', '-');
      foldedKind = NAME_KIND.get(folded) ?? 0;
    }
    if ((foldedKind & SET) !== 0 || ctx.protectedNames.has(folded)) continue;
    if (!ctx.trusted && ((foldedKind & CLAIM) !== 0 || folded.startsWith('x-forwarded-'))) continue;
    // HTTP/2 clients may split Cookie into several fields; towards HTTP/1.1 they become one,
    // joined with "; " (RFC 9113 §8.2.3).
    if ((kind & COOKIE) !== 0) {
      cookie = cookie === undefined ? value : `${cookie}; ${value}`;
      continue;
    }
    out.push(rawName, value);
  }
  if (connectionListed !== undefined) {
    const listed = connectionListed;
    let kept = 0;
    for (let i = 0; i < out.length; i += 2) {
      if (listed.has((out[i] as string).toLowerCase())) continue;
      out[kept++] = out[i] as string;
      out[kept++] = out[i + 1] as string;
    }
    out.length = kept;
    if (listed.has('cookie')) cookie = undefined;
  }
  if (cookie !== undefined && ctx.dropCookies !== undefined) cookie = withoutCookies(cookie, ctx.dropCookies);
  if (cookie !== undefined && cookie !== '') out.push('cookie', cookie);
  // TE is hop-by-hop (a client sends it with `Connection: TE`), but "trailers" is a promise
  // this proxy keeps for its client: it passes a backend's trailer fields on
  // (forward-http.ts). Some backends (gRPC's) send them only when asked.
  if (teTrailers) out.push('te', 'trailers');
  const remote = ctx.remoteAddress ?? '';
  const proto = ctx.encrypted ? 'https' : 'http';
  const forwardedHost = ctx.trusted && clientHost ? clientHost : host;
  out.push(
    'x-forwarded-for', ctx.trusted && clientXff ? `${clientXff}, ${remote}` : remote,
    'x-forwarded-proto', ctx.trusted && clientProto ? clientProto : proto,
  );
  // An HTTP/1.0 request may come without Host: then no X-Forwarded-Host, rather than an empty
  // one that a backend would build its links from.
  if (forwardedHost !== '') out.push('x-forwarded-host', forwardedHost);
  out.push('x-forwarded-prefix', ctx.prefix);
  if (ctx.extra) for (const [n, v] of ctx.extra) out.push(n, v);
  return out;
}

/** The Cookie value without the pairs whose name `drop` accepts (RFC 6265 §4.2.1: `; `-separated). */
function withoutCookies(cookie: string, drop: (name: string) => boolean): string {
  if (!cookie.includes('=')) return cookie;
  return cookie.split(';').filter((pair) => {
    const eq = pair.indexOf('=');
    return eq === -1 || !drop(pair.slice(0, eq).trim());
  }).map((p) => p.trim()).join('; ');
}

const RESPONSE_HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
/** A Connection value that is one of these lists no field that is not dropped already. */
const SOLE_CONNECTION_TOKENS = new Set([...RESPONSE_HOP_BY_HOP, 'close']);

/**
 * Filters a backend response's headers (undici's object form) into a flat list for
 * `res.writeHead`, dropping hop-by-hop fields and those the backend's Connection names.
 */
export function downstreamHeaders(headers: Record<string, string | string[] | undefined>): string[] {
  const connection = headers.connection;
  // `Connection: keep-alive` (or close), as nearly every backend sends, names only fields that
  // are dropped anyway: no token list to build for it.
  const listed = connection === undefined || (typeof connection === 'string' && SOLE_CONNECTION_TOKENS.has(connection.toLowerCase()))
    ? undefined
    : new Set((Array.isArray(connection) ? connection.join(',') : connection).split(',').map((t) => t.trim().toLowerCase()));
  const out: string[] = [];
  for (const name in headers) {
    if (RESPONSE_HOP_BY_HOP.has(name) || listed?.has(name) === true) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else out.push(name, value);
  }
  return out;
}

/**
 * Fields never taken from a backend's trailer section (RFC 9110 §6.5.1: framing, routing,
 * request modifiers, authentication, response control and content-handling fields), nor the
 * hop-by-hop ones; HTTP/2 refuses connection-specific fields in trailers too.
 */
const TRAILER_FORBIDDEN = new Set([...RESPONSE_HOP_BY_HOP, 'content-length', 'content-encoding', 'content-type', 'content-range',
  'host', 'authorization', 'www-authenticate', 'proxy-authenticate', 'proxy-authorization', 'set-cookie', 'cookie',
  'cache-control', 'expires', 'date', 'location', 'retry-after', 'vary', 'age', 'expect', 'max-forwards', 'pragma', 'range', 'http2-settings']);

/**
 * A backend's trailer fields (undici's object form, lower-case names) for `res.addTrailers`
 * (an object: HTTP/2's compat response takes no list), without the forbidden ones; undefined
 * when none are left.
 */
export function downstreamTrailers(trailers: Record<string, string | string[] | undefined> | undefined): Record<string, string | string[]> | undefined {
  if (trailers === undefined) return undefined;
  let out: Record<string, string | string[]> | undefined;
  for (const name in trailers) {
    if (TRAILER_FORBIDDEN.has(name) || name.charCodeAt(0) === 0x3a /* : */) continue;
    const value = trailers[name];
    if (value === undefined) continue;
    // No prototype: a field named __proto__ is a field like any other.
    (out ??= Object.create(null) as Record<string, string | string[]>)[name] = value;
  }
  return out;
}
