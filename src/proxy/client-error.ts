/**
 * The answer to what Node's HTTP/1 parser refused (the server's 'clientError' event): framing it
 * cannot read (Content-Length with Transfer-Encoding, two Content-Lengths, a bad chunk size, a
 * bare LF, obs-fold, control characters in a field), a head past maxHeaderBytes, a head that
 * took longer than headersTimeoutMs. Used by the data plane and the admin listener alike.
 *
 * - The status says what was wrong: 414 when the request line alone is past the bound (as
 *   nginx), 431 for a large head, 413 for oversized chunk extensions, 408 for a slow head,
 *   400 for the rest.
 * - Never inside or ahead of another answer. When the error comes while an earlier answer on
 *   the same connection is still due (a held request, then a malformed one pipelined behind
 *   it), that answer goes out first, whole, and the connection closes after it; a 400 written
 *   at once would be read as the earlier request's answer. When the error is in the body of a
 *   request whose answer has begun, the connection is cut: a status line in the middle of a
 *   response body would only corrupt it. (Node's own handler checks the second case only.)
 * - Drained (linger.ts): what the client still sends after the answer is read and thrown away
 *   within bounds, so a client that uploads before it reads (a body behind a head too large)
 *   reads the 431 instead of a reset. A slow head (408) is not drained: its client is the slow
 *   one.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Lingering } from './linger.ts';

/** What Node puts on a parser error besides its code. */
export interface ParserError extends Error {
  readonly code?: string;
  /** The bytes the parser was given when it failed, and how far into them it got. */
  readonly rawPacket?: Buffer;
  readonly bytesParsed?: number;
}

/** Connections whose parser failed and whose answer is settled; later errors on them are ignored. */
const settled = new WeakSet<Socket>();

/** The status line for a parser error (see the file comment). */
export function clientErrorStatus(err: ParserError): string {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return requestLineUnfinished(err) ? '414 URI Too Long' : '431 Request Header Fields Too Large';
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return '413 Content Too Large';
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return '408 Request Timeout';
    default:
      return '400 Bad Request';
  }
}

/**
 * Whether the head overflowed while the parser was still in the request line: no line feed
 * between the start of the line the parser stopped in and where it stopped. That line starts
 * after the last line feed before it in the packet, or at the packet's start (a target longer
 * than one read is overflowing within its first packets, which begin with the method).
 */
function requestLineUnfinished(err: ParserError): boolean {
  const packet = err.rawPacket;
  if (packet === undefined) return false;
  const stop = Math.min(err.bytesParsed ?? packet.length, packet.length);
  const lineStart = stop > 0 ? packet.lastIndexOf(0x0a, stop - 1) + 1 : 0;
  // A request line is a method token and a space; a field line has its colon right after the name.
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ /.test(packet.subarray(lineStart, Math.min(stop, lineStart + 32)).toString('latin1'));
}

/** The server's 'clientError' listener: answers, closes or leaves the connection as the file comment says. */
export function answerClientError(err: ParserError, socket: Socket, lingering: Lingering): void {
  // Each chunk that reaches a failed parser fails again: the first error decided.
  if (settled.has(socket) || lingering.holds(socket)) return;
  settled.add(socket);
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const status = clientErrorStatus(err);
  const inFlight = (socket as { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined;
  if (inFlight !== undefined) {
    if (inFlight.req.complete) {
      // The error is in a later request pipelined behind this one: its answer goes first.
      if (!inFlight.headersSent) inFlight.shouldKeepAlive = false;
      else if (!inFlight.writableFinished) inFlight.once('finish', () => lingering.answerRaw(socket, ''));
      else lingering.answerRaw(socket, '');
      return;
    }
    if (inFlight.headersSent) {
      // The error is in the body of a request already answered: a refusal is whole (drain what
      // follows); an answer still streaming cannot be finished honestly (cut).
      if (inFlight.writableEnded) lingering.answerRaw(socket, '');
      else socket.destroy();
      return;
    }
  }
  const answer = `HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    socket.end(answer, () => socket.destroy());
    return;
  }
  lingering.answerRaw(socket, answer);
}
