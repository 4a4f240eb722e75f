/**
 * Browser sign-in with OpenID Connect: the authorization code flow with PKCE (RFC 7636),
 * `state` and `nonce`, the ID token verified by openid-client (issuer, audience, expiry,
 * signature; the algorithm against `algorithms`), groups mapped from claims (claims.ts),
 * sessions in sealed cookies (sessions.ts), refresh before expiry, sign-out local and at the
 * provider (RP-initiated logout).
 *
 * Routes live under `/_smart_proxy/auth/` (the proxy's reserved prefix: outside
 * `/smart_proxy/`, so no resource id can shadow them):
 *
 * - `GET sign-in?rd=<path>[&provider=<name>]` seals a transaction cookie (state, nonce, PKCE
 *   verifier, return path; kept in the store, the cookie a reference, when a long return path
 *   would make it too big for a browser) and redirects to the provider;
 * - `GET callback/<name>` checks it (single use, through the shared store), redeems the code,
 *   opens the session, asks the data plane to start the resource the user returns to, and
 *   redirects back to the exact path and query;
 * - `GET sign-out[?rd=<path>]` answers a page with a sign-out button (a link must not sign
 *   anyone out: an image or a link on another site could); `POST sign-out` ends the session
 *   here, then at the provider when it offers an end_session_endpoint. The POST must prove it
 *   comes from this site (logout CSRF): `Sec-Fetch-Site: same-origin`, an `Origin` of this
 *   site, or else the page's token, sealed for this session;
 * - `GET signed-out` says so.
 *
 * Return paths are only ever same-origin relative paths (no open redirect).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import * as client from 'openid-client';
import type { OidcIdentityConfig, SessionSettings } from '../../config/access-schema.ts';
import { SmartProxyError } from '../../core/errors.ts';
import type { Clock, KeyValueStore, Logger } from '../../core/ports.ts';
import { bearerToken, looksLikeJwt } from '../bearer.ts';
import { describeJoseError } from '../jwt-verifier.ts';
import { ABSENT, type RequestCredentials, type VerifiedIdentity, type Verifier, type VerifyOutcome } from '../types.ts';
import { mapClaims } from './claims.ts';
import { cookiesWithPrefix, setCookie } from './cookies.ts';
import { Issuer, IssuerUnavailable, isIssuerFailure } from './issuer.ts';
import { Sealer } from './sealer.ts';
import { digest, newSessionId, SessionCookies, type Session } from './sessions.ts';

export const AUTH_PREFIX = '/_smart_proxy/auth/';
/** After a refresh failed for want of the provider, the same token is tried again after this. */
const REFRESH_RETRY_MS = 30_000;
const CALLBACK = `${AUTH_PREFIX}callback/`;
const SIGN_OUT = `${AUTH_PREFIX}sign-out`;
/** The sign-out form's body: a token and a return path, nothing larger. */
const MAX_SIGN_OUT_BODY_BYTES = 8 * 1024;
/** Longest wait for that body: a client that sends its head and then stalls holds nothing long. */
const SIGN_OUT_BODY_TIMEOUT_MS = 10_000;
/** A sign-out page's token is good for this long (the page may sit in a tab). */
const SIGN_OUT_TOKEN_TTL_MS = 12 * 60 * 60_000;
/**
 * The sign-in transaction cookies live under the auth routes (not only the callback), so that
 * a new sign-in sees the ones still pending and can bound them (MAX_PENDING_SIGN_INS).
 */
const TX_PATH = AUTH_PREFIX;
/**
 * Largest transaction cookie (name=value) sent as is. A longer one (a long return URL: the
 * path and query of the page the user wanted) is kept in the state store and the cookie holds
 * a sealed reference: browsers silently drop a cookie over 4096 bytes, and a few large ones
 * would push the callback's Cookie header past a server's header limit (431).
 */
const MAX_INLINE_TX_BYTES = 1200;
/**
 * Sign-ins one browser may have pending at once (tabs, retries, a user who went back from the
 * provider's page). Each leaves a cookie until it completes or `signInTimeoutMs` passes; past
 * this many the oldest are deleted, so retrying cannot grow the Cookie header without bound.
 */
const MAX_PENDING_SIGN_INS = 4;
/**
 * A transaction cookie (and a transaction kept in the store) outlives its sign-in by this
 * much: a person who comes back from the provider too late then reads "the sign-in took too
 * long" with a link back to the page they wanted, instead of "not started in this browser"
 * and no way back (the browser would have dropped an expired cookie). `exp` inside it still
 * refuses the late answer.
 */
const TX_GRACE_MS = 60 * 60_000;

/** An identity from a session carries what the response and the backend may need. */
export interface SessionIdentity extends VerifiedIdentity {
  /** Set-Cookie values to send with the response (renewed or refreshed session). */
  readonly responseCookies?: readonly string[];
  /** The OIDC access token, for resources that pass it on. */
  readonly accessToken?: string | undefined;
}

export interface OidcSignInOptions {
  readonly identities: readonly OidcIdentityConfig[];
  /** Client secrets by identity name, resolved at start-up. */
  readonly clientSecrets: ReadonlyMap<string, string | undefined>;
  readonly sessions: SessionSettings;
  /** Session keys, resolved (first seals, all open). */
  readonly keys: readonly string[];
  /** The proxy terminates TLS itself. */
  readonly tls: boolean;
  readonly kv: KeyValueStore;
  readonly clock: Clock;
  readonly logger: Logger;
  /**
   * Did this request reach a trusted front proxy over https (its `X-Forwarded-Proto`, from a
   * peer in `trustedProxies`)? Then cookies are Secure with `secure: auto` even when
   * `publicUrl` says http (a front that terminates TLS for a proxy configured by its inner URL).
   */
  readonly forwardedHttps?: (remoteAddress: string | undefined, forwardedProto: string | undefined) => boolean;
}

/** Called once a user signed in, with the path they return to (start the resource early). */
export type SignedInHook = (returnPath: string, identity: VerifiedIdentity & { readonly remoteAddress: string | undefined; readonly method: string }) => void;

const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

function signInFailed(reason: string): SmartProxyError {
  return new SmartProxyError('SP_ACCESS_SIGN_IN_FAILED', `Sign-in failed: ${reason}. Go back to the page you wanted and try again.`, { data: { reason } });
}

/**
 * The provider's own `error=` answer at the callback (RFC 6749 §4.1.2.1), once the state
 * matched: `access_denied` (the user declined, or may not use this client) is a 403;
 * `server_error` and `temporarily_unavailable` are the provider's trouble, a 503 to retry;
 * anything else a failed sign-in (400). Each with a link to sign in again (#callback).
 */
function providerRefused(error: string, description: string | null, issuer: string): SmartProxyError {
  const said = `${error.slice(0, 100)}${description === null ? '' : `: ${description.slice(0, 200)}`}`;
  if (error === 'access_denied') {
    return new SmartProxyError('SP_ACCESS_DENIED', `The sign-in provider refused the sign-in (${said}). Ask for access there, or sign in as someone else.`,
      { data: { reason: `the provider refused it (${said})` } });
  }
  if (error === 'server_error' || error === 'temporarily_unavailable') {
    return new SmartProxyError('SP_ACCESS_UNAVAILABLE', `The sign-in provider (${issuer}) could not complete the sign-in right now (${said}). Try again in a moment.`,
      { retryAfterS: 5, data: { reason: `the provider failed (${said})` } });
  }
  return signInFailed(`the provider refused it (${said})`);
}

function unavailable(err: unknown, issuer: string): SmartProxyError {
  return new SmartProxyError('SP_ACCESS_UNAVAILABLE',
    `The sign-in provider (${issuer}) cannot be reached right now. Try again in a moment.`, { retryAfterS: 5, cause: err });
}

export class OidcSignIn {
  readonly sessions: SessionCookies;
  readonly #issuers: ReadonlyMap<string, Issuer>;
  readonly #sealer: Sealer;
  readonly #kv: KeyValueStore;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #origin: string;
  readonly #settings: SessionSettings;
  /** Refreshes in flight, by refresh-token digest: one per token in this replica. */
  readonly #refreshing = new Map<string, Promise<Session | 'ended' | 'unavailable'>>();
  /** After a provider outage, a token's next refresh waits (requests must not each wait on a dead provider). */
  readonly #refreshRetryAt = new Map<string, number>();
  #onSignedIn: SignedInHook = () => undefined;
  readonly #forwardedHttps: NonNullable<OidcSignInOptions['forwardedHttps']>;

  constructor(options: OidcSignInOptions) {
    this.#settings = options.sessions;
    this.#origin = new URL(options.sessions.publicUrl ?? 'http://localhost').origin;
    this.#sealer = new Sealer(options.keys);
    this.#kv = options.kv;
    this.#clock = options.clock;
    this.#log = options.logger;
    const secure = options.sessions.secure === 'always' || (options.sessions.secure === 'auto' && (options.tls || this.#origin.startsWith('https:')));
    this.sessions = new SessionCookies({ settings: options.sessions, secure, sealer: this.#sealer, kv: options.kv, clock: options.clock });
    this.#forwardedHttps = options.forwardedHttps ?? (() => false);
    this.#issuers = new Map(options.identities.map((cfg) => [cfg.name, new Issuer(cfg, options.clientSecrets.get(cfg.name), options.logger, () => options.clock.now())]));
  }

  /** Is a cookie set in answer to this request Secure (see OidcSignInOptions.forwardedHttps)? */
  #secure(remoteAddress: string | undefined, forwardedProto: string | readonly string[] | undefined): boolean {
    if (this.sessions.secure) return true;
    if (this.#settings.secure !== 'auto') return false;
    return this.#forwardedHttps(remoteAddress, typeof forwardedProto === 'string' ? forwardedProto : forwardedProto?.[0]);
  }

  #secureFor(req: IncomingMessage): boolean {
    return this.#secure(req.socket.remoteAddress, req.headers['x-forwarded-proto']);
  }

  /** Discovers every provider in the background (start-up): one that is down is logged at once. */
  warmUp(): void {
    for (const issuer of this.#issuers.values()) issuer.warmUp();
  }

  /** Who starts a resource at the callback (the data plane, wired by main.ts). */
  set onSignedIn(hook: SignedInHook) {
    this.#onSignedIn = hook;
  }

  /** Is this target one of the sign-in routes? */
  handles(url: string | undefined): boolean {
    return url !== undefined && url.startsWith(AUTH_PREFIX);
  }

  /** Where a browser that must sign in first goes, to come back to `target` afterwards. */
  signInLocation(target: string): string {
    const rd = safeReturnPath(target, this.#origin);
    return `${this.#origin}${AUTH_PREFIX}sign-in${rd === undefined ? '' : `?rd=${encodeURIComponent(rd)}`}`;
  }

  /**
   * Where to sign in after a request that cannot be replayed by a redirect (a form's POST):
   * back to the page it was sent from, when the browser named one on this site (`Referer`).
   */
  signInLocationAfter(referer: string | undefined): string {
    let back: string | undefined;
    if (referer !== undefined) {
      try {
        const r = new URL(referer);
        if (r.origin === this.#origin) back = `${r.pathname}${r.search}`;
      } catch {
        back = undefined;
      }
    }
    return back === undefined ? `${this.#origin}${AUTH_PREFIX}sign-in` : this.signInLocation(back);
  }

  /**
   * The verifier of one oidc identity: its session cookies, and its bearer JWTs when enabled.
   * Its challenge is Bearer even without `acceptBearer`: a 401 must carry one (RFC 9110
   * §11.6.1), and with oidc alone there would be none; a session cookie has no scheme of its
   * own, and API clients of such a proxy go through the same provider's tokens anyway.
   */
  verifier(name: string, challenge: string): Verifier {
    const issuer = this.#issuers.get(name) as Issuer;
    return {
      kind: 'oidc',
      challenge,
      verify: (credentials) => this.#verify(issuer, credentials),
    };
  }

  async #verify(issuer: Issuer, credentials: RequestCredentials): Promise<VerifyOutcome> {
    const token = bearerToken(credentials.authorization);
    if (token !== undefined) return issuer.cfg.acceptBearer ? this.#verifyBearer(issuer, token) : ABSENT;
    const opened = await this.sessions.open(credentials.header('cookie'));
    if (opened.kind === 'none') return ABSENT;
    if (opened.kind === 'invalid') return opened.unavailable === true ? { kind: 'invalid', reason: opened.reason, unavailable: true } : { kind: 'invalid', reason: opened.reason };
    let session = opened.session;
    // Another identity's session: not ours to judge.
    if (session.prov !== issuer.cfg.name) return ABSENT;
    let renew = false;
    if (this.sessions.dueForRefresh(session)) {
      const refreshed = await this.#refresh(issuer, session);
      if (refreshed === 'ended') return { kind: 'invalid', reason: 'the provider ended the session (refresh refused)' };
      if (refreshed !== 'unavailable') {
        session = refreshed;
        renew = true;
      }
    }
    if (renew || this.sessions.dueForTouch(session)) session = { ...session, seen: this.#clock.now() };
    const cookies = renew || session !== opened.session
      ? [await this.#issueOrKeep(session, this.#secure(credentials.remoteAddress, credentials.header('x-forwarded-proto')[0]))]
      : undefined;
    const identity: SessionIdentity = {
      user: session.user, groups: session.groups, via: 'oidc',
      ...(cookies === undefined ? {} : { responseCookies: cookies }),
      accessToken: session.at,
    };
    return { kind: 'verified', identity };
  }

  /** Renews the cookie; if the store holding a large session is down, the old cookie stays. */
  async #issueOrKeep(session: Session, secure: boolean): Promise<string> {
    try {
      return await this.sessions.issue(session, secure);
    } catch (err) {
      this.#log.warn({ err: String(err) }, 'oidc: session could not be renewed (store unreachable)');
      return '';
    }
  }

  async #verifyBearer(issuer: Issuer, token: string): Promise<VerifyOutcome> {
    if (!looksLikeJwt(token)) return ABSENT;
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      return ABSENT;
    }
    // Tokens of other issuers are left to the other verifiers.
    if (iss !== issuer.cfg.issuer && iss !== issuer.cfg.issuer.replace(/\/$/, '')) return ABSENT;
    let payload: JWTPayload;
    try {
      const keys = await issuer.keys();
      ({ payload } = await jwtVerify(token, keys, {
        issuer: iss,
        audience: issuer.cfg.bearerAudience ?? issuer.cfg.clientId,
        algorithms: [...issuer.cfg.algorithms],
        requiredClaims: ['exp'],
        clockTolerance: issuer.cfg.clockToleranceMs / 1000,
        currentDate: new Date(this.#clock.now()),
      }));
    } catch (err) {
      if (err instanceof IssuerUnavailable) return { kind: 'invalid', reason: 'the sign-in provider cannot be reached', unavailable: true };
      const { reason, unavailable: down } = err instanceof joseErrors.JOSEError || !isIssuerFailure(err) ? describeJoseError(err) : { reason: 'the key set could not be fetched', unavailable: true };
      return { kind: 'invalid', reason, unavailable: down };
    }
    const mapped = mapClaims(issuer.cfg, payload);
    if (typeof mapped === 'string') return { kind: 'invalid', reason: mapped };
    return { kind: 'verified', identity: { user: mapped.user, groups: mapped.groups, via: 'jwt' } };
  }

  /** Refreshes the access token; single-flight per refresh token, shared across replicas. */
  #refresh(issuer: Issuer, session: Session): Promise<Session | 'ended' | 'unavailable'> {
    const key = digest(session.rt as string);
    const retryAt = this.#refreshRetryAt.get(key);
    if (retryAt !== undefined && this.#clock.now() < retryAt) return Promise.resolve('unavailable');
    let p = this.#refreshing.get(key);
    if (p === undefined) {
      p = this.#doRefresh(issuer, session, key).then((out) => {
        if (out === 'unavailable') {
          // Bounded: an outage with very many sessions forgets the oldest back-offs first.
          if (this.#refreshRetryAt.size >= 10_000) this.#refreshRetryAt.delete(this.#refreshRetryAt.keys().next().value as string);
          this.#refreshRetryAt.set(key, this.#clock.now() + REFRESH_RETRY_MS);
        } else {
          this.#refreshRetryAt.delete(key);
        }
        return out;
      }).finally(() => this.#refreshing.delete(key));
      this.#refreshing.set(key, p);
    }
    return p;
  }

  async #doRefresh(issuer: Issuer, session: Session, key: string): Promise<Session | 'ended' | 'unavailable'> {
    const shared = async (): Promise<Session | undefined> => {
      const s = await this.#kv.get(`refreshed:${key}`).catch(() => undefined);
      const v = s === undefined ? undefined : await this.#sealer.open('session', s);
      return v === undefined || v.sid !== session.sid ? undefined : (v as unknown as Session);
    };
    const already = await shared();
    if (already !== undefined) return already;
    try {
      const config = await issuer.configuration();
      const tokens = await client.refreshTokenGrant(config, session.rt as string);
      let { user, groups } = session;
      // The groups are read again, as at sign-in: this is when a group removed at the provider
      // stops working here. With `userinfo`, the userinfo claims complete the ID token's, as
      // at sign-in: from a provider that puts the groups (or the user claim) only there, the
      // ID token alone would take every group away at the first refresh (or never update
      // them). Without a new ID token, the one from sign-in names the subject.
      let claims: Record<string, unknown> | undefined = tokens.id_token === undefined ? undefined : { ...tokens.claims() };
      if (issuer.cfg.userinfo) {
        const base = claims ?? (session.idt === undefined ? {} : { ...decodeJwt(session.idt) });
        const sub = typeof base.sub === 'string' ? base.sub : client.skipSubjectCheck;
        claims = { ...base, ...await client.fetchUserInfo(config, tokens.access_token, sub) };
      }
      if (claims !== undefined) {
        const mapped = mapClaims(issuer.cfg, claims);
        if (typeof mapped !== 'string') ({ user, groups } = mapped);
      }
      const now = this.#clock.now();
      const next: Session = {
        ...session, user, groups,
        at: tokens.access_token,
        atExp: tokens.expires_in === undefined ? undefined : now + tokens.expires_in * 1000,
        rt: tokens.refresh_token ?? session.rt,
        idt: tokens.id_token ?? session.idt,
        seen: now,
      };
      const { sid: _sid, ...rest } = next;
      await this.#kv.set(`refreshed:${key}`, await this.#sealer.seal('session', { sid: next.sid, ...rest }), 60_000).catch(() => undefined);
      this.#log.debug({ provider: issuer.cfg.name, user }, 'oidc: access token refreshed');
      return next;
    } catch (err) {
      if (isIssuerFailure(err)) {
        this.#log.warn({ provider: issuer.cfg.name, err: String(err) }, 'oidc: refresh failed (provider unreachable); the session goes on');
        return 'unavailable';
      }
      // A replica or tab that won the race with a rotated refresh token has left its result.
      const raced = await shared();
      if (raced !== undefined) return raced;
      this.#log.info({ provider: issuer.cfg.name, user: session.user, err: String(err) }, 'oidc: refresh refused; the session ends');
      return 'ended';
    }
  }

  /** Serves one of the sign-in routes. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.#origin);
    const path = url.pathname;
    const method = req.method ?? 'GET';
    if (path === SIGN_OUT) {
      if (method === 'POST') await this.#signOut(req, res, url);
      else if (method === 'GET' || method === 'HEAD') await this.#signOutPage(req, res, url);
      else {
        res.setHeader('allow', 'GET, HEAD, POST');
        throw methodNotAllowed('GET, HEAD, POST');
      }
      return;
    }
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      throw methodNotAllowed('GET, HEAD');
    }
    if (path === `${AUTH_PREFIX}sign-in`) await this.#signIn(req, res, url);
    else if (path.startsWith(CALLBACK)) {
      // A callback's state is single use: a HEAD (a link checker, a prefetch) must not spend
      // it and leave the person's own GET a refusal.
      if (method !== 'GET') {
        res.setHeader('allow', 'GET');
        throw methodNotAllowed('GET');
      }
      await this.#callback(req, res, url, path.slice(CALLBACK.length));
    }
    else if (path === `${AUTH_PREFIX}signed-out`) this.#page(res, 'Signed out', `<p>You are signed out.</p>${this.#signInLink(url.searchParams.get('rd'))}`);
    else if (path === `${AUTH_PREFIX}signed-in`) {
      const opened = await this.sessions.open(headerValues(req, 'cookie'));
      if (opened.kind !== 'session') this.#page(res, 'Not signed in', this.#signInLink(null));
      else this.#page(res, 'Signed in', `<p>Signed in as <b>${escapeHtml(opened.session.user)}</b> (groups: ${escapeHtml(opened.session.groups.join(', ') || 'none')}).</p>`
        + await this.#signOutForm(opened.session, undefined));
    }
    else throw new SmartProxyError('SP_ROUTE_NOT_FOUND', `nothing at ${path.slice(0, 200)}`);
  }

  #signInLink(rdParam: string | null): string {
    const rd = rdParam === null ? undefined : safeReturnPath(rdParam, this.#origin);
    return `<p><a href="${escapeHtml(`${AUTH_PREFIX}sign-in${rd === undefined ? '' : `?rd=${encodeURIComponent(rd)}`}`)}">Sign in again</a></p>`;
  }

  async #signIn(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const rdParam = url.searchParams.get('rd');
    const rd = rdParam === null ? undefined : safeReturnPath(rdParam, this.#origin);
    if (rdParam !== null && rd === undefined) throw signInFailed('the return address is not a path on this site');
    const name = url.searchParams.get('provider');
    if (name === null && this.#issuers.size > 1) {
      const links = [...this.#issuers.keys()].map((n) => {
        const href = `${AUTH_PREFIX}sign-in?provider=${encodeURIComponent(n)}${rd === undefined ? '' : `&rd=${encodeURIComponent(rd)}`}`;
        return `<li><a href="${escapeHtml(href)}">${escapeHtml(n)}</a></li>`;
      }).join('');
      this.#page(res, 'Sign in', `<p>Sign in with:</p><ul>${links}</ul>`);
      return;
    }
    const issuer = name === null ? [...this.#issuers.values()][0] as Issuer : this.#issuers.get(name);
    if (issuer === undefined) throw signInFailed('unknown sign-in provider');
    let config: client.Configuration;
    try {
      config = await issuer.configuration();
    } catch (err) {
      throw unavailable(err, issuer.cfg.issuer);
    }
    const state = client.randomState();
    const nonce = client.randomNonce();
    const verifier = client.randomPKCECodeVerifier();
    const scopes = issuer.cfg.scopes.includes('openid') ? issuer.cfg.scopes : ['openid', ...issuer.cfg.scopes];
    const target = client.buildAuthorizationUrl(config, {
      redirect_uri: this.#callbackUrl(issuer.cfg.name),
      scope: scopes.join(' '),
      state, nonce,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    });
    const exp = this.#clock.now() + this.#settings.signInTimeoutMs;
    const txName = this.#txCookie(state);
    let tx = await this.#sealer.seal('sign-in', { state, nonce, cv: verifier, prov: issuer.cfg.name, rd, exp });
    if (txName.length + 1 + tx.length > MAX_INLINE_TX_BYTES) {
      // Too long for a cookie (a long return URL): the store keeps it until the callback.
      try {
        await this.#kv.set(`sign-in-tx:${digest(state)}`, tx, this.#settings.signInTimeoutMs + TX_GRACE_MS);
      } catch (err) {
        throw new SmartProxyError('SP_ACCESS_UNAVAILABLE', 'The session store cannot be reached; try again in a moment.', { retryAfterS: 5, cause: err });
      }
      tx = await this.#sealer.seal('sign-in-ref', { state, exp });
    }
    const attrs = { path: TX_PATH, secure: this.#secureFor(req) } as const;
    // One cookie per sign-in (two tabs may sign in at once); the oldest beyond the bound go.
    res.setHeader('set-cookie', [
      ...(await this.#stalePendingSignIns(req)).map((n) => setCookie(n, '', { ...attrs, maxAgeS: 0 })),
      setCookie(txName, tx, { ...attrs, maxAgeS: (this.#settings.signInTimeoutMs + TX_GRACE_MS) / 1000 }),
    ]);
    redirect(res, target.href);
  }

  #txCookie(state: string): string {
    return `${this.#txPrefix()}${digest(state).slice(0, 16)}`;
  }

  #txPrefix(): string {
    return `${this.#settings.cookieName}_tx_`;
  }

  /**
   * The transaction cookies this request carries that must go so that, with the one about to
   * be set, at most MAX_PENDING_SIGN_INS remain: the ones that do not open first, then the
   * oldest (by their expiry, which is their start plus the same timeout).
   */
  async #stalePendingSignIns(req: IncomingMessage): Promise<string[]> {
    const pending = cookiesWithPrefix(headerValues(req, 'cookie'), this.#txPrefix());
    if (pending.length < MAX_PENDING_SIGN_INS) return [];
    const aged = await Promise.all(pending.map(async ([n, v], i) => {
      // Only so many are opened: a flood of them (set by no sign-in of ours) just goes.
      const opened = i >= 16 ? undefined : await this.#sealer.open('sign-in', v) ?? await this.#sealer.open('sign-in-ref', v);
      return { n, exp: typeof opened?.exp === 'number' ? opened.exp : Number.NEGATIVE_INFINITY };
    }));
    aged.sort((a, b) => a.exp - b.exp);
    const names = [...new Set(aged.map((a) => a.n))];
    // At most 32 deletions per answer: hundreds of them (set by nobody's sign-in) would make a
    // response head no client wants; the next sign-ins delete the rest.
    return names.slice(0, Math.min(32, Math.max(0, names.length - (MAX_PENDING_SIGN_INS - 1))));
  }

  /** This callback's transaction: from its cookie, or from the store when the cookie holds a reference. */
  async #transaction(sealed: string | undefined, state: string): Promise<Record<string, unknown> | undefined> {
    if (sealed === undefined) return undefined;
    const inline = await this.#sealer.open('sign-in', sealed);
    if (inline !== undefined) return inline;
    const ref = await this.#sealer.open('sign-in-ref', sealed);
    if (ref === undefined || ref.state !== state) return undefined;
    let stored: string | undefined;
    try {
      stored = await this.#kv.get(`sign-in-tx:${digest(state)}`);
    } catch (err) {
      throw new SmartProxyError('SP_ACCESS_UNAVAILABLE', 'The session store cannot be reached; try again in a moment.', { retryAfterS: 5, cause: err });
    }
    if (stored === undefined) return undefined;
    // Served: one callback reads it (the state's single use is enforced apart, below).
    await this.#kv.delete(`sign-in-tx:${digest(state)}`).catch(() => undefined);
    return this.#sealer.open('sign-in', stored);
  }

  #callbackUrl(name: string): string {
    return `${this.#origin}${CALLBACK}${encodeURIComponent(name)}`;
  }

  /**
   * The callback. A refusal or an outage here leaves the person on a page of ours with nowhere
   * to go (their sign-in cannot be replayed: its state is single use), so the answer carries
   * a fresh sign-in back to the page they wanted, as a link on the HTML page and as
   * `signInUrl` in the problem document.
   */
  async #callback(req: IncomingMessage, res: ServerResponse, url: URL, name: string): Promise<void> {
    const known: { rd?: string } = {};
    try {
      await this.#redeem(req, res, url, name, known);
    } catch (err) {
      if (!(err instanceof SmartProxyError) || (err.code !== 'SP_ACCESS_SIGN_IN_FAILED' && err.code !== 'SP_ACCESS_UNAVAILABLE' && err.code !== 'SP_ACCESS_DENIED')) throw err;
      throw new SmartProxyError(err.code, err.message, {
        data: { ...err.data, signInUrl: this.signInLocation(known.rd ?? '') }, retryAfterS: err.retryAfterS, cause: err.cause,
      });
    }
  }

  async #redeem(req: IncomingMessage, res: ServerResponse, url: URL, name: string, known: { rd?: string }): Promise<void> {
    // A malformed escape (`%zz`, a lone `%`) names no provider: a 404 like any unknown name,
    // not the URIError decodeURIComponent throws (a 500 logged as a failure of ours).
    let decoded: string | undefined;
    try {
      decoded = decodeURIComponent(name);
    } catch {
      decoded = undefined;
    }
    const issuer = decoded === undefined ? undefined : this.#issuers.get(decoded);
    if (issuer === undefined) throw new SmartProxyError('SP_ROUTE_NOT_FOUND', 'no such sign-in provider');
    const state = url.searchParams.get('state');
    if (state === null || state.length === 0 || state.length > 512) throw signInFailed('the answer carries no state');
    const txName = this.#txCookie(state);
    const sealed = cookiesWithPrefix(headerValues(req, 'cookie'), txName).find(([n]) => n === txName)?.[1];
    // Whatever happens next, this sign-in's cookie has served.
    const clearTx = setCookie(txName, '', { path: TX_PATH, secure: this.#secureFor(req), maxAgeS: 0 });
    res.setHeader('set-cookie', clearTx);
    const tx = await this.#transaction(sealed, state);
    if (tx === undefined || tx.state !== state || tx.prov !== issuer.cfg.name) {
      throw signInFailed('this sign-in was not started in this browser, or it has already been used');
    }
    if (typeof tx.rd === 'string') known.rd = tx.rd;
    if (typeof tx.exp !== 'number' || tx.exp < this.#clock.now()) throw signInFailed('the sign-in took too long');
    const providerError = url.searchParams.get('error');
    if (providerError !== null) throw providerRefused(providerError, url.searchParams.get('error_description'), issuer.cfg.issuer);
    // Single use across replicas: a replayed answer (same state) is refused even with its cookie.
    let first: boolean;
    try {
      first = await this.#kv.setIfAbsent(`sign-in-used:${digest(state)}`, '1', this.#settings.signInTimeoutMs);
    } catch (err) {
      throw new SmartProxyError('SP_ACCESS_UNAVAILABLE', 'The session store cannot be reached; try again in a moment.', { retryAfterS: 5, cause: err });
    }
    if (!first) throw signInFailed('this sign-in answer has already been used');
    let config: client.Configuration;
    try {
      config = await issuer.configuration();
    } catch (err) {
      throw unavailable(err, issuer.cfg.issuer);
    }
    const current = new URL(this.#callbackUrl(issuer.cfg.name));
    current.search = url.search;
    let tokens: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      tokens = await client.authorizationCodeGrant(config, current, {
        pkceCodeVerifier: tx.cv as string, expectedState: state, expectedNonce: tx.nonce as string, idTokenExpected: true,
      });
    } catch (err) {
      if (isIssuerFailure(err)) throw unavailable(err, issuer.cfg.issuer);
      this.#log.info({ provider: issuer.cfg.name, err: String(err) }, 'oidc: sign-in refused');
      throw signInFailed(describeGrantError(err));
    }
    const idToken = tokens.id_token as string;
    const alg = decodeProtectedHeader(idToken).alg;
    if (alg === undefined || !(issuer.cfg.algorithms as readonly string[]).includes(alg)) throw signInFailed(`the ID token is signed with ${String(alg)}, which is not allowed`);
    // openid-client checks the ID token's claims (issuer, audience, expiry, nonce) but, from the
    // token endpoint over TLS, not its signature (OpenID Connect Core §3.1.3.7 allows that).
    // Checked here against the provider's key set (fetched once and cached, as for bearer JWTs):
    // a token endpoint answering through a broken TLS set-up or a wrong URL cannot mint users.
    const verifyIdToken = async (): Promise<unknown> => jwtVerify(idToken, await issuer.keys(), { algorithms: [...issuer.cfg.algorithms], clockTolerance: issuer.cfg.clockToleranceMs / 1000, currentDate: new Date(this.#clock.now()) });
    try {
      try {
        await verifyIdToken();
      } catch (err) {
        // A key the set read moments ago lacks: the provider rotated its keys. Read them again.
        if (!(err instanceof joseErrors.JWKSNoMatchingKey) || !await issuer.reloadKeys()) throw err;
        this.#log.info({ provider: issuer.cfg.name, kid: decodeProtectedHeader(idToken).kid }, 'oidc: the ID token names a new signing key; key set read again');
        await verifyIdToken();
      }
    } catch (err) {
      if (err instanceof IssuerUnavailable || (!(err instanceof joseErrors.JOSEError) && isIssuerFailure(err))) throw unavailable(err, issuer.cfg.issuer);
      if (err instanceof joseErrors.JWKSTimeout || err instanceof joseErrors.JWKSInvalid) throw unavailable(err, issuer.cfg.issuer);
      this.#log.info({ provider: issuer.cfg.name, err: String(err) }, 'oidc: sign-in refused: the ID token signature does not verify');
      throw signInFailed('the ID token\'s signature does not verify against the provider\'s keys');
    }
    let claims: Record<string, unknown> = { ...tokens.claims() };
    if (issuer.cfg.userinfo) {
      try {
        const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub as string);
        claims = { ...claims, ...info };
      } catch (err) {
        if (isIssuerFailure(err)) throw unavailable(err, issuer.cfg.issuer);
        throw signInFailed('the userinfo answer was refused');
      }
    }
    const mapped = mapClaims(issuer.cfg, claims);
    if (typeof mapped === 'string') throw signInFailed(mapped);
    const now = this.#clock.now();
    const session: Session = {
      sid: newSessionId(), prov: issuer.cfg.name, user: mapped.user, groups: mapped.groups, iat: now, seen: now,
      at: tokens.access_token,
      atExp: tokens.expires_in === undefined ? undefined : now + tokens.expires_in * 1000,
      rt: tokens.refresh_token, idt: idToken,
    };
    let cookie: string;
    try {
      cookie = await this.sessions.issue(session, this.#secureFor(req));
    } catch (err) {
      throw new SmartProxyError('SP_ACCESS_UNAVAILABLE', 'The session store cannot be reached; try again in a moment.', { retryAfterS: 5, cause: err });
    }
    res.setHeader('set-cookie', [clearTx, cookie]);
    this.#log.info({ provider: issuer.cfg.name, user: mapped.user, groups: mapped.groups, dropped: mapped.dropped }, 'oidc: signed in');
    const rd = typeof tx.rd === 'string' ? safeReturnPath(tx.rd, this.#origin) : undefined;
    if (rd !== undefined) {
      // The user is known now: start what they come back to before the browser even asks.
      try {
        this.#onSignedIn(rd, { user: mapped.user, groups: mapped.groups, via: 'oidc', remoteAddress: req.socket.remoteAddress, method: 'GET' });
      } catch (err) {
        this.#log.warn({ err: String(err) }, 'oidc: early start failed');
      }
    }
    redirect(res, `${this.#origin}${rd ?? `${AUTH_PREFIX}signed-in`}`);
  }

  /** GET sign-out: a confirmation page whose button POSTs (a GET never signs out). */
  async #signOutPage(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const opened = await this.sessions.open(headerValues(req, 'cookie'));
    const rdParam = url.searchParams.get('rd');
    const rd = rdParam === null ? undefined : safeReturnPath(rdParam, this.#origin);
    if (opened.kind !== 'session') {
      this.#page(res, 'Not signed in', `<p>You are not signed in.</p>${this.#signInLink(rdParam)}`);
      return;
    }
    this.#page(res, 'Sign out', `<p>Signed in as <b>${escapeHtml(opened.session.user)}</b>.</p>${await this.#signOutForm(opened.session, rd)}`);
  }

  /** The sign-out button: a POST carrying a token sealed for this session (see #csrfProblem). */
  async #signOutForm(session: Session, rd: string | undefined): Promise<string> {
    const token = await this.#sealer.seal('sign-out', { sid: session.sid, exp: this.#clock.now() + SIGN_OUT_TOKEN_TTL_MS });
    return `<form method="post" action="${escapeHtml(`${SIGN_OUT}${rd === undefined ? '' : `?rd=${encodeURIComponent(rd)}`}`)}">`
      + `<input type="hidden" name="token" value="${escapeHtml(token)}"><button>Sign out</button></form>`;
  }

  /**
   * Why this POST may not sign anyone out, or undefined. Another site could make a browser
   * POST here (a form needs no script), so the request must show it comes from this site:
   * `Sec-Fetch-Site` (set by the browser, never by a page) saying same-origin, else an `Origin`
   * of this site (the public URL's, or the Host the browser addressed), else (a browser that
   * sends `Origin: null` or none) the form's token, sealed for this very session.
   */
  async #csrfProblem(req: IncomingMessage, form: URLSearchParams, session: Session | undefined): Promise<string | undefined> {
    const site = req.headers['sec-fetch-site'];
    if (site === 'same-origin') return undefined;
    if (site !== undefined && site !== 'none') return `it came from another site (Sec-Fetch-Site: ${site.slice(0, 40)})`;
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== 'null') {
      return this.#isOwnOrigin(origin, req.headers.host) ? undefined : `it came from ${origin.slice(0, 200)}, not from this site`;
    }
    // Nothing to end: no one is signed out by it.
    if (session === undefined) return undefined;
    const token = form.get('token');
    const opened = token === null || token.length > 4096 ? undefined : await this.#sealer.open('sign-out', token);
    if (opened === undefined || opened.sid !== session.sid) return 'it carries no sign-out token of this session';
    if (typeof opened.exp !== 'number' || opened.exp < this.#clock.now()) return 'its sign-out page is too old';
    return undefined;
  }

  #isOwnOrigin(origin: string, host: string | undefined): boolean {
    let o: URL;
    try {
      o = new URL(origin);
    } catch {
      return false;
    }
    if (o.origin === this.#origin) return true;
    // Without a publicUrl the proxy knows itself by the Host the browser sent (a page on
    // another site cannot make its own Origin name this host).
    return host !== undefined && o.host === host.toLowerCase() && (o.protocol === 'http:' || o.protocol === 'https:');
  }

  /** POST sign-out: checks where it comes from, then ends the session here and at the provider. */
  async #signOut(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const form = await readForm(req);
    const opened = await this.sessions.open(headerValues(req, 'cookie'));
    const session = opened.kind === 'session' ? opened.session : undefined;
    const refused = await this.#csrfProblem(req, form, session);
    if (refused !== undefined) {
      this.#log.warn({ user: session?.user, origin: req.headers.origin?.slice(0, 200), site: req.headers['sec-fetch-site'] }, 'oidc: sign-out refused (not from this site)');
      throw new SmartProxyError('SP_ACCESS_DENIED', `Sign-out refused: ${refused}. Sign out with the button at ${SIGN_OUT}.`, { data: { reason: 'sign-out not from this site' } });
    }
    res.setHeader('set-cookie', await this.sessions.end(session, opened.kind === 'session' && opened.stored, this.#secureFor(req)));
    const rdParam = url.searchParams.get('rd') ?? form.get('rd');
    const rd = rdParam === null ? undefined : safeReturnPath(rdParam, this.#origin);
    const signedOut = `${this.#origin}${AUTH_PREFIX}signed-out${rd === undefined ? '' : `?rd=${encodeURIComponent(rd)}`}`;
    const issuer = session === undefined ? undefined : this.#issuers.get(session.prov);
    if (issuer !== undefined && issuer.cfg.endSession && session !== undefined) {
      try {
        const config = await issuer.configuration();
        if (config.serverMetadata().end_session_endpoint !== undefined) {
          const params: Record<string, string> = { client_id: issuer.cfg.clientId, post_logout_redirect_uri: `${this.#origin}${AUTH_PREFIX}signed-out` };
          if (session.idt !== undefined) params.id_token_hint = session.idt;
          this.#log.info({ provider: issuer.cfg.name, user: session.user }, 'oidc: signed out (at the provider too)');
          redirect(res, client.buildEndSessionUrl(config, params).href);
          return;
        }
      } catch (err) {
        // Signed out here at least; the provider's own session stays.
        this.#log.warn({ provider: issuer.cfg.name, err: String(err) }, 'oidc: provider sign-out skipped (unreachable)');
      }
    }
    if (session !== undefined) this.#log.info({ user: session.user }, 'oidc: signed out');
    redirect(res, signedOut);
  }

  #page(res: ServerResponse, title: string, body: string): void {
    const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>`
      + '<meta name="viewport" content="width=device-width,initial-scale=1"></head>'
      + `<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a"><main><h1>${escapeHtml(title)}</h1>${body}</main></body></html>`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(html) });
    res.end(res.req.method === 'HEAD' ? undefined : html);
  }

  close(): void {
    this.#refreshing.clear();
    this.#refreshRetryAt.clear();
  }
}

function methodNotAllowed(allow: string): SmartProxyError {
  return new SmartProxyError('SP_ROUTE_METHOD_NOT_ALLOWED', undefined, { data: { allow } });
}

function redirect(res: ServerResponse, location: string): void {
  // 303: the next request is a GET whatever this one was (sign-out may be a POST).
  res.writeHead(303, { location, 'cache-control': 'no-store', 'content-length': '0' });
  res.end();
}

/**
 * The sign-out form's body (application/x-www-form-urlencoded), bounded in bytes and time; an
 * empty or absent body is an empty form. Other content types are read as empty (and bounded).
 */
function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = (): SmartProxyError => new SmartProxyError('SP_BODY_TOO_LARGE', `The sign-out form is larger than ${MAX_SIGN_OUT_BODY_BYTES} bytes.`);
  if (declared > MAX_SIGN_OUT_BODY_BYTES) return Promise.reject(tooLarge());
  const form = /^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '');
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err: Error | undefined, value?: URLSearchParams): void => {
      clearTimeout(timer);
      req.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      if (err !== undefined) reject(err);
      else resolve(value as URLSearchParams);
    };
    const timer = setTimeout(() => done(new SmartProxyError('SP_CLIENT_BODY_TIMEOUT', 'The sign-out form did not arrive in time.')), SIGN_OUT_BODY_TIMEOUT_MS);
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > MAX_SIGN_OUT_BODY_BYTES) {
        done(tooLarge());
        return;
      }
      if (form) chunks.push(c);
    };
    const onEnd = (): void => done(undefined, new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    // A client that left is nobody to answer: an error that logs nothing (not SP_INTERNAL).
    const gone = (): SmartProxyError => new SmartProxyError('SP_CLIENT_BODY_TIMEOUT', 'The client left before its sign-out form arrived.');
    const onError = (): void => done(gone());
    const onClose = (): void => { if (!req.complete) done(gone()); };
    req.on('data', onData).once('end', onEnd).once('error', onError).once('close', onClose);
  });
}

function headerValues(req: IncomingMessage, name: string): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) out.push(raw[i + 1] as string);
  return out;
}

function describeGrantError(err: unknown): string {
  if (err instanceof client.ResponseBodyError) return `the provider refused the code (${err.error})`;
  if (err instanceof client.AuthorizationResponseError) return `the provider refused it (${err.error})`;
  if (err instanceof client.ClientError) {
    // openid-client wraps oauth4webapi's error, whose own cause names the claim.
    const inner = (err as { cause?: { claim?: string; cause?: { claim?: string } } }).cause;
    const cause = { claim: inner?.claim ?? inner?.cause?.claim };
    if (err.code === 'OAUTH_JWT_CLAIM_COMPARISON_FAILED' && cause?.claim === 'nonce') return 'the ID token does not answer this sign-in (nonce mismatch)';
    if (err.code === 'OAUTH_JWT_CLAIM_COMPARISON_FAILED') return `the ID token's "${cause?.claim ?? 'claim'}" is wrong`;
    if (err.code === 'OAUTH_JWT_TIMESTAMP_CHECK_FAILED' || /expired|timestamp/i.test(err.message)) return 'the ID token has expired or is not yet valid';
    return `the provider's answer is not valid (${err.message})`;
  }
  return 'the provider\'s answer could not be checked';
}

/**
 * A return address is accepted only as a path on this origin: starts with one "/", no
 * backslash or control character (browsers treat "/\\host" and "/\thost" as other hosts), and
 * it resolves to the proxy's own origin. It is returned as given, so path and query survive
 * byte for byte; only characters outside ASCII (an `rd` such as `/caf%C3%A9` arrives decoded)
 * are percent-encoded as UTF-8, because a `Location` header cannot carry them (Node refuses a
 * character past U+00FF in a header, so the callback would end in a 500, and sends the others
 * as single bytes that are not their UTF-8).
 */
export function safeReturnPath(rd: string, origin: string): string | undefined {
  if (rd.length === 0 || rd.length > 4096) return undefined;
  if (!rd.startsWith('/') || rd.startsWith('//')) return undefined;
  // eslint-disable-next-line no-control-regex
  if (/[\\\u0000-\u0020\u007f]/.test(rd)) return undefined;
  try {
    if (new URL(rd, origin).origin !== origin) return undefined;
    // eslint-disable-next-line no-control-regex
    return /[^\u0000-\u007f]/.test(rd) ? rd.replace(/[^\u0000-\u007f]+/g, (c) => encodeURIComponent(c)) : rd;
  } catch {
    // new URL() refused it, or a lone surrogate that no UTF-8 can name.
    return undefined;
  }
}
