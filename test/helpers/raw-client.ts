/**
 * A raw TCP HTTP/1.1 client for tests where a client library would hide the bug: it sends
 * exactly the bytes given, and exposes exactly the bytes received (interim 100 answers,
 * duplicate headers, when the connection closes).
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';

export class RawClient {
  readonly socket: Socket;
  received = '';
  closed = false;
  readonly #waiters = new Set<() => void>();

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.received += d;
      for (const w of this.#waiters) w();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.#waiters) w();
    });
  }

  /** `allowHalfOpen`: keep sending after the server's FIN (a client that ignores it). */
  static async open(url: string, { allowHalfOpen = false } = {}): Promise<RawClient> {
    const { port } = new URL(url);
    const socket = connect({ port: Number(port), host: '127.0.0.1', allowHalfOpen });
    await once(socket, 'connect');
    return new RawClient(socket);
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Resolves once `cond` holds on what was received; rejects after `timeoutMs` (a bound, not a sleep). */
  async until(cond: (received: string, closed: boolean) => boolean, what: string, timeoutMs = 5_000): Promise<string> {
    if (cond(this.received, this.closed)) return this.received;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received so far: ${JSON.stringify(this.received.slice(0, 300))}`));
      }, timeoutMs);
      const check = (): void => {
        if (!cond(this.received, this.closed)) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(this.received);
      };
      this.#waiters.add(check);
    });
  }

  /**
   * Waits for a complete response with a Content-Length body (after any 1xx); returns head and
   * body. `noBody`: the answer to HEAD, complete at its head whatever its length says.
   */
  async response(timeoutMs = 5_000, { noBody = false } = {}): Promise<{ status: number; head: string; body: string }> {
    const parse = (text: string): { status: number; head: string; body: string } | undefined => {
      let rest = text;
      // Skip interim answers.
      while (/^HTTP\/1\.1 1\d\d /.test(rest)) {
        const end = rest.indexOf('\r\n\r\n');
        if (end === -1) return undefined;
        rest = rest.slice(end + 4);
      }
      const end = rest.indexOf('\r\n\r\n');
      if (end === -1) return undefined;
      const head = rest.slice(0, end);
      if (noBody) return { status: Number(head.slice(9, 12)), head, body: '' };
      const len = /\r\ncontent-length: *(\d+)/i.exec(head);
      const body = rest.slice(end + 4);
      if (len !== null && body.length < Number(len[1])) return undefined;
      return { status: Number(head.slice(9, 12)), head, body: len === null ? body : body.slice(0, Number(len[1])) };
    };
    await this.until((r) => parse(r) !== undefined, 'a complete response', timeoutMs);
    return parse(this.received) as { status: number; head: string; body: string };
  }

  close(): void {
    this.socket.destroy();
  }
}
