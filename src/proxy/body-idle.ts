/**
 * A request body as forwarded: the client's stream, read through an idle bound. A client
 * that stops sending mid-body (a stalled or malicious upload) would otherwise keep its
 * backend connection, one of a bounded pool, forever. The clock runs only while the proxy
 * waits for the client's next chunk, never while the backend is slow to take one
 * (backpressure is not the client's fault).
 */
import type { IncomingMessage } from 'node:http';
import { SmartProxyError } from '../core/errors.ts';

export async function* idleBoundedBody(req: IncomingMessage, idleMs: number): AsyncGenerator<Buffer> {
  // Driven by hand, not `for await`: leaving a for-await destroys the request stream, and
  // with it the socket the 408 should go out on.
  const it = req[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let onIdle: (() => void) | undefined;
  const timer = setTimeout(() => onIdle?.(), idleMs);
  // An abandoned body (the forward failed) must not keep the process alive.
  timer.unref();
  try {
    for (;;) {
      timer.refresh();
      const idle = new Promise<never>((_resolve, reject) => {
        onIdle = () => reject(new SmartProxyError('SP_CLIENT_BODY_TIMEOUT', `the client sent no request body bytes for ${idleMs} ms`, { data: { bodyIdleTimeoutMs: idleMs } }));
      });
      const next = await Promise.race([it.next(), idle]);
      onIdle = undefined;
      if (next.done === true) return;
      yield next.value;
    }
  } finally {
    clearTimeout(timer);
  }
}
