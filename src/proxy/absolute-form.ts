/**
 * Absolute-form request targets: `GET http://proxy.example/smart_proxy/app/-/x HTTP/1.1`.
 *
 * RFC 9112 §3.2.2: a server MUST accept the absolute-form (clients send it when they are told
 * to use the proxy as a forward proxy, and some intermediaries pass it on), and an origin
 * server MUST then ignore the Host field and use the target's authority instead. Smart Proxy
 * rewrites such a request once, at the door, to origin-form with that authority as its Host,
 * so that every later step (routing, access, X-Forwarded-Host, the waiting page, sign-in
 * redirects) sees one request shape and no step can read the other Host.
 *
 * Only `http` and `https` targets are rewritten. Any other form is left for the strict target
 * parser to refuse (authority-form, asterisk-form, other schemes). Userinfo in the authority
 * is refused (RFC 9110 §4.2.4: its presence is an error; it is how credentials leak into logs),
 * as is an empty or malformed host (RFC 9110 §4.2.1).
 */
import type { IncomingMessage } from 'node:http';

const ABSOLUTE_HTTP = /^https?:\/\/([^/?#]*)/i;
// RFC 3986 §3.2.2-3.2.3: an IP literal in brackets or a reg-name / IPv4 address, then an
// optional port. Userinfo is caught before this test.
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]{0,5})?$/;

/**
 * Rewrites an absolute-form `http(s)` target of `req` in place (`req.url` to origin-form,
 * every Host field to the target's authority). Returns why the target is refused, or
 * undefined when it was rewritten or needs no rewriting.
 */
export function absoluteToOriginForm(req: IncomingMessage): string | undefined {
  const url = req.url;
  // Nearly every request: origin-form, nothing to do.
  if (url === undefined || url.charCodeAt(0) === 0x2f /* / */) return undefined;
  const m = ABSOLUTE_HTTP.exec(url);
  if (m === null) return undefined;
  const authority = m[1] as string;
  if (authority.includes('@')) return 'userinfo in an absolute-form target';
  if (!AUTHORITY.test(authority)) return 'absolute-form target without a valid host';
  const rest = url.slice(m[0].length);
  req.url = rest.charCodeAt(0) === 0x2f ? rest : `/${rest}`;
  // Every Host field gets the authority, so that two Host fields are still two (and still
  // refused as ambiguous, as they would be in origin-form).
  const raw = req.rawHeaders;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host') {
      raw[i + 1] = authority;
      hosts++;
    }
  }
  if (hosts === 0) raw.push('Host', authority);
  req.headers.host = authority;
  return undefined;
}
