/**
 * The bare forwarding proxy's pieces, shared by bench/bare-proxy.ts (the warm path's
 * reference) and bench/hold-floor.ts (the release's floor): no routing, identity, access
 * checks or X-Forwarded-*, so what Smart Proxy costs beyond them is its features.
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';

// undici refuses these request headers; a proxy must not forward them anyway (RFC 9110 §7.6.1).
export const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'host', 'proxy-connection', 'te', 'trailer']);

/** The headers without the hop-by-hop ones, as an object undici and writeHead take. */
export function withoutHop(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const v = headers[name];
    if (v !== undefined && !HOP.has(name)) out[name] = v;
  }
  return out;
}

/**
 * One object per forwarded request (undici's dispatch API, the engine Smart Proxy uses): the
 * answer streamed into `res` with backpressure; 502 before the head, a cut connection after.
 * `finished` runs once the forward is over (the hold floor's ramp counts on it).
 */
export class BareForward implements Dispatcher.DispatchHandler {
  readonly res: ServerResponse;
  controller: Dispatcher.DispatchController | undefined;
  readonly #finished: (() => void) | undefined;
  constructor(res: ServerResponse, finished?: () => void) {
    this.res = res;
    this.#finished = finished;
  }
  readonly onDrain = (): void => this.controller?.resume();
  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
  }
  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode >= 200) this.res.writeHead(statusCode, withoutHop(headers));
  }
  onResponseData(c: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) {
      c.pause();
      this.res.once('drain', this.onDrain);
    }
  }
  onResponseEnd(): void {
    this.res.end();
    this.#finished?.();
  }
  onResponseError(): void {
    if (!this.res.headersSent) {
      this.res.writeHead(502);
      this.res.end();
    } else this.res.destroy();
    this.#finished?.();
  }
}
