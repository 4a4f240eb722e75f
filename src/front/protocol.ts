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
  // Smart Proxy → front proxy.
  /** `http://name` of a generated upstream block, or `http(s)://host:port`. */
  upstream: 'X-Smart-Proxy-Upstream',
  /** `host:port` of the backend (HAProxy routes by address). */
  address: 'X-Smart-Proxy-Address',
  /** The endpoint's own path without its trailing `/` (`''` for none). */
  basePath: 'X-Smart-Proxy-Base-Path',
  /** Values of the backend identity headers (empty: not sent). */
  user: 'X-Smart-Proxy-User',
  groups: 'X-Smart-Proxy-Groups',
  /** X-Forwarded-Prefix, as the data plane sends it. */
  prefix: 'X-Smart-Proxy-Prefix',
  /** `1`: the resource passes the client's Authorization on (access.passCredentials). */
  passCredentials: 'X-Smart-Proxy-Pass-Credentials',
  resource: 'X-Smart-Proxy-Resource',
  /** Why a request goes via Smart Proxy (for logs; never shown to clients). */
  reason: 'X-Smart-Proxy-Reason',
} as const;

/** Where the decision listener answers. */
export const DECISION_PATH = '/_smart_proxy/front/decide';
/** The busy check path on the front proxy's control server (`?r=<resource id>`). */
export const BUSY_PATH = '/_smart_proxy/front/busy';
