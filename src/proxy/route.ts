/**
 * Parses a request target once, strictly, before any routing:
 * `/smart_proxy/{resource_id}/{required_groups}/rest/of/path?query`.
 *
 * Everything that could make two parties disagree about which path is meant is refused with
 * SP_ROUTE_BAD_TARGET (400): dot segments raw or percent-encoded (RFC 3986 §5.2.4), empty
 * segments (`//`), backslashes (some servers treat them as `/`), malformed or control-character
 * percent-encoding, and targets that are not origin-form (RFC 9112 §3.2: authority-form and
 * `*` have no business at a reverse proxy; an http(s) absolute-form target was already
 * rewritten to origin-form at the door, absolute-form.ts). The forwarded rest is passed
 * on byte for byte as the client sent it (it is already checked), so the backend sees exactly
 * what was validated here.
 */
import { SmartProxyError } from '../core/errors.ts';

export interface ParsedTarget {
  readonly resourceId: string;
  /** Groups named in the URL, sorted and unique; `[]` for the `-` placeholder. */
  readonly groups: readonly string[];
  /** True when the URL used the placeholder `-` ("all the groups I hold"). */
  readonly allGroups: boolean;
  /** `/smart_proxy/as1/g1,g2`: the prefix the backend does not see (X-Forwarded-Prefix). */
  readonly prefix: string;
  /** The forwarded path, starting with `/`, without the query. */
  readonly path: string;
  /** The query with its leading `?`, or `''`. */
  readonly query: string;
}

export const GROUPS_PLACEHOLDER = '-';
const GROUP_RE = /^[A-Za-z0-9._~@+:=-]{1,128}$/;
const MAX_GROUPS = 64;

function bad(reason: string): SmartProxyError {
  return new SmartProxyError('SP_ROUTE_BAD_TARGET', `bad request target: ${reason}`, { data: { reason } });
}

function notFound(reason: string): SmartProxyError {
  return new SmartProxyError('SP_ROUTE_NOT_FOUND', reason);
}

/**
 * Anything unsafePathReason's loop reacts to: a character it flags or inspects (controls,
 * space, DEL, backslash, "#", ".", "%") or an empty segment. Without a match it finds nothing.
 */
// eslint-disable-next-line no-control-regex -- control characters are what it looks for
const SUSPECT_PATH = /[\x00-\x20\x7f\\#.%]|\/\//;

/**
 * Validates the path part of a target. Returns the reason it is unsafe, or undefined.
 * Checks run on the raw bytes, so `%2e%2E` and `.` are caught alike.
 */
export function unsafePathReason(path: string): string | undefined {
  // Most paths hold none of the characters the checks below look at (no dot, no percent, no
  // backslash, "#", control character or space) and no "//": one regular expression tells,
  // for two thirds of the loop's instructions (callgrind, a 26-character path: 810 vs 1,250).
  if (!SUSPECT_PATH.test(path)) return undefined;
  // One pass over the characters; the reasons keep their order of precedence: backslash,
  // "//", "#", then the first bad character or percent-encoding.
  let backslash = false;
  let emptySegment = false;
  let fragment = false;
  let charProblem: string | undefined;
  let dotOrPercent = false;
  let prev = -1;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x5c /* \ */) backslash = true;
    else if (c === 0x2f /* / */ && prev === 0x2f) emptySegment = true;
    else if (c === 0x23 /* # */) fragment = true;
    prev = c;
    if (charProblem !== undefined) continue;
    if (c <= 0x20 || c === 0x7f) charProblem = 'control character or space in path';
    else if (c === 0x2e /* . */) dotOrPercent = true;
    else if (c === 0x25 /* % */) {
      dotOrPercent = true;
      const h = path.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) charProblem = 'malformed percent-encoding';
      else {
        const byte = parseInt(h, 16);
        if (byte < 0x20 || byte === 0x7f) charProblem = 'encoded control character';
        else if (byte === 0x5c) charProblem = 'encoded backslash';
        // The two hex digits are neither "\\", "/" nor "#": skipping them misses nothing.
        else {
          i += 2;
          prev = path.charCodeAt(i);
        }
      }
    }
  }
  if (backslash) return 'backslash in path';
  if (emptySegment) return 'empty path segment ("//")';
  if (fragment) return 'fragment in target';
  if (charProblem !== undefined) return charProblem;
  // Dot segments, raw or percent-encoded, anywhere (including the last segment), as any
  // backend could read them (see dotCheckForm). Without a "." or a "%" there can be none
  // (the common case: no decoding, no split).
  if (!dotOrPercent) return undefined;
  const lenient = dotCheckForm(path);
  if (lenient === undefined) return 'percent-encoding nested more than four levels deep';
  for (const seg of lenient.split(/[/\\]/)) {
    // Path parameters: Tomcat, Jetty and Spring drop ";…" from a segment, so "..;x" is "..".
    const semi = seg.indexOf(';');
    const bare = semi === -1 ? seg : seg.slice(0, semi);
    if (bare === '.' || bare === '..') return 'dot segment in path';
  }
  return undefined;
}

/** Encodings of ".", "/" and "\\" that some backend decodes (besides plain %2e, %2f, %5c). */
const EXOTIC_DOT_OR_SLASH: ReadonlyArray<readonly [RegExp, string]> = [
  // IIS's %uXXXX.
  [/%u002e/gi, '.'], [/%u002f/gi, '/'], [/%u005c/gi, '\\'],
  // Overlong UTF-8 (old or lenient decoders) and the full-width dot (NFKC normalisation).
  [/%c0%ae|%e0%80%ae|%ef%bc%8e/gi, '.'], [/%c0%af|%e0%80%af/gi, '/'], [/%c1%9c/gi, '\\'],
];

/**
 * The path as the most lenient backend could see it, for the dot-segment check only (the
 * forwarded bytes are never changed): `%25` decoded repeatedly (a backend or framework
 * that decodes twice turns `%252e` into "."), then every encoding of ".", "/" and "\\".
 * An encoded slash would be a separator for a backend that decodes it, so it splits too.
 */
function dotCheckForm(path: string): string | undefined {
  let p = path;
  // Bounded: each round peels one level; no real URL nests "%25" deeper than four (refused).
  for (let round = 0; p.includes('%25'); round++) {
    if (round === 4) return undefined;
    p = p.replace(/%25/g, '%');
  }
  if (!p.includes('%')) return p;
  p = p.replace(/%2e/gi, '.').replace(/%2f/gi, '/').replace(/%5c/gi, '\\');
  for (const [re, ch] of EXOTIC_DOT_OR_SLASH) p = p.replace(re, ch);
  return p;
}

/** The prefix every proxied URL starts with, as in the original. */
export const BASE_PATH = '/smart_proxy';

/** Parses `req.url` as received. Throws SmartProxyError (400 or 404). */
export function parseTarget(rawUrl: string | undefined): ParsedTarget {
  if (rawUrl === undefined || rawUrl.length === 0) throw bad('empty target');
  if (rawUrl === '*') throw bad('asterisk-form target');
  if (rawUrl.charCodeAt(0) !== 0x2f /* / */) throw bad('not origin-form (absolute-form or authority-form target)');
  const q = rawUrl.indexOf('?');
  const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
  const query = q === -1 ? '' : rawUrl.slice(q);
  const reason = unsafePathReason(path);
  if (reason !== undefined) throw bad(reason);
  if (query.includes('#')) throw bad('fragment in target');

  if (!path.startsWith(`${BASE_PATH}/`)) throw notFound(`no route: paths start with ${BASE_PATH}/{resource_id}/{groups}/`);
  const afterBase = BASE_PATH.length + 1;
  const s1 = path.indexOf('/', afterBase);
  // `/smart_proxy/` alone lacks the resource id first, not the groups.
  if (s1 === -1 && path.length === afterBase) throw notFound(`no route: ${BASE_PATH}/{resource_id}/{groups}/ needs a resource id`);
  if (s1 === -1) throw notFound(`no route: ${BASE_PATH}/{resource_id}/{groups}/ needs the groups segment (use "-" for all the groups you hold)`);
  const s2 = path.indexOf('/', s1 + 1);
  const idRaw = path.slice(afterBase, s1);
  const groupsRaw = s2 === -1 ? path.slice(s1 + 1) : path.slice(s1 + 1, s2);
  const rest = s2 === -1 ? '/' : path.slice(s2);

  const resourceId = decodeSegment(idRaw, 'resource id');
  if (resourceId.length === 0) throw notFound('no route: empty resource id');
  const groupsText = decodeSegment(groupsRaw, 'groups');
  let groups: string[] = [];
  let allGroups = false;
  if (groupsText === GROUPS_PLACEHOLDER) {
    allGroups = true;
  } else if (groupsText.length > 0) {
    const parts = groupsText.split(',');
    if (parts.length > MAX_GROUPS) throw bad(`more than ${MAX_GROUPS} groups`);
    for (const g of parts) {
      if (!GROUP_RE.test(g)) throw bad(`invalid group name "${g.slice(0, 40)}"`);
    }
    groups = parts.length === 1 ? parts : [...new Set(parts)].sort();
  } else {
    throw bad('empty groups segment (use "-" for all the groups you hold)');
  }
  return {
    resourceId,
    groups,
    allGroups,
    prefix: s2 === -1 ? path : path.slice(0, s2),
    path: rest,
    query,
  };
}

function decodeSegment(raw: string, what: string): string {
  if (!raw.includes('%')) return raw;
  let out: string;
  try {
    out = decodeURIComponent(raw);
  } catch {
    throw bad(`malformed percent-encoding in ${what}`);
  }
  if (out.includes('/')) throw bad(`encoded "/" in ${what}`);
  return out;
}

/** Joins an endpoint's own path prefix (`http://h:p/vm/1`) with the forwarded path. */
export function joinUpstreamPath(endpointPath: string, path: string, query: string): string {
  if (endpointPath === '' || endpointPath === '/') return path + query;
  const base = endpointPath.endsWith('/') ? endpointPath.slice(0, -1) : endpointPath;
  // The original's VM answered only its exact path: `/` forwards to `/vm/1`, not `/vm/1/`.
  return (path === '/' ? base : base + path) + query;
}
