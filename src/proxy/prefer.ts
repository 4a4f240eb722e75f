/**
 * How one client wants to wait for a resource that is not ready: RFC 7240 `Prefer`
 * (https://www.rfc-editor.org/rfc/rfc7240) plus the resource's defaults.
 *
 * - A browser navigation (GET/HEAD accepting `text/html`, no `Prefer` about waiting) gets the
 *   waiting page at once: a person should see something, not a white screen.
 * - `Prefer: respond-async` (§4.1): 202 at once with a status URL; the start is triggered.
 *   With `wait=N` as well, the request is held up to N seconds and answered 202 (instead of
 *   504) if the resource is still not ready, which is what §4.3 describes for the pair.
 * - `Prefer: wait=N` (§4.3): held at most N seconds (never beyond the resource's
 *   `holdTimeoutMs`), then 504.
 * - Anything else: held for the resource's `defaultWaitMs` (≤ `holdTimeoutMs`), then 504.
 */
import type { IncomingMessage } from 'node:http';

/** The preferences this proxy understands; others are ignored, as §2 asks. */
export interface Preferences {
  /** `wait=N` in seconds, when present with a valid delta-seconds value. */
  readonly waitS: number | undefined;
  readonly respondAsync: boolean;
}

/** Per-resource waiting settings (config `resources.*.waiting`, merged with defaults). */
export interface WaitingSettings {
  /** Browser navigations get the waiting page instead of being held. */
  readonly browserPage: boolean;
  /** Hold of a client that states no `Prefer: wait`; capped at the resource's holdTimeoutMs. */
  readonly defaultWaitMs?: number | undefined;
}

export const defaultWaitingSettings: WaitingSettings = { browserPage: true };

/** What the data plane does with a request for a resource that is not ready. */
export type WaitPlan =
  | { readonly kind: 'page' }
  | { readonly kind: 'async' }
  | {
    readonly kind: 'hold';
    readonly holdMs: number;
    /** The value for `Preference-Applied`, when a preference shaped the hold. */
    readonly applied: string | undefined;
    /** On running out of time, answer 202 (respond-async) instead of 504. */
    readonly thenAsync: boolean;
  };

/** delta-seconds larger than this are treated as this (RFC 9111 §1.2.2 does the same). */
const MAX_DELTA_SECONDS = 2_147_483_648;

/**
 * Parses every `Prefer` header field of a request. Grammar (RFC 7240 §2):
 * `Prefer = 1#preference`, `preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] )`.
 * Names are case-insensitive; when a preference appears more than once, only the first
 * counts (§2). Malformed members are skipped, never an error: a preference is optional.
 */
export function parsePrefer(value: string | readonly string[] | undefined): Preferences {
  const seen = new Map<string, string | undefined>();
  const fields = value === undefined ? [] : typeof value === 'string' ? [value] : value;
  for (const field of fields) {
    for (const member of splitOutsideQuotes(field, ',')) {
      const head = splitOutsideQuotes(member, ';')[0] ?? '';
      const eq = head.indexOf('=');
      const name = (eq === -1 ? head : head.slice(0, eq)).trim().toLowerCase();
      if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name) || seen.has(name)) continue;
      seen.set(name, eq === -1 ? undefined : unquote(head.slice(eq + 1).trim()));
    }
  }
  const wait = seen.get('wait');
  // §4.3: wait = "wait" BWS "=" BWS delta-seconds, i.e. 1*DIGIT.
  const waitS = wait !== undefined && /^\d+$/.test(wait) ? Math.min(Number(wait), MAX_DELTA_SECONDS) : undefined;
  return { waitS, respondAsync: seen.has('respond-async') };
}

/** Is this a browser loading a page (as opposed to an API call or a sub-resource)? */
export function isBrowserNavigation(req: IncomingMessage): boolean {
  if (req.method !== 'GET' && req.method !== 'HEAD') return false;
  const accept = req.headers.accept;
  return accept !== undefined && /(^|[\s,])text\/html(\s*[;,]|\s*$)/i.test(accept);
}

/** Decides how `req` waits for a resource that is not ready. */
export function planWait(req: IncomingMessage, settings: WaitingSettings, holdTimeoutMs: number): WaitPlan {
  const prefs = parsePrefer(req.headers.prefer);
  if (prefs.waitS !== undefined) {
    const holdMs = Math.min(prefs.waitS * 1000, holdTimeoutMs);
    const applied = `wait=${Math.ceil(holdMs / 1000)}`;
    return { kind: 'hold', holdMs, applied: prefs.respondAsync ? `respond-async, ${applied}` : applied, thenAsync: prefs.respondAsync };
  }
  if (prefs.respondAsync) return { kind: 'async' };
  if (settings.browserPage && isBrowserNavigation(req)) return { kind: 'page' };
  const holdMs = Math.min(settings.defaultWaitMs ?? holdTimeoutMs, holdTimeoutMs);
  // Shared by every request without a preference: a held request keeps its plan for the hold.
  const shared = defaultHolds.get(settings);
  if (shared?.holdMs === holdMs) return shared;
  const plan = { kind: 'hold', holdMs, applied: undefined, thenAsync: false } as const;
  defaultHolds.set(settings, plan);
  return plan;
}

const defaultHolds = new WeakMap<WaitingSettings, Extract<WaitPlan, { kind: 'hold' }>>();

/** Splits on `sep` where it is not inside a quoted-string (RFC 9110 §5.6.4). */
function splitOutsideQuotes(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string;
    if (quoted && c === '\\' && i + 1 < s.length) {
      cur += c + (s[++i] as string);
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === sep && !quoted) {
      out.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  out.push(cur);
  return out.map((x) => x.trim()).filter((x) => x.length > 0);
}

function unquote(word: string): string {
  if (word.length >= 2 && word.startsWith('"') && word.endsWith('"')) return word.slice(1, -1).replace(/\\(.)/g, '$1');
  return word;
}
