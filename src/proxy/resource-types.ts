/**
 * The data plane's view of a resource and of a caller, shared by the HTTP forwarder
 * (server.ts) and the WebSocket forwarder (forward-ws.ts) so that neither imports the other
 * for its types.
 */
import type { ResourceRuntime } from '../core/resource-runtime.ts';
import type { BackendTls } from './backend-tls.ts';
import type { CorsPolicy } from './cors.ts';
import type { ResourceWaiting } from './waiting-room.ts';

/** A resource as the data plane sees it. */
export interface RoutedResource {
  readonly runtime: ResourceRuntime;
  /** Longest hold of one request. */
  readonly holdTimeoutMs: number;
  /** Waiting page, Prefer defaults, theme; built-in defaults when absent. */
  readonly waiting?: ResourceWaiting | undefined;
  /** Origins allowed to open WebSockets (browser handshakes); undefined: any. */
  readonly websocket?: { readonly allowedOrigins?: readonly string[] | undefined } | undefined;
  /** Cross-origin calls from pages (cors.ts); undefined: none answered by the proxy. */
  readonly cors?: CorsPolicy | undefined;
  /** How an https: endpoint's certificate is checked (backend-tls.ts); default: system roots. */
  readonly backendTls?: BackendTls | undefined;
}

/** Who is asking, as far as the proxy could verify. */
export interface Identity {
  readonly user: string | undefined;
  /** Groups the identity really holds (sorted, unique). */
  readonly groups: readonly string[];
  /** Set-Cookie values the response must carry (a renewed sign-in session). */
  readonly responseCookies?: readonly string[] | undefined;
}
