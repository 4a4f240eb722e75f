/**
 * The headers between a front proxy and the decision listener (decision-server.ts). One
 * place, so that the generated configs (nginx-config.ts, haproxy-config.ts) and the server
 * cannot drift apart.
 */
export const FRONT_HEADERS = {
  // Front proxy → Smart Proxy (set by the front proxy, overwriting anything a client sent).
  /** The client's request target, byte for byte. */
  uri: 'X-Smart-Proxy-Uri',
  method: 'X-Smart-Proxy-Method',
  /** The client's address as the front proxy saw it (header identities trust by address). */
  client: 'X-Smart-Proxy-Client',
  // Smart Proxy → front proxy, in an allow. A front proxy keeps the allow and reads these on
  // every warm request (nginx parses the cached answer each time and looks each one up by
  // name), so they are few, short, distinct after "SP-", and left out when empty.
  /** `http://name` of a generated upstream block, or `http(s)://host:port`. */
  upstream: 'SP-Upstream',
  /** `host:port` of the backend (the Host it is sent; HAProxy routes by it). */
  address: 'SP-Host',
  /** The endpoint's own path without its trailing `/` (absent: none). */
  basePath: 'SP-Base',
  /** Values of the backend identity headers (absent: not sent). */
  user: 'SP-User',
  groups: 'SP-Groups',
  /** `1`: the resource passes the client's Authorization on (access.passCredentials); absent: not. */
  passCredentials: 'SP-Creds',
  /** Why a request goes via Smart Proxy (for logs; never shown to clients; never in an allow). */
  reason: 'X-Smart-Proxy-Reason',
} as const;

/** Where the decision listener answers. */
export const DECISION_PATH = '/_smart_proxy/front/decide';
/** The busy check path on the front proxy's control server (`?r=<resource id>`). */
export const BUSY_PATH = '/_smart_proxy/front/busy';
