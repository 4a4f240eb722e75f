/**
 * Browser sessions after an OIDC sign-in: sealed into one cookie (sealer.ts), or kept in the
 * key-value store when they outgrow `maxCookieBytes` (the cookie then holds a sealed
 * reference). Idle and absolute lifetimes run on the injected clock; the cookie is renewed at
 * most every `touchIntervalMs`, so a busy page is not a Set-Cookie per request.
 *
 * Any replica opens any session: the cookie carries everything (or the shared store does),
 * so no sticky sessions are needed. The refresh of an access token is single-flight per
 * refresh token in a replica, and its result is shared through the store for a minute so a
 * second replica (or a second tab) racing with a rotated refresh token adopts it instead of
 * signing the user out.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { SessionSettings } from '../../config/access-schema.ts';
import type { Clock, KeyValueStore } from '../../core/ports.ts';
import { cookieValues, setCookie } from './cookies.ts';
import type { Sealer } from './sealer.ts';

export interface Session {
  /** Random id: the store key of a large session, the single-flight key of its refreshes. */
  readonly sid: string;
  /** The oidc identity's name. */
  readonly prov: string;
  readonly user: string;
  readonly groups: readonly string[];
  /** Sign-in time (absolute lifetime), ms since the epoch. */
  readonly iat: number;
  /** Last use (idle lifetime). */
  readonly seen: number;
  readonly at?: string | undefined;
  /** Access token expiry, ms since the epoch. */
  readonly atExp?: number | undefined;
  readonly rt?: string | undefined;
  /** The ID token, for RP-initiated sign-out (id_token_hint). */
  readonly idt?: string | undefined;
}

export type OpenedSession =
  | { readonly kind: 'none' }
  | { readonly kind: 'session'; readonly session: Session; readonly stored: boolean }
  | { readonly kind: 'invalid'; readonly reason: string; readonly unavailable?: boolean };

export const newSessionId = (): string => randomBytes(18).toString('base64url');
export const digest = (s: string): string => createHash('sha256').update(s).digest('base64url').slice(0, 32);

function isSession(v: Record<string, unknown>): boolean {
  return typeof v.sid === 'string' && typeof v.prov === 'string' && typeof v.user === 'string' && Array.isArray(v.groups)
    && v.groups.every((g) => typeof g === 'string') && typeof v.iat === 'number' && typeof v.seen === 'number';
}

export class SessionCookies {
  readonly settings: SessionSettings;
  readonly secure: boolean;
  readonly #sealer: Sealer;
  readonly #kv: KeyValueStore;
  readonly #clock: Clock;

  constructor(options: { settings: SessionSettings; secure: boolean; sealer: Sealer; kv: KeyValueStore; clock: Clock }) {
    this.settings = options.settings;
    this.secure = options.secure;
    this.#sealer = options.sealer;
    this.#kv = options.kv;
    this.#clock = options.clock;
  }

  get name(): string {
    return this.settings.cookieName;
  }

  /** Names of the cookies sessions use (the backend never sees them). */
  isOwnCookie(name: string): boolean {
    return name === this.settings.cookieName || name.startsWith(`${this.settings.cookieName}_`);
  }

  /**
   * The session in a request's Cookie headers, checked against both lifetimes. A browser may
   * send several cookies of this name (a stale one from a parent domain or another path, which
   * the proxy's Set-Cookie can neither replace nor delete, and which browsers send first when
   * it is older): the first that opens is the session, so a stale one cannot send the user
   * round the sign-in again and again. Otherwise the first one's verdict stands.
   */
  async open(cookieHeaders: readonly string[]): Promise<OpenedSession> {
    const values = cookieValues(cookieHeaders, this.settings.cookieName);
    if (values.length === 0) return { kind: 'none' };
    const first = await this.#openOne(values[0] as string);
    if (first.kind === 'session' || values.length === 1) return first;
    // Bounded: a Cookie header cannot make a request open more than a few.
    for (const sealed of values.slice(1, 8)) {
      const next = await this.#openOne(sealed);
      if (next.kind === 'session') return next;
    }
    return first;
  }

  async #openOne(sealed: string): Promise<OpenedSession> {
    let value = await this.#sealer.open('session', sealed);
    let stored = false;
    if (value === undefined) {
      const ref = await this.#sealer.open('session-ref', sealed);
      if (ref === undefined || typeof ref.sid !== 'string') return { kind: 'invalid', reason: 'session cookie not valid (tampered, or sealed with a retired key)' };
      let inStore: string | undefined;
      try {
        inStore = await this.#kv.get(`session:${ref.sid}`);
      } catch {
        return { kind: 'invalid', reason: 'the session store cannot be reached', unavailable: true };
      }
      value = inStore === undefined ? undefined : await this.#sealer.open('session', inStore);
      if (value === undefined || value.sid !== ref.sid) return { kind: 'invalid', reason: 'session ended' };
      stored = true;
    }
    if (!isSession(value)) return { kind: 'invalid', reason: 'session cookie not valid' };
    const session = value as unknown as Session;
    const now = this.#clock.now();
    if (now >= session.iat + this.settings.absoluteTimeoutMs) return { kind: 'invalid', reason: 'session expired (absolute lifetime)' };
    if (now >= session.seen + this.settings.idleTimeoutMs) return { kind: 'invalid', reason: 'session expired (idle)' };
    return { kind: 'session', session, stored };
  }

  /**
   * Set-Cookie for `session`: the sealed session, or a reference to it in the store when too
   * big. `secure` adds the attribute for this answer when the settings alone do not (a browser
   * on https behind a trusted front proxy).
   */
  async issue(session: Session, secure = this.secure): Promise<string> {
    const { sid: _sid, ...rest } = session;
    const sealed = await this.#sealer.seal('session', { sid: session.sid, ...rest });
    const now = this.#clock.now();
    const remainingMs = Math.max(0, Math.min(session.iat + this.settings.absoluteTimeoutMs, session.seen + this.settings.idleTimeoutMs) - now);
    const maxAgeS = Math.ceil((session.iat + this.settings.absoluteTimeoutMs - now) / 1000);
    if (sealed.length + this.settings.cookieName.length + 80 <= this.settings.maxCookieBytes) {
      return setCookie(this.settings.cookieName, sealed, { path: '/', secure, maxAgeS });
    }
    await this.#kv.set(`session:${session.sid}`, sealed, Math.max(1, remainingMs));
    const ref = await this.#sealer.seal('session-ref', { sid: session.sid });
    return setCookie(this.settings.cookieName, ref, { path: '/', secure, maxAgeS });
  }

  /** Set-Cookie that deletes the session cookie; a stored session is deleted too. */
  async end(session: Session | undefined, stored: boolean, secure = this.secure): Promise<string> {
    if (session !== undefined && stored) await this.#kv.delete(`session:${session.sid}`).catch(() => undefined);
    return setCookie(this.settings.cookieName, '', { path: '/', secure, maxAgeS: 0 });
  }

  /** Is it time to renew the cookie of a used session (idle lifetime)? */
  dueForTouch(session: Session): boolean {
    return this.#clock.now() - session.seen >= this.settings.touchIntervalMs;
  }

  /** Should the access token be refreshed now? */
  dueForRefresh(session: Session): boolean {
    return session.rt !== undefined && session.atExp !== undefined && session.atExp - this.#clock.now() <= this.settings.refreshBeforeMs;
  }
}
