/**
 * The global budget for held request bodies (every queue is bounded).
 *
 * What "held bytes" means here. A held request's body is never read into memory while it
 * waits: the proxy does not consume the request stream, so Node stops reading the socket
 * once one stream buffer (the readable highWaterMark, 64 KiB) is full, and TCP flow control
 * (HTTP/2: stream flow control) stops the client. The process's own memory per held upload is
 * therefore small and constant. What is *not* small is the commitment: every held upload is
 * data the proxy has promised to deliver to a backend that is still booting, all of it at
 * the moment the backend becomes ready, and it occupies kernel socket buffers meanwhile.
 * So the budget counts the bodies a held request *announces*:
 *
 * - a body with `Content-Length` counts its declared length;
 * - a body of unknown length (HTTP/1.1 chunked, or HTTP/2 without content-length) counts a
 *   configured estimate (`limits.heldBodyEstimateBytes`), since its real size is known only
 *   once it is read, which happens after the hold, when it streams with backpressure;
 * - a request without a body counts nothing.
 *
 * A request is charged when its hold begins and released when the hold ends (ready,
 * timeout, failure or client gone). Past the budget the answer is 503 SP_HOLD_BYTES_FULL
 * with `Retry-After`; a single body larger than the whole budget could never be held and
 * gets 413 SP_BODY_TOO_LARGE. Warm (ready) resources are not charged: their bodies stream.
 *
 * Two finer bounds keep one client from taking the whole budget with one announced
 * Content-Length: a cap per request (larger bodies get 413 while the resource is cold:
 * they are sent again once it is warm, where nothing is held) and a share per client
 * address (past it, that client alone gets 503 + Retry-After).
 */
import { SmartProxyError } from '../core/errors.ts';

/** The request fields the budget looks at (HTTP/1.1 IncomingMessage and HTTP/2 compat alike). */
export interface BodyAnnouncer {
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly httpVersionMajor: number;
  /** HTTP/2 compat requests: the stream, whose `endAfterHeaders` says "no body". */
  readonly stream?: { readonly endAfterHeaders?: boolean } | undefined;
}

/** Releases a reservation; calling it twice is harmless. */
export type ReleaseHeldBytes = () => void;

export interface HeldBytesOptions {
  /** Sum of announced body bytes of all held requests at once. */
  readonly maxHeldBytes: number;
  /** Largest announced body one held request may have. */
  readonly maxHeldBytesPerRequest?: number;
  /** Sum of announced body bytes of one client address's held requests. */
  readonly maxHeldBytesPerClient?: number;
  /** What a held body of unknown length counts. */
  readonly heldBodyEstimateBytes: number;
}

/**
 * How many bytes a request's body announces: Content-Length, the estimate for a body of
 * unknown length, or 0 for none.
 */
export function announcedBodyBytes(req: BodyAnnouncer, estimateBytes: number): number {
  const cl = req.headers['content-length'];
  if (typeof cl === 'string' && /^\d+$/.test(cl)) return Number(cl);
  if (req.headers['transfer-encoding'] !== undefined) return estimateBytes;
  // HTTP/2 has no chunked coding: a request has a body unless its HEADERS frame ended the stream.
  if (req.httpVersionMajor === 2 && req.stream?.endAfterHeaders === false) return estimateBytes;
  return 0;
}

export class HeldBytesBudget {
  readonly #max: number;
  readonly #estimate: number;
  readonly #maxPerRequest: number;
  readonly #maxPerClient: number;
  /** Held bytes by client address; an address leaves the map when it holds nothing. */
  readonly #byClient = new Map<string, number>();
  #held = 0;

  constructor(options: HeldBytesOptions) {
    this.#max = options.maxHeldBytes;
    this.#estimate = options.heldBodyEstimateBytes;
    this.#maxPerRequest = Math.min(options.maxHeldBytesPerRequest ?? Number.MAX_SAFE_INTEGER, this.#max);
    this.#maxPerClient = options.maxHeldBytesPerClient ?? Number.MAX_SAFE_INTEGER;
  }

  /** Held bytes of one client address right now. */
  heldBytesOf(client: string): number {
    return this.#byClient.get(client) ?? 0;
  }

  /** Announced body bytes of all held requests right now. */
  get heldBytes(): number {
    return this.#held;
  }

  get maxHeldBytes(): number {
    return this.#max;
  }

  /**
   * Charges `req`'s announced body for the length of a hold. Throws SP_BODY_TOO_LARGE (413)
   * when the body alone exceeds the budget, SP_HOLD_BYTES_FULL (503) when the budget is
   * taken; `retryAfterS` goes into Retry-After.
   */
  reserve(req: BodyAnnouncer, context: { readonly resourceId: string; readonly retryAfterS: number; readonly client?: string }): ReleaseHeldBytes {
    const bytes = announcedBodyBytes(req, this.#estimate);
    if (bytes === 0) return noop;
    if (bytes > this.#maxPerRequest) {
      throw new SmartProxyError('SP_BODY_TOO_LARGE', `the request body (${bytes} bytes) is larger than a request may hold while the resource starts (${this.#maxPerRequest} bytes); send it again once the resource is ready`, {
        data: { resource: context.resourceId, bodyBytes: bytes, maxHeldBytesPerRequest: this.#maxPerRequest },
      });
    }
    const client = context.client ?? 'unknown';
    const ofClient = this.#byClient.get(client) ?? 0;
    if (ofClient + bytes > this.#maxPerClient) {
      throw new SmartProxyError('SP_HOLD_BYTES_FULL', 'this client already holds its share of request bytes for starting resources; try again later', {
        data: { resource: context.resourceId, bodyBytes: bytes, clientHeldBytes: ofClient, maxHeldBytesPerClient: this.#maxPerClient },
        retryAfterS: context.retryAfterS,
      });
    }
    if (this.#held + bytes > this.#max) {
      throw new SmartProxyError('SP_HOLD_BYTES_FULL', undefined, {
        data: { resource: context.resourceId, bodyBytes: bytes, heldBytes: this.#held, maxHeldBytes: this.#max },
        retryAfterS: context.retryAfterS,
      });
    }
    this.#held += bytes;
    this.#byClient.set(client, ofClient + bytes);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held -= bytes;
      const left = (this.#byClient.get(client) ?? bytes) - bytes;
      if (left <= 0) this.#byClient.delete(client);
      else this.#byClient.set(client, left);
    };
  }
}

const noop: ReleaseHeldBytes = () => undefined;
