/**
 * What the data plane knows about the client of one request, beyond the request itself:
 * whether it is still connected, and whether it waits for `100 Continue` before sending its
 * body. HTTP/1.1 (`IncomingMessage`/`ServerResponse`) and the HTTP/2 compatibility objects
 * differ here, and this file is the one place that knows how.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

interface MaybeH2 {
  readonly stream?: { readonly destroyed: boolean } | undefined;
}

/**
 * True once the client of `req` can no longer receive an answer: its HTTP/1.1 connection
 * closed, or its HTTP/2 stream was reset or its session ended. A client that only
 * half-closed (sent FIN but still reads) is still here.
 */
export function requestGone(req: IncomingMessage): boolean {
  const stream = (req as MaybeH2).stream;
  if (stream !== undefined) return stream.destroyed;
  return req.socket === null || req.socket.destroyed;
}

/** A departed client: the pipeline stops, and nothing is answered or logged as a failure. */
export class ClientGone extends Error {
  constructor() {
    super('client closed the connection');
  }
}

/** Requests waiting for `100 Continue`, with their response's original keep-alive. */
const awaitingContinue = new WeakMap<ServerResponse, boolean | undefined>();

/**
 * Marks a request that sent `Expect: 100-continue` (Node's 'checkContinue' event): its body
 * is not read, and no `100` goes out, until `sendContinue`. Until then its connection is set
 * to close after the response: if the request is refused (or answered without a forward),
 * the final status goes out instead of `100` and the body, which the client may or may not
 * send, is never read (RFC 9110 §10.1.1 lets a server close instead of reading it; reading a
 * body the client withholds would leave the connection stuck).
 */
export function expectContinue(res: ServerResponse): void {
  // HTTP/2 compat responses have no shouldKeepAlive (undefined); a stream is never reused.
  if (typeof res.shouldKeepAlive !== 'boolean') {
    awaitingContinue.set(res, undefined);
    return;
  }
  awaitingContinue.set(res, res.shouldKeepAlive);
  res.shouldKeepAlive = false;
}

/**
 * Answers `100 Continue` if the request asked for it and has not had it: called right before
 * its body is read (the forward). Restores the connection's keep-alive.
 */
export function sendContinue(res: ServerResponse): void {
  if (!awaitingContinue.has(res)) return;
  const keepAlive = awaitingContinue.get(res);
  awaitingContinue.delete(res);
  if (res.headersSent) return;
  if (keepAlive !== undefined) res.shouldKeepAlive = keepAlive;
  res.writeContinue();
}

/**
 * Answers that wait before anything is forwarded (a slow identify, a hold through a cold start,
 * the progress endpoints): a client FIN on their connection abandons them.
 */
const waitingToForward = new WeakSet<ServerResponse>();

/** `res` waits (identify, hold) before its request is forwarded, if ever. */
export function waitsBeforeForward(res: ServerResponse): void {
  waitingToForward.add(res);
}

/** `res`'s wait is over: from now on its request is forwarded or answered. */
export function waitOver(res: ServerResponse): void {
  waitingToForward.delete(res);
}

/**
 * A client's FIN on a plain HTTP/1.1 connection (the server runs with `httpAllowHalfOpen`):
 * `this` is the socket. A client may half-close once it has sent its request (shutdown(SHUT_WR),
 * `nc -N`, some scripted clients) and still read the answer; FIN is also how a client that
 * left closes, and the two cannot be told apart. So:
 * - an answer not begun yet for a request already forwarded (the backend is computing it), or
 *   an answer already whole (a refusal), is still sent, and Node closes the connection after it;
 * - a request still waiting for identify or a boot is given up, so that nothing is woken or
 *   forwarded for a client that may be gone (nginx gives up on both: 499);
 * - an answer under way (a stream, SSE, a download) is ended, as when the client leaves: a
 *   stream that is quiet for long would otherwise keep its backend request, and the instance,
 *   busy for a client long gone.
 */
export function onClientFin(this: Socket): void {
  const res = (this as { _httpMessage?: ServerResponse | null })._httpMessage;
  if (res == null) return;
  if (waitingToForward.has(res) || (res.headersSent && !res.writableEnded)) this.end();
}
