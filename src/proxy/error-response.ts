/**
 * The one place where domain errors become HTTP: a status per code, `application/problem+json`
 * (RFC 9457) for API clients, a short HTML page for browsers. Never a stack trace.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SmartProxyError, errorCatalogue, type ErrorCode } from '../core/errors.ts';

export const statusByCode: Readonly<Record<ErrorCode, number>> = {
  SP_ROUTE_BAD_TARGET: 400,
  SP_ROUTE_NOT_FOUND: 404,
  SP_ROUTE_BAD_HOST: 400,
  SP_ROUTE_METHOD_NOT_ALLOWED: 405,
  SP_ROUTE_METHOD_NOT_FORWARDED: 405,
  SP_ACCESS_UNAUTHENTICATED: 401,
  SP_ACCESS_DENIED: 403,
  SP_ACCESS_UNAVAILABLE: 503,
  SP_ACCESS_BUSY: 503,
  SP_ACCESS_SIGN_IN_REQUIRED: 302,
  SP_ACCESS_SIGN_IN_FAILED: 400,
  SP_LIMIT_EXCEEDED: 429,
  SP_HOLD_QUEUE_FULL: 503,
  SP_HOLD_BYTES_FULL: 503,
  SP_BOOT_TIMEOUT: 504,
  SP_START_FAILED: 502,
  SP_RESOURCE_FAILED: 503,
  SP_UPSTREAM_UNAVAILABLE: 502,
  SP_UPSTREAM_TIMEOUT: 504,
  SP_UPSTREAM_QUEUE_FULL: 503,
  SP_UPSTREAM_QUEUE_TIMEOUT: 503,
  SP_CLIENT_BODY_TIMEOUT: 408,
  SP_BODY_TOO_LARGE: 413,
  SP_BODY_UNSUPPORTED_CODING: 501,
  SP_EXPECTATION_FAILED: 417,
  SP_WS_BAD_UPGRADE: 400,
  SP_CORS_ORIGIN_DENIED: 403,
  SP_WS_ORIGIN_DENIED: 403,
  SP_CLUSTER_UNAVAILABLE: 503,
  SP_SHUTTING_DOWN: 503,
  SP_PROVIDER_ERROR: 502,
  SP_PROVIDER_UNREACHABLE: 503,
  SP_PROVIDER_THROTTLED: 503,
  SP_CONFIG_INVALID: 500,
  SP_ADMIN_BAD_REQUEST: 400,
  SP_ADMIN_CSRF: 403,
  SP_ADMIN_CONFLICT: 409,
  SP_ADMIN_UNSUPPORTED: 501,
  SP_INTERNAL: 500,
};

const titles: Readonly<Record<number, string>> = {
  302: 'Found', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict', 408: 'Request Timeout', 413: 'Content Too Large', 417: 'Expectation Failed',
  429: 'Too Many Requests', 500: 'Internal Server Error', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

export function toSmartProxyError(err: unknown): SmartProxyError {
  if (err instanceof SmartProxyError) return err;
  return new SmartProxyError('SP_INTERNAL', errorCatalogue.SP_INTERNAL, { cause: err });
}

/** Does the client prefer HTML (a browser navigation)? */
export function wantsHtml(req: IncomingMessage): boolean {
  const accept = req.headers.accept;
  return accept !== undefined && accept.includes('text/html');
}

export interface ProblemBody {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: ErrorCode;
  readonly instance?: string | undefined;
  readonly [extension: string]: unknown;
}

export function problemOf(err: SmartProxyError, instance?: string): ProblemBody {
  const status = statusByCode[err.code];
  // `challenges` become WWW-Authenticate (see sendError), not body members.
  const { challenges: _challenges, location: _location, ...data } = err.data;
  return {
    ...data,
    type: `tag:smart-proxy,2026:${err.code}`,
    title: titles[status] ?? 'Error',
    status,
    detail: err.message,
    code: err.code,
    instance,
  };
}

/**
 * The problem's `instance`: the target's path. Only an origin-form target is echoed: a refused
 * absolute-form one may carry userinfo (a password) that must not come back in a body that
 * caches and logs keep.
 */
function instanceOf(url: string | undefined): string | undefined {
  if (url === undefined || url.charCodeAt(0) !== 0x2f /* / */) return undefined;
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

/**
 * Answers `err`. When the response head is already out, the only honest signal left is to
 * cut the connection, so the client sees a truncated response rather than a spliced one.
 */
export function sendError(req: IncomingMessage, res: ServerResponse, err: unknown, extraHeaders?: Record<string, string>): void {
  const e = toSmartProxyError(err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (res.destroyed || res.writableEnded) return;
  const problem = problemOf(e, instanceOf(req.url));
  const headers: Record<string, string | string[]> = { 'cache-control': 'no-store', ...extraHeaders };
  if (e.retryAfterS !== undefined) headers['retry-after'] = String(e.retryAfterS);
  const challenges = challengesOf(e);
  if (challenges !== undefined) headers['www-authenticate'] = challenges;
  // A browser sent to sign in (SP_ACCESS_SIGN_IN_REQUIRED).
  if (typeof e.data.location === 'string') headers.location = e.data.location;
  let body: string;
  if (wantsHtml(req)) {
    headers['content-type'] = 'text/html; charset=utf-8';
    body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${problem.status} ${escapeHtml(problem.title)}</title>`
      + '<meta name="viewport" content="width=device-width,initial-scale=1"></head>'
      + `<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a"><main><h1>${problem.status} ${escapeHtml(problem.title)}</h1>`
      + `<p>${escapeHtml(problem.detail)}</p>`
      // A person who must sign in first (a 401 a redirect could not replace) gets the way there.
      + (typeof e.data.signInUrl === 'string' ? `<p><a href="${escapeHtml(e.data.signInUrl)}">Sign in</a></p>` : '')
      + `<p><small>${e.code}</small></p></main></body></html>`;
  } else {
    headers['content-type'] = 'application/problem+json';
    body = JSON.stringify(problem);
  }
  headers['content-length'] = String(Buffer.byteLength(body));
  res.writeHead(problem.status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
}

/**
 * The same answer as `sendError`, as bytes for a raw socket (an upgrade request has no
 * ServerResponse). Always `connection: close`: the socket is closed after it.
 */
export function errorResponseBytes(req: IncomingMessage, err: unknown): string {
  const e = toSmartProxyError(err);
  const problem = problemOf(e, instanceOf(req.url));
  const body = JSON.stringify(problem);
  let head = `HTTP/1.1 ${problem.status} ${problem.title}\r\n`
    + 'content-type: application/problem+json\r\ncache-control: no-store\r\nconnection: close\r\n'
    + `content-length: ${Buffer.byteLength(body)}\r\n`;
  if (e.retryAfterS !== undefined) head += `retry-after: ${e.retryAfterS}\r\n`;
  for (const challenge of challengesOf(e) ?? []) head += `www-authenticate: ${challenge}\r\n`;
  return `${head}\r\n${body}`;
}

/**
 * RFC 9110 §11.6.1: a 401 carries at least one challenge. Each goes on its own
 * `WWW-Authenticate` line, Basic first: browsers act on the first challenge of a line only
 * and can answer none but Basic, so `Bearer …, Basic …` on one line never showed a person
 * the password prompt. API clients read every line.
 */
function challengesOf(e: SmartProxyError): string[] | undefined {
  const challenges = e.data.challenges;
  if (e.code !== 'SP_ACCESS_UNAUTHENTICATED' || !Array.isArray(challenges) || challenges.length === 0) return undefined;
  return [...challenges as string[]].sort((x, y) => Number(y.startsWith('Basic ')) - Number(x.startsWith('Basic ')));
}
