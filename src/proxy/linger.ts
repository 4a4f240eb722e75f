/**
 * What happens to a request body the proxy refused without reading (401/403/404 from access,
 * 413 and 503 at the held-bytes bounds, 405 TRACE, a waiting page or 202 for a POST, a 503 while
 * shutting down): a bounded drain, as nginx's lingering close.
 *
 * Why. Closing a TCP socket whose receive buffer still holds unread bytes makes the kernel send
 * RST instead of FIN, and discard whatever of the answer it had not yet sent. A client still
 * uploading then sees "connection reset" (or EPIPE on its next write) instead of the 401 or 413
 * the proxy answered: Python's `http.client`, which sends the whole body before reading, failed
 * 10 of 10 8 MiB uploads on loopback (a broken pipe); over a real network other clients can
 * too, when the RST overtakes the answer.
 *
 * What. Once a request is refused with its body unread, the body is read and thrown away, within
 * bounds:
 *
 * - The answer says `Connection: close`; after it the proxy half-closes (FIN), keeps reading
 *   and discarding, and closes once the body has ended, the client has closed, or a bound is
 *   hit. The connection is not kept even for a small body (nginx keeps it and discards the
 *   body): a client that got its final answer early may stop sending the body it announced
 *   (Node's own http client does, then reuses the socket), and the next request's bytes
 *   would be taken for the rest of that body.
 * - A body announced larger than `maxBytes` would be cut at the bound anyway: its connection
 *   closes after the answer, as without a drain, and none of it is read (nor is the body of a
 *   client refused for going silent: 408).
 *
 * Bounds, per connection: `timeMs` in all from the refusal (nginx's `lingering_time`), `idleMs`
 * of silence (`lingering_timeout`), `maxBytes` discarded. Past any of them the socket is
 * destroyed: a client that keeps sending forever, or drips a byte now and then, costs at most
 * that. In total: `maxConnections` lingering at once; past it a refusal closes at once, as
 * before (the client may then see a reset, but the proxy's sockets stay bounded).
 *
 * HTTP/2 needs none of this: a stream's body is flow-controlled per stream, and Node ends a
 * stream answered before its body with RST_STREAM(NO_ERROR), which tells the client to stop
 * sending without failing the answer (RFC 9113 §8.1).
 *
 * Answers written straight to a socket, with no request stream to read (a 400, 414 or 431 for
 * what Node's parser refused, 405 to CONNECT, a refused WebSocket upgrade), go through
 * `answerRaw`: the same bounds and counters, over the socket's raw bytes (whatever follows
 * cannot be framed any more, so it is read until the client closes or a bound is hit).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { systemClock } from '../core/clock.ts';
import type { Clock, TimerHandle } from '../core/ports.ts';

export interface LingerOptions {
  /** Longest a refused request's body is read and discarded, from the refusal on; 0 = never linger (close at once). */
  readonly timeMs: number;
  /** Longest silence of the client while lingering. */
  readonly idleMs: number;
  /** Most bytes read and discarded per refused request. */
  readonly maxBytes: number;
  /** Connections lingering at once over the whole listener. */
  readonly maxConnections: number;
}

export const DEFAULT_LINGER: LingerOptions = { timeMs: 30_000, idleMs: 5_000, maxBytes: 16 * 1024 * 1024, maxConnections: 1024 };

/**
 * How one lingering ended: `drained` (the whole body was read), `client_closed`, `time`,
 * `idle`, `bytes` (a bound was hit and the socket destroyed), `full` (too many lingering: closed
 * at once).
 */
export type LingerOutcome = 'drained' | 'client_closed' | 'time' | 'idle' | 'bytes' | 'full';

export type LingerObserver = (outcome: LingerOutcome, discardedBytes: number) => void;

/** The socket method Node's HTTP server calls after the last response on a closing connection. */
type DestroySoon = (this: Socket) => void;

export class Lingering {
  readonly #options: LingerOptions;
  readonly #observe: LingerObserver | undefined;
  readonly clock: Clock;
  /** Requests already handed over (a refusal may pass two answer paths). */
  readonly #seen = new WeakSet<IncomingMessage>();
  #active = 0;
  /** Body bytes of refused requests read and thrown away since start (lingering ones included). */
  discardedBytes = 0;
  /** How many drains ended how, since start. */
  readonly outcomes: Record<LingerOutcome, number> = { drained: 0, client_closed: 0, time: 0, idle: 0, bytes: 0, full: 0 };

  constructor(options: Partial<LingerOptions> = {}, observe?: LingerObserver, clock: Clock = systemClock) {
    this.#options = { ...DEFAULT_LINGER, ...options };
    this.#observe = observe;
    this.clock = clock;
  }

  /** Connections lingering right now. */
  get active(): number {
    return this.#active;
  }

  /**
   * `req` is about to be refused (answered without being forwarded). If its body is unread,
   * arranges for it to be drained within the bounds; call before the answer's head goes out,
   * since it may set `Connection: close`.
   */
  refused(req: IncomingMessage, res: ServerResponse): void {
    // No body at all (RFC 9112 §6.3: no Transfer-Encoding, no Content-Length above 0): nothing
    // is unread, so the connection stays open for the next request as after any answer. (Node
    // marks a request complete only after its handler ran, so `complete` is false here even
    // for a bodiless GET; a 401 to an API client or a browser's waiting page would otherwise
    // cost the client its connection.)
    if (req.complete || !hasBody(req) || this.#seen.has(req)) return;
    this.#seen.add(req);
    // HTTP/2: per-stream flow control and RST_STREAM(NO_ERROR) (see the top of this file).
    if (req.httpVersionMajor !== 1) return;
    const socket = req.socket as Socket | null;
    if (res.headersSent || req.destroyed || socket === null || socket.destroyed) return;
    const o = this.#options;
    if (o.timeMs <= 0 || this.#active >= o.maxConnections) {
      // Close after the answer, as without a drain (Node would otherwise read the whole body,
      // unbounded, to reuse the connection).
      res.shouldKeepAlive = false;
      if (o.timeMs > 0) {
        this.outcomes.full++;
        this.#observe?.('full', 0);
      }
      return;
    }
    const announced = announcedLength(req);
    if (announced !== undefined && announced > o.maxBytes) {
      // It would be cut at the bound anyway: reading up to it buys the client nothing.
      res.shouldKeepAlive = false;
      return;
    }
    res.shouldKeepAlive = false;
    new Drain(this, req, socket, o);
  }

  /** Sockets whose raw bytes are being drained after an answer written straight to them (answerRaw). */
  readonly #raw = new WeakSet<Socket>();

  /** Whether `socket` was answered by answerRaw and is draining (or closed since). */
  holds(socket: Socket): boolean {
    return this.#raw.has(socket);
  }

  /**
   * Writes `answer` (a whole response with `connection: close`, or '' when the answer already
   * went out) to a socket no request stream reads any more, half-closes it, and reads and throws
   * away what the client still sends, within the bounds; then the socket closes. Past
   * maxConnections (or with lingering off) the socket closes once the answer is out.
   */
  answerRaw(socket: Socket, answer: string): void {
    if (this.#raw.has(socket) || socket.destroyed) return;
    this.#raw.add(socket);
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const o = this.#options;
    if (o.timeMs <= 0 || this.#active >= o.maxConnections) {
      if (o.timeMs > 0) {
        this.outcomes.full++;
        this.#observe?.('full', 0);
      }
      socket.end(answer, () => socket.destroy());
      return;
    }
    new RawDrain(this, socket, answer, o);
  }

  /** A drain began (Drain's constructor). */
  began(): void {
    this.#active++;
  }

  /** A drain ended: its count is given back and its bytes and outcome reported. */
  ended(outcome: LingerOutcome, bytes: number): void {
    this.#active--;
    this.outcomes[outcome]++;
    this.#observe?.(outcome, bytes);
  }
}

/** Whether the request has a body at all (chunked, or a Content-Length above 0). */
function hasBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const cl = req.headers['content-length'];
  // Node's parser has refused a malformed Content-Length already.
  return cl !== undefined && !/^0+$/.test(cl);
}

/** Body bytes announced by Content-Length; undefined when the length is unknown (chunked). */
function announcedLength(req: IncomingMessage): number | undefined {
  if (req.headers['transfer-encoding'] !== undefined) return undefined;
  const cl = req.headers['content-length'];
  if (cl === undefined || !/^\d{1,15}$/.test(cl)) return undefined;
  return Number(cl);
}

/**
 * The bounds of one drain (all in time, silence, bytes) and its share of the counters, for
 * both kinds of drain below. `cut` is called when a bound is hit.
 */
class DrainBounds {
  readonly #owner: Lingering;
  readonly #maxBytes: number;
  readonly #idleMs: number;
  readonly #cut: (outcome: LingerOutcome) => void;
  readonly #deadline: TimerHandle;
  #idle: TimerHandle;
  /** When the client last sent a byte (clock ms): the idle timer re-arms for what is left. */
  #lastData: number;
  #bytes = 0;

  constructor(owner: Lingering, o: LingerOptions, cut: (outcome: LingerOutcome) => void) {
    this.#owner = owner;
    this.#maxBytes = o.maxBytes;
    this.#idleMs = o.idleMs;
    this.#cut = cut;
    owner.began();
    // The clock's timers do not keep the process alive: a lingering client cannot hold a stop.
    const clock = owner.clock;
    this.#lastData = clock.now();
    this.#deadline = clock.setTimeout(() => cut('time'), o.timeMs);
    this.#idle = clock.setTimeout(this.#onIdle, o.idleMs);
  }

  /** A chunk read and thrown away; past the byte bound, the drain is cut. */
  count(chunk: Buffer): void {
    this.#bytes += chunk.length;
    this.#owner.discardedBytes += chunk.length;
    if (this.#bytes > this.#maxBytes) {
      this.#cut('bytes');
      return;
    }
    this.#lastData = this.#owner.clock.now();
  }

  /** One timer for the idle bound, not one per chunk: when it fires it looks when data last came. */
  readonly #onIdle = (): void => {
    const clock = this.#owner.clock;
    const left = this.#lastData + this.#idleMs - clock.now();
    if (left > 0) this.#idle = clock.setTimeout(this.#onIdle, left);
    else this.#cut('idle');
  };

  /** The drain is over (once): the timers stop, and the owner counts its outcome. */
  end(outcome: LingerOutcome): void {
    this.#deadline.cancel();
    this.#idle.cancel();
    this.#owner.ended(outcome, this.#bytes);
  }
}

/** One refused request's body being read and thrown away. */
class Drain {
  readonly #req: IncomingMessage;
  readonly #socket: Socket;
  readonly #bounds: DrainBounds;
  #bodyDone = false;
  /** Node asked to close the connection after the answer (its destroySoon). */
  #closing = false;
  #ended = false;

  constructor(owner: Lingering, req: IncomingMessage, socket: Socket, o: LingerOptions) {
    this.#req = req;
    this.#socket = socket;
    this.#bounds = new DrainBounds(owner, o, (outcome) => this.#cut(outcome));
    // A forward that failed mid-body leaves the request stream with its abandoned reader's
    // 'readable' listener, which keeps 'data' from flowing: the forward is over, and what is
    // left of the body is only to be thrown away.
    req.removeAllListeners('readable');
    req.on('data', this.#onData);
    req.on('end', this.#onEnd);
    req.resume();
    socket.once('close', this.#onClose);
    // Node's server calls destroySoon after the last answer on a closing connection: FIN, then
    // destroy as soon as the FIN is flushed, with the body still unread (RST). This socket's
    // own method instead half-closes and leaves the destroy to the drain. Only this socket,
    // only from now on.
    const closeRequested = (): void => this.#closeRequested();
    socket.destroySoon = function (this: Socket): void {
      if (this.writable) this.end();
      closeRequested();
    };
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#bounds.count(chunk);
  };

  readonly #onEnd = (): void => {
    this.#bodyDone = true;
    if (this.#closing) this.#finish('drained');
  };

  readonly #onClose = (): void => {
    this.#finish(this.#bodyDone ? 'drained' : 'client_closed');
  };

  #closeRequested(): void {
    this.#closing = true;
    if (this.#bodyDone) this.#finish('drained');
  }

  /** A bound was hit: the connection ends now, whatever is still unread. */
  #cut(outcome: LingerOutcome): void {
    if (this.#ended) return;
    this.#finish(outcome);
    this.#socket.destroy();
  }

  #finish(outcome: LingerOutcome): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#req.off('data', this.#onData);
    this.#req.off('end', this.#onEnd);
    this.#socket.off('close', this.#onClose);
    // Nothing more to read: the socket closes as Node would have closed it (after its FIN is out).
    delete (this.#socket as { destroySoon?: DestroySoon }).destroySoon;
    if (this.#closing && !this.#socket.destroyed) this.#socket.destroySoon();
    this.#bounds.end(outcome);
  }
}

/** A socket's raw bytes read and thrown away after an answer written straight to it (answerRaw). */
class RawDrain {
  readonly #socket: Socket;
  readonly #bounds: DrainBounds;
  #ended = false;

  constructor(owner: Lingering, socket: Socket, answer: string, o: LingerOptions) {
    this.#socket = socket;
    this.#bounds = new DrainBounds(owner, o, (outcome) => this.#cut(outcome));
    socket.on('data', this.#onData);
    socket.once('end', this.#onEnd);
    socket.once('close', this.#onClose);
    // An upgraded or CONNECT socket is paused once Node hands it over: read, or the client's
    // bytes pile up in the kernel and the close becomes a reset after all.
    socket.resume();
    // The answer, then FIN: the client reads it while the proxy goes on reading.
    socket.end(answer);
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#bounds.count(chunk);
  };

  /** The client is done sending (its FIN after ours): nothing is left unread, the socket closes. */
  readonly #onEnd = (): void => {
    this.#finish('drained');
    this.#socket.destroySoon();
  };

  readonly #onClose = (): void => {
    this.#finish('client_closed');
  };

  #cut(outcome: LingerOutcome): void {
    if (this.#ended) return;
    this.#finish(outcome);
    this.#socket.destroy();
  }

  #finish(outcome: LingerOutcome): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onClose);
    this.#bounds.end(outcome);
  }
}
