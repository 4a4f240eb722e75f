/**
 * Who may use the admin listener: a caller verified by the same identity chain as the data
 * plane (token, basic, JWT, trusted header) holding one of `admin.groups`; optionally anyone
 * connecting from a loopback address. And the CSRF guard for browsers: an unsafe request
 * authenticated by something a browser sends by itself (Basic, a front proxy's header, the
 * loopback pass) must carry the dashboard's token in a header, matching its SameSite cookie,
 * and come from the admin listener's own origin.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { challengesOf, verifyChain } from '../access/chain.ts';
import type { Verifier } from '../access/types.ts';
import type { AdminConfig } from '../config/admin-schema.ts';
import type { IdentityConfig } from '../config/access-schema.ts';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock, Logger } from '../core/ports.ts';
import { createVerifiers, credentialsOf } from '../proxy/identify.ts';

export interface AdminCaller {
  /** `admin:<user>`, or `admin:loopback` for the anonymous loopback pass. */
  readonly actor: string;
  /** A browser would send this credential by itself (so unsafe requests need the CSRF token). */
  readonly ambient: boolean;
}

export const CSRF_COOKIE = 'sp_admin_csrf';
export const CSRF_HEADER = 'x-csrf-token';

export function isLoopbackAddress(addr: string | undefined): boolean {
  if (addr === undefined) return false;
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

export interface AdminAuthOptions {
  readonly identities: readonly IdentityConfig[];
  readonly realm: string;
  readonly admin: AdminConfig;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Told about every refused caller (the audit trail). */
  readonly onDenied: (reason: string, user: string | undefined, remoteAddress: string | undefined) => void;
}

export class AdminAuth {
  readonly #verifiers: Verifier[];
  readonly #challenges: string[];
  readonly #groups: ReadonlySet<string>;
  readonly #anonymousFromLoopback: boolean;
  readonly #onDenied: AdminAuthOptions['onDenied'];

  constructor(options: AdminAuthOptions) {
    this.#verifiers = createVerifiers(options.identities.filter((i) => i.kind !== 'oidc'), options.realm, options.clock, options.logger);
    this.#challenges = challengesOf(this.#verifiers);
    this.#groups = new Set(options.admin.groups);
    this.#anonymousFromLoopback = options.admin.anonymousFromLoopback;
    this.#onDenied = options.onDenied;
  }

  /** The admin behind `req`, or the error to answer with (401 or 403). */
  async authenticate(req: IncomingMessage): Promise<AdminCaller | SmartProxyError> {
    const remote = req.socket.remoteAddress;
    const out = await verifyChain(this.#verifiers, credentialsOf(req));
    if (out.kind === 'verified') {
      const { user, groups, via } = out.identity;
      if (groups.some((g) => this.#groups.has(g))) {
        return { actor: `admin:${user ?? 'anonymous'}`, ambient: via === 'basic' || via === 'header' };
      }
      this.#onDenied('not in an admin group', user, remote);
      return new SmartProxyError('SP_ACCESS_DENIED', `${user ?? 'this identity'} holds none of the admin groups`);
    }
    if (out.kind === 'anonymous' && this.#anonymousFromLoopback && isLoopbackAddress(remote)) {
      return { actor: 'admin:loopback', ambient: true };
    }
    const reason = out.kind === 'anonymous' ? 'no credentials' : out.reason;
    this.#onDenied(reason, undefined, remote);
    if (out.kind === 'invalid' && out.unavailable) return new SmartProxyError('SP_ACCESS_UNAVAILABLE', undefined, { retryAfterS: 5 });
    return new SmartProxyError('SP_ACCESS_UNAUTHENTICATED', out.kind === 'anonymous' ? 'The admin API needs an admin identity.' : `The credentials were refused: ${reason}.`,
      { data: { challenges: this.#challenges } });
  }

  close(): void {
    for (const v of this.#verifiers) v.close?.();
  }
}

/** A fresh token for a dashboard session (cookie + page). */
export function newCsrfToken(): string {
  return randomBytes(24).toString('base64url');
}

export function cookieOf(req: IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/**
 * The CSRF check of an unsafe request by an ambient credential. Returns the refusal, or
 * undefined when the request may go on. Cross-site requests cannot set a custom header
 * without a CORS preflight (which this listener never grants), and cannot read the token.
 */
export function checkCsrf(req: IncomingMessage): SmartProxyError | undefined {
  // Fetch metadata (when the browser sends it) and Origin must both say "same origin".
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') {
    return new SmartProxyError('SP_ADMIN_CSRF', `refused a ${site} request`);
  }
  const origin = req.headers.origin;
  if (origin !== undefined) {
    const host = req.headers.host;
    if (host === undefined || (origin !== `http://${host}` && origin !== `https://${host}`)) {
      return new SmartProxyError('SP_ADMIN_CSRF', `Origin ${origin.slice(0, 200)} is not this admin listener`);
    }
  }
  const cookie = cookieOf(req, CSRF_COOKIE);
  const header = req.headers[CSRF_HEADER];
  if (cookie === undefined || typeof header !== 'string' || !sameSecret(cookie, header)) {
    return new SmartProxyError('SP_ADMIN_CSRF', `an admin action from a browser needs the dashboard's ${CSRF_HEADER} header`);
  }
  return undefined;
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && x.length >= 16 && timingSafeEqual(x, y);
}
