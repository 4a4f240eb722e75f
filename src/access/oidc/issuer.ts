/**
 * One configured OpenID provider, through `openid-client` (this folder owns it): discovery
 * on first use (and again after a failure, at most every `discoveryRetryMs`, so an issuer
 * that is down is not hammered), the token endpoint, userinfo, end-session URLs, and the key
 * set for bearer tokens (jose's remote JWK set, refetched on an unknown `kid`).
 *
 * Every failure that is the issuer's (refused, timed out, 5xx, not JSON) becomes
 * `IssuerUnavailable`, which the callers turn into a 503 and a clear page, never a crash.
 */
import { createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';
import * as client from 'openid-client';
import type { OidcIdentityConfig } from '../../config/access-schema.ts';
import type { Logger } from '../../core/ports.ts';

export class IssuerUnavailable extends Error {
  constructor(issuer: string, cause: unknown) {
    super(`the sign-in provider ${issuer} cannot be reached (${describe(cause)})`, { cause });
    this.name = 'IssuerUnavailable';
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const inner = cause instanceof Error ? `: ${cause.message}` : '';
    return `${err.message}${inner}`.slice(0, 300);
  }
  return String(err).slice(0, 300);
}

/** Did this error come from the issuer being away or broken, rather than from what was sent? */
export function isIssuerFailure(err: unknown): boolean {
  if (err instanceof IssuerUnavailable) return true;
  // fetch() failures (refused, DNS, reset) and timeouts.
  if (err instanceof TypeError) return true;
  if (err instanceof DOMException && (err.name === 'TimeoutError' || err.name === 'AbortError')) return true;
  if (err instanceof client.ClientError) {
    // openid-client wraps a timeout (OAUTH_TIMEOUT) and an answer that is not JSON at all
    // (OAUTH_PARSE_ERROR) too: a slow or broken provider, not a refusal. Taken for one, a
    // slow refresh would end the session and a slow callback say the sign-in was refused.
    return err.code === 'OAUTH_RESPONSE_IS_NOT_CONFORM' || err.code === 'OAUTH_RESPONSE_IS_NOT_JSON'
      || err.code === 'OAUTH_PARSE_ERROR' || err.code === 'OAUTH_TIMEOUT' || err.code === 'OAUTH_ABORT';
  }
  return false;
}

type RemoteKeys = ReturnType<typeof createRemoteJWKSet>;

export class Issuer {
  readonly cfg: OidcIdentityConfig;
  readonly #secret: string | undefined;
  readonly #log: Logger;
  readonly #now: () => number;
  #config: client.Configuration | undefined;
  #pending: Promise<client.Configuration> | undefined;
  #failedAt = Number.NEGATIVE_INFINITY;
  #lastError: unknown;
  #keys: RemoteKeys | undefined;

  constructor(cfg: OidcIdentityConfig, secret: string | undefined, log: Logger, now: () => number = Date.now) {
    this.cfg = cfg;
    this.#secret = secret;
    this.#log = log;
    this.#now = now;
  }

  /** The discovered configuration; rejects with IssuerUnavailable. */
  configuration(): Promise<client.Configuration> {
    if (this.#config !== undefined) return Promise.resolve(this.#config);
    if (this.#pending !== undefined) return this.#pending;
    if (this.#now() - this.#failedAt < this.cfg.discoveryRetryMs) {
      return Promise.reject(new IssuerUnavailable(this.cfg.issuer, this.#lastError));
    }
    const insecure = this.cfg.issuer.startsWith('http:');
    const metadata: Partial<client.ClientMetadata> = {
      [client.clockTolerance]: Math.round(this.cfg.clockToleranceMs / 1000),
      // One algorithm: openid-client enforces it. Several: checked after the grant (sign-in.ts).
      ...(this.cfg.algorithms.length === 1 ? { id_token_signed_response_alg: this.cfg.algorithms[0] } : {}),
    };
    const p = client.discovery(new URL(this.cfg.issuer), this.cfg.clientId, metadata,
      this.#secret === undefined ? client.None() : client.ClientSecretBasic(this.#secret),
      {
        timeout: Math.max(1, Math.ceil(this.cfg.discoveryTimeoutMs / 1000)),
        // Plain-HTTP issuers only when configured so (a lab, the demo, tests).
        execute: insecure ? [client.allowInsecureRequests] : [],
      }).then((config) => {
      config.timeout = Math.max(1, Math.ceil(this.cfg.discoveryTimeoutMs / 1000));
      this.#config = config;
      this.#log.info({ issuer: this.cfg.issuer, provider: this.cfg.name }, 'oidc: provider discovered');
      return config;
    }, (err: unknown) => {
      this.#failedAt = this.#now();
      this.#lastError = err;
      this.#log.warn({ issuer: this.cfg.issuer, provider: this.cfg.name, err: describe(err), retryAfterMs: this.cfg.discoveryRetryMs },
        `oidc: discovery failed: ${this.cfg.issuer} cannot be reached; signing in with "${this.cfg.name}" answers 503 until it can (tried again on demand, at most every ${this.cfg.discoveryRetryMs} ms)`);
      throw new IssuerUnavailable(this.cfg.issuer, err);
    }).finally(() => {
      this.#pending = undefined;
    });
    this.#pending = p;
    return p;
  }

  /** The issuer's key set, for bearer tokens. */
  async keys(): Promise<JWTVerifyGetKey> {
    if (this.#keys !== undefined) return this.#keys;
    const config = await this.configuration();
    const uri = config.serverMetadata().jwks_uri;
    if (uri === undefined) throw new IssuerUnavailable(this.cfg.issuer, new Error('no jwks_uri in the discovery document'));
    this.#keys = createRemoteJWKSet(new URL(uri), { timeoutDuration: this.cfg.discoveryTimeoutMs, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
    return this.#keys;
  }

  /**
   * Fetches the key set again now, even within the cooldown that bounds refetches for unknown
   * key ids (30 s). For an ID token fresh from the token endpoint only: its unknown `kid` is
   * the provider's new key (rotation), and each such call needs a code the provider issued,
   * so no stranger can make the proxy fetch keys at will. Returns whether it was refetched.
   */
  async reloadKeys(): Promise<boolean> {
    const keys = this.#keys;
    // Not cooling down: jose has just fetched them again itself, for that very kid.
    if (keys === undefined || !keys.coolingDown) return false;
    await keys.reload();
    return true;
  }

  /**
   * Discovers the provider now, in the background (start-up): an unreachable provider is
   * then in the log at once, not at the first person's sign-in. Never throws.
   */
  warmUp(): void {
    this.configuration().catch(() => undefined);
  }
}
