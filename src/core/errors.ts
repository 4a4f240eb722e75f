/**
 * The one error catalogue. Domain errors carry a stable code and data, and know no HTTP
 * status: `proxy/error-response.ts` maps each code to a response in one table, and a test
 * keeps that table, this catalogue and `docs/reference/errors.md` in step.
 */

export const errorCatalogue = {
  SP_ROUTE_BAD_TARGET: 'The request target is malformed or unsafe (dot segments, "//", backslashes, bad percent-encoding, "*", authority-form, an absolute-form target that is not http(s) or carries userinfo).',
  SP_ROUTE_NOT_FOUND: 'The path is not under /smart_proxy/{resource_id}/{groups}/, or the resource is unknown.',
  SP_ROUTE_BAD_HOST: 'The request has more than one Host field, a Host that is not a host name or address with an optional port, or a Host that contradicts its :authority (RFC 9112 §3.2, RFC 9113 §8.3.1).',
  SP_ROUTE_METHOD_NOT_ALLOWED: 'The proxy\'s own endpoints (/_smart_proxy/…) answer only the methods named in Allow.',
  SP_ROUTE_METHOD_NOT_FORWARDED: 'TRACE and TRACK are never forwarded: a backend\'s echo of the request would show the client the headers the proxy adds for the backend (identity, credentials). nginx refuses TRACE alike.',
  SP_ACCESS_UNAUTHENTICATED: 'The resource needs a verified identity and the request carried none that verified.',
  SP_ACCESS_DENIED: 'The verified identity does not hold the groups this request acts with, or they do not satisfy the resource policy; or the sign-in provider answered access_denied.',
  SP_ACCESS_UNAVAILABLE: 'The credentials could not be checked right now (the JWT key set, the sign-in provider or the session store could not be reached); try again later.',
  SP_ACCESS_SIGN_IN_REQUIRED: 'A browser without a session is sent to sign in (OIDC), and comes back to the same URL afterwards.',
  SP_ACCESS_SIGN_IN_FAILED: 'The answer of the sign-in provider was refused: unknown, expired or replayed state, wrong nonce, refused code, or an ID token that does not verify.',
  SP_ACCESS_BUSY: 'Too many credentials are being checked at once (each password check is deliberately slow); try again shortly.',
  SP_LIMIT_EXCEEDED: 'A limit on starts or running instances was reached; try again later.',
  SP_HOLD_QUEUE_FULL: 'Too many requests are already waiting for resources to start; try again later.',
  SP_HOLD_BYTES_FULL: 'Too many request bytes are already held for starting resources; try again later.',
  SP_BOOT_TIMEOUT: 'The resource did not become ready within its boot timeout (or within the wait the client asked for).',
  SP_START_FAILED: 'The provider could not start the resource.',
  SP_RESOURCE_FAILED: 'The resource failed recently and is cooling down before the next start attempt.',
  SP_UPSTREAM_UNAVAILABLE: 'The ready backend did not answer the forwarded request.',
  SP_UPSTREAM_TIMEOUT: 'The backend did not answer the forwarded request in time.',
  SP_UPSTREAM_QUEUE_FULL: 'Every connection to the backend is busy and its queue of waiting requests is full; try again later.',
  SP_UPSTREAM_QUEUE_TIMEOUT: 'Every connection to the backend stayed busy for as long as a request may queue for one; try again later.',
  SP_CLIENT_BODY_TIMEOUT: 'The client stopped sending its request body for longer than the body idle timeout.',
  SP_BODY_UNSUPPORTED_CODING: 'The request\'s Transfer-Encoding is not `chunked` alone (RFC 9112 §6.1); send the body chunked or with Content-Length, and any compression as Content-Encoding.',
  SP_BODY_TOO_LARGE: 'The request body is larger than the limit for held requests.',
  SP_EXPECTATION_FAILED: 'The request\'s Expect field asks for something other than `100-continue`, the only expectation HTTP defines (RFC 9110 §10.1.1); nothing is forwarded.',
  SP_WS_BAD_UPGRADE: 'The upgrade request is not a proper WebSocket handshake (GET, Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Version: 13).',
  SP_CORS_ORIGIN_DENIED: 'A CORS preflight from a page whose origin is not in the resource\'s cors.allowedOrigins; answered by the proxy, nothing is woken.',
  SP_WS_ORIGIN_DENIED: 'The WebSocket handshake\'s Origin is not in the resource\'s allow-list.',
  SP_CLUSTER_UNAVAILABLE: 'The replicas cannot reach their coordination store (Redis), so no replica may start a resource now; ready resources keep working.',
  SP_SHUTTING_DOWN: 'The proxy is shutting down and takes no new requests.',
  SP_PROVIDER_ERROR: 'A provider call failed.',
  SP_PROVIDER_UNREACHABLE: 'The provider\'s API (the cloud) cannot be reached: its circuit is open after consecutive connection failures, so starts are refused at once until a trial call gets through; ready resources keep working.',
  SP_PROVIDER_THROTTLED: 'The provider\'s API asked the proxy to wait (429, or 503 with Retry-After) for longer than the start may still take; try again after Retry-After.',
  SP_CONFIG_INVALID: 'The configuration is invalid.',
  SP_ADMIN_BAD_REQUEST: 'An admin API request is malformed: an unknown parameter value, a body that is not the JSON the endpoint takes, or one too large.',
  SP_ADMIN_CSRF: 'An admin action from a browser without the dashboard\'s CSRF token, or from another origin.',
  SP_ADMIN_CONFLICT: 'An admin action that does not fit the instance\'s state now: no stop is owed for it, or a try of that stop is in flight.',
  SP_ADMIN_UNSUPPORTED: 'The provider of this resource cannot do that (for example suspend), or this proxy was built without it (metrics, reload).',
  SP_INTERNAL: 'An unexpected error; it has been logged.',
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export interface SmartProxyErrorOptions {
  /** Facts a client or operator may see (resource id, limit name, retry delay…). */
  readonly data?: Readonly<Record<string, unknown>>;
  /** Seconds after which a retry makes sense, for `Retry-After`. */
  readonly retryAfterS?: number;
  readonly cause?: unknown;
}

/** A domain error with a stable `SP_*` code. Safe to show: its message never holds secrets. */
export class SmartProxyError extends Error {
  readonly code: ErrorCode;
  readonly data: Readonly<Record<string, unknown>>;
  readonly retryAfterS: number | undefined;

  constructor(code: ErrorCode, message: string = errorCatalogue[code], options: SmartProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SmartProxyError';
    this.code = code;
    this.data = options.data ?? {};
    this.retryAfterS = options.retryAfterS;
  }
}

/** A provider call failed. `retryable` tells the core it may try again within the deadline. */
export class ProviderError extends SmartProxyError {
  readonly retryable: boolean;

  constructor(message: string, options: SmartProxyErrorOptions & { readonly retryable: boolean }) {
    super('SP_PROVIDER_ERROR', message, options);
    this.name = 'ProviderError';
    this.retryable = options.retryable;
  }
}

export function isSmartProxyError(err: unknown): err is SmartProxyError {
  return err instanceof SmartProxyError;
}
