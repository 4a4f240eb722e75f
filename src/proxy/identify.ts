/**
 * The identify and authorize steps of the pipeline (src/proxy/server.ts), built from the
 * configured identities and resource policies. This file is the only one that knows both
 * node:http and the access layer: it reads credentials out of a request, runs the verifiers
 * in order (src/access/chain.ts), applies the pure policy (src/access/policy.ts), and turns
 * the outcome into 401 / 403 / 404, recording every refusal in the audit trail.
 *
 * The order and what each answer reveals are documented in docs/concepts/access.md.
 */
import type { IncomingMessage } from 'node:http';
import type { AuditSink } from '../access/audit.ts';
import { encodeGroups, encodeHeaderValue } from '../access/backend-headers.ts';
import { createBasicVerifier } from '../access/basic-verifier.ts';
import { HashGate, type CredentialWork } from '../access/credential-cache.ts';
import { challengesOf, verifyChain, type ChainOutcome } from '../access/chain.ts';
import { createHeaderVerifier } from '../access/header-verifier.ts';
import { createJwtVerifier } from '../access/jwt-verifier.ts';
import type { OidcSignIn, SessionIdentity } from '../access/oidc/sign-in.ts';
import { ANONYMOUS, decide, type ResourcePolicy } from '../access/policy.ts';
import { createTokenVerifier } from '../access/token-verifier.ts';
import type { RequestCredentials, VerifiedIdentity, Verifier } from '../access/types.ts';
import type { AccessSettings, IdentityConfig, ResourceAccessConfig } from '../config/access-schema.ts';
import { SmartProxyError } from '../core/errors.ts';
import type { Clock, Logger } from '../core/ports.ts';
import { foldName, TrustedProxies, wireName } from './headers.ts';
import { wantsHtml } from './error-response.ts';
import { isBrowserNavigation } from './prefer.ts';
import type { ParsedTarget } from './route.ts';
import { resourceNotFound, type Authorize, type BackendHeaders, type Identify, type Identity, type UnknownResource } from './server.ts';

export interface AccessOptions {
  /** Tried in this order. */
  readonly identities: readonly IdentityConfig[];
  readonly settings: AccessSettings;
  /** Each resource's policy, by resource id. */
  readonly policies: ReadonlyMap<string, ResourceAccessConfig>;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly audit: AuditSink;
  /** Browser sign-in, when an oidc identity is configured. */
  readonly oidc?: OidcSignIn | undefined;
}

export interface AccessSteps {
  readonly identify: Identify;
  readonly authorize: Authorize;
  readonly unknownResource: UnknownResource;
  readonly backendHeaders: BackendHeaders;
  /** Folded names never passed from a client to a backend, whatever the resource. */
  readonly protectedHeaders: readonly string[];
  readonly verifiers: readonly Verifier[];
}

/** A verified identity plus where the request came from (for the audit trail). */
interface RequestIdentity extends VerifiedIdentity {
  readonly remoteAddress: string | undefined;
  readonly method: string;
}

/** The bounds every verifier shares (one hashing gate for the whole process). */
export function credentialWork(settings: AccessSettings['credentials'], clock: Clock): CredentialWork {
  return {
    gate: new HashGate({ maxConcurrent: settings.maxConcurrentHashes, maxQueued: settings.maxQueuedHashes, retryAfterS: 1 }),
    clock, verifiedTtlMs: settings.verifiedTtlMs, refusedTtlMs: settings.refusedTtlMs,
    cacheMaxEntries: settings.cacheMaxEntries, jwtRecheckMs: settings.jwtRecheckMs,
  };
}

/** Builds one verifier per configured identity, in order. */
export function createVerifiers(identities: readonly IdentityConfig[], realm: string, clock: Clock, log: Logger, work?: CredentialWork, oidc?: OidcSignIn): Verifier[] {
  const bearer = `Bearer realm="${realm}"`;
  return identities.map((cfg): Verifier => {
    switch (cfg.kind) {
      case 'token': return createTokenVerifier(cfg, bearer, work);
      case 'basic': return createBasicVerifier(cfg, `Basic realm="${realm}", charset="UTF-8"`, clock, work);
      case 'jwt': return createJwtVerifier(cfg, bearer, clock, log, work);
      case 'header': {
        const trusted = new TrustedProxies(cfg.fromAddresses);
        return createHeaderVerifier(cfg, (addr) => trusted.has(addr));
      }
      case 'oidc':
        if (oidc === undefined) throw new Error(`identity "${cfg.name}": oidc needs the sign-in routes (access.sessions)`);
        return oidc.verifier(cfg.name, bearer);
    }
  });
}

/** What a verifier may read from a node:http request. */
export function credentialsOf(req: IncomingMessage): RequestCredentials {
  const raw = req.rawHeaders;
  let authorization: string | undefined;
  let authCount = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 13 && name.toLowerCase() === 'authorization') {
      authCount++;
      authorization = raw[i + 1];
    }
  }
  // Two Authorization headers: which one would a backend believe? Neither verifies.
  return new RawCredentials(raw, authCount > 1 ? 'duplicate' : authorization, req.socket.remoteAddress);
}

/** RequestCredentials over the raw header list: a class, so a request costs no closure. */
class RawCredentials implements RequestCredentials {
  readonly #raw: readonly string[];
  readonly authorization: string | undefined;
  readonly remoteAddress: string | undefined;

  constructor(raw: readonly string[], authorization: string | undefined, remoteAddress: string | undefined) {
    this.#raw = raw;
    this.authorization = authorization;
    this.remoteAddress = remoteAddress;
  }

  header(name: string): readonly string[] {
    const raw = this.#raw;
    const out: string[] = [];
    // Exact names only: an underscore variant is never an identity, and is stripped.
    for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) out.push(raw[i + 1] as string);
    return out;
  }
}

/**
 * Everything the access steps read of one resource per request: its policy, and what its
 * backend must not see. One object reached by one lookup: with thousands of resources, each
 * separate table a request looks up is memory the CPU must fetch for that resource.
 */
interface ResourceAccess extends ResourcePolicy {
  /** Folded header names dropped from the client's request for this resource. */
  readonly strip: ReadonlySet<string>;
  readonly passAccessToken: boolean;
}

function accessOf(cfg: ResourceAccessConfig | undefined, settings: AccessSettings, strip: ReadonlySet<string>): ResourceAccess {
  return {
    public: cfg?.public ?? false,
    anyOf: cfg?.anyOf,
    allOf: cfg?.allOf,
    revealExistence: cfg?.revealExistence ?? settings.revealExistence,
    strip,
    passAccessToken: cfg?.passAccessToken === true,
  };
}

/**
 * Is this request a page's script (fetch(), XMLHttpRequest) rather than the person's own
 * navigation, even though it accepts HTML? A redirect to sign in would take it to the
 * provider, another origin, which it can neither follow (CORS) nor show; it gets the 401 and
 * its challenge instead. Browsers say so in their fetch metadata (set by the browser, never
 * by a page): `Sec-Fetch-Mode` other than `navigate`, sent together with `Sec-Fetch-Site` or
 * `Sec-Fetch-Dest`. Node's own fetch() sends `Sec-Fetch-Mode: cors` alone, whatever its
 * caller asked for, so that header alone says nothing. Browsers without fetch metadata send
 * none, and libraries (jQuery, htmx) mark their requests with `X-Requested-With`.
 */
function isScripted(req: IncomingMessage): boolean {
  const mode = req.headers['sec-fetch-mode'];
  // `nested-navigate`: an iframe's navigation in Chromium before version 80.
  if (mode !== undefined && mode !== 'navigate' && mode !== 'nested-navigate' && (req.headers['sec-fetch-site'] !== undefined || req.headers['sec-fetch-dest'] !== undefined)) return true;
  const xrw = req.headers['x-requested-with'];
  return typeof xrw === 'string' && xrw.toLowerCase() === 'xmlhttprequest';
}

/** Quotes are not allowed inside the quoted-string we put a reason in. */
const quoteSafe = (s: string): string => s.replace(/["\\]/g, "'");

export function createAccessSteps(options: AccessOptions): AccessSteps {
  const { settings, clock, audit } = options;
  const log = options.logger;
  const work = credentialWork(settings.credentials, clock);
  const { oidc } = options;
  const verifiers = createVerifiers(options.identities, settings.realm, clock, log, work, oidc);
  const challenges = challengesOf(verifiers);

  // Identity headers: the ones we set for backends, and the ones a front proxy sets for us.
  const protectedHeaders = new Set([foldName(settings.backendHeaders.user), foldName(settings.backendHeaders.groups), foldName(settings.backendHeaders.accessToken)]);
  for (const cfg of options.identities) {
    if (cfg.kind === 'header') {
      protectedHeaders.add(foldName(cfg.userHeader));
      protectedHeaders.add(foldName(cfg.groupsHeader));
    }
  }
  const stripWithCredentials = new Set([...protectedHeaders, 'authorization']);
  const stripFor = (cfg: ResourceAccessConfig | undefined): ReadonlySet<string> => (cfg?.passCredentials === true ? protectedHeaders : stripWithCredentials);
  const accesses = new Map<string, ResourceAccess>();
  for (const [id, cfg] of options.policies) accesses.set(id, accessOf(cfg, settings, stripFor(cfg)));
  const unconfigured = accessOf(undefined, settings, stripFor(undefined));
  const accessFor = (id: string): ResourceAccess => accesses.get(id) ?? unconfigured;

  const refuseUnauthenticated = (req: IncomingMessage, route: ParsedTarget, out: Exclude<ChainOutcome, { kind: 'verified' }>, known: boolean): SmartProxyError => {
    const reason = out.kind === 'anonymous' ? 'no credentials' : out.reason;
    audit.record({
      type: 'denied', at: clock.now(), resource: route.resourceId, known,
      actor: { user: undefined, via: out.kind === 'anonymous' ? 'anonymous' : out.via, remoteAddress: req.socket.remoteAddress },
      code: out.kind === 'invalid' && out.unavailable ? 'SP_ACCESS_UNAVAILABLE' : 'SP_ACCESS_UNAUTHENTICATED',
      reason, method: req.method ?? '', urlGroups: route.allGroups ? '-' : route.groups.join(','), heldGroups: [],
    });
    if (out.kind === 'invalid' && out.unavailable) {
      return new SmartProxyError('SP_ACCESS_UNAVAILABLE', undefined, { retryAfterS: 5 });
    }
    // A person in a browser is sent to sign in (and back); an API client gets its 401 below.
    // A refused Authorization header is the client's own credential: it gets the 401.
    if (oidc !== undefined && isBrowserNavigation(req) && !isScripted(req) && req.url !== undefined && req.headers.authorization === undefined && (out.kind === 'anonymous' || out.via === 'oidc')) {
      return new SmartProxyError('SP_ACCESS_SIGN_IN_REQUIRED', 'Sign in to continue.', { data: { location: oidc.signInLocation(req.url) } });
    }
    // A browser's request that a redirect would not replay (a form's POST, whose body is not
    // read): a 401 saying so, and the way to sign in and back to the page that sent it.
    // Redirecting it would turn it into a GET and drop its body without a word. A page's
    // script (fetch, XHR) gets the same way back to its page, whatever it accepts, so that it
    // can send the person there (`signInUrl` in the problem document).
    const signInUrl = oidc !== undefined && (wantsHtml(req) || isScripted(req)) && req.headers.authorization === undefined && (out.kind === 'anonymous' || out.via === 'oidc')
      ? oidc.signInLocationAfter(req.headers.referer)
      : undefined;
    // RFC 6750 §3.1: tell a bearer client its token is the problem, so it refreshes it.
    const bearerRefused = out.kind === 'invalid' && (out.via === 'jwt' || out.via === 'token' || /^bearer /i.test(req.headers.authorization ?? ''));
    const list = challenges.map((c) => (bearerRefused && c.startsWith('Bearer ') ? `${c}, error="invalid_token", error_description="${quoteSafe(reason)}"` : c));
    if (signInUrl !== undefined) {
      return new SmartProxyError('SP_ACCESS_UNAUTHENTICATED',
        `${out.kind === 'anonymous' ? 'You are not signed in' : `Your session is not valid (${reason})`}, so this ${(req.method ?? '').slice(0, 20)} request was not sent on. Sign in, then send it again.`,
        { data: { challenges: list, signInUrl } });
    }
    return new SmartProxyError('SP_ACCESS_UNAUTHENTICATED',
      out.kind === 'anonymous' ? 'This resource needs a verified identity.' : `The credentials were refused: ${reason}.`,
      { data: { challenges: list } });
  };

  // The chain's answer as the pipeline's: one function for every request (not a closure each).
  const judged = (req: IncomingMessage, route: ParsedTarget, out: ChainOutcome, remoteAddress: string | undefined, method: string): Identity | SmartProxyError => {
    if (out.kind === 'verified') {
      // Spread: a session identity (oidc) carries more than user and groups (cookies, token).
      const identity: RequestIdentity = { ...out.identity, remoteAddress, method };
      return identity;
    }
    return refuseUnauthenticated(req, route, out, true);
  };

  // Synchronous when the chain is (the warm path): no promise, no await, for a known credential.
  const identify: Identify = (req, route, resource) => {
    const remoteAddress = req.socket.remoteAddress;
    const method = req.method ?? '';
    if (accessFor(resource.runtime.id).public) {
      // A public resource needs no identity, so credentials cost it no work at all (no hash,
      // no signature check): they may be meant for its backend; it is served anonymously.
      const anonymous: RequestIdentity = { user: undefined, groups: ANONYMOUS.groups, via: 'anonymous', remoteAddress, method };
      return anonymous;
    }
    const out = verifyChain(verifiers, credentialsOf(req));
    return out instanceof Promise ? out.then((o) => judged(req, route, o, remoteAddress, method)) : judged(req, route, out, remoteAddress, method);
  };

  const authorize: Authorize = (identity, route, resource) => {
    const id = resource.runtime.id;
    const verified = identity as RequestIdentity;
    const decision = decide(verified, route, accessFor(id));
    if (decision.allowed) return decision.acting;
    const code = decision.outcome === 'not-found' ? 'SP_ROUTE_NOT_FOUND' : 'SP_ACCESS_DENIED';
    audit.record({
      type: 'denied', at: clock.now(), resource: id, known: true,
      actor: { user: verified.user, via: verified.via, remoteAddress: verified.remoteAddress },
      code, reason: decision.reason, method: verified.method, urlGroups: route.allGroups ? '-' : route.groups.join(','), heldGroups: verified.groups,
    });
    if (decision.outcome === 'not-found') return resourceNotFound(id);
    return new SmartProxyError('SP_ACCESS_DENIED', decision.reason, {
      data: decision.missing === undefined ? { resource: id } : { resource: id, missing: decision.missing },
    });
  };

  const unknownResource: UnknownResource = async (req, route) => {
    if (settings.revealExistence || verifiers.length === 0) return resourceNotFound(route.resourceId);
    // Answer as for a resource this caller may not see: 401 without a verified identity, 404
    // with one. An Authorization header is never checked for a resource that does not exist:
    // garbage sent to made-up ids costs no hash (the price: a caller with *invalid*
    // credentials gets 404 here and 401 from a hidden resource; see docs/security.md).
    const creds = credentialsOf(req);
    if (creds.authorization !== undefined) return resourceNotFound(route.resourceId);
    // No Authorization: only a trusted front proxy's headers can identify, at no cost.
    const out = await verifyChain(verifiers, creds);
    if (out.kind === 'verified') return resourceNotFound(route.resourceId);
    return refuseUnauthenticated(req, route, out, false);
  };

  // The proxy's own session cookies are never a backend's business (a backend could replay them).
  const dropCookies = oidc === undefined ? undefined : (name: string): boolean => oidc.sessions.isOwnCookie(name);
  // The encoded user and groups headers of an identity that acts with all its groups (`-` in
  // the URL), kept with the identity's own groups array: a token's or a cached JWT's identity
  // is the same object request after request, so its headers are encoded once, not per request.
  // Weakly held: gone with the identity.
  const userHeader = wireName(settings.backendHeaders.user);
  const groupsHeader = wireName(settings.backendHeaders.groups);
  const accessTokenHeader = wireName(settings.backendHeaders.accessToken);
  const encodedByGroups = new WeakMap<readonly string[], { readonly user: string; readonly extra: ReadonlyArray<readonly [string, string]> }>();
  const noExtra: ReadonlyArray<readonly [string, string]> = [];
  const backendHeaders: BackendHeaders = (identity: Identity, acting, resource) => {
    const access = accessFor(resource.runtime.id);
    const strip = access.strip;
    if (identity.user === undefined) return { extra: noExtra, strip, dropCookies };
    const accessToken = (identity as SessionIdentity).accessToken;
    if (accessToken !== undefined && access.passAccessToken) {
      const extra: Array<readonly [string, string]> = [[userHeader, encodeHeaderValue(identity.user)], [groupsHeader, encodeGroups(acting)]];
      extra.push([accessTokenHeader, encodeHeaderValue(accessToken)]);
      return { extra, strip, dropCookies };
    }
    const cached = acting === identity.groups ? encodedByGroups.get(acting) : undefined;
    if (cached !== undefined && cached.user === identity.user) return { extra: cached.extra, strip, dropCookies };
    const extra: ReadonlyArray<readonly [string, string]> = [[userHeader, encodeHeaderValue(identity.user)], [groupsHeader, encodeGroups(acting)]];
    if (acting === identity.groups) encodedByGroups.set(acting, { user: identity.user, extra });
    return { extra, strip, dropCookies };
  };

  return { identify, authorize, unknownResource, backendHeaders, protectedHeaders: [...protectedHeaders], verifiers };
}
