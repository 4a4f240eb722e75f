/**
 * The operator CLI's HTTP side: calls to the admin API with the bearer token, errors turned
 * into exit codes (docs/operations/cli.md), and a small Server-Sent Events reader.
 */

/** Exit codes of every operator command. */
export const EXIT = {
  ok: 0,
  /** The action failed (start failed or timed out, the API answered an error). */
  failed: 1,
  /** Bad command line. */
  usage: 2,
  /** The admin API could not be reached. */
  unreachable: 3,
  /** The admin API refused the credentials (401) or the caller is not an admin (403). */
  unauthorised: 4,
} as const;

export class CliError extends Error {
  readonly exitCode: number;

  constructor(message: string, exitCode: number) {
    super(message);
    this.exitCode = exitCode;
  }
}

export interface AdminClientOptions {
  readonly baseUrl: string;
  readonly token: string | undefined;
  /** Each call (not a stream) is cut after this long. */
  readonly timeoutMs: number;
}

export class AdminClient {
  readonly #o: AdminClientOptions;

  constructor(options: AdminClientOptions) {
    this.#o = options;
  }

  async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const res = await this.#fetch(method, path, body, AbortSignal.timeout(this.#o.timeoutMs));
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: reported as text below
    }
    if (!res.ok) throw apiError(res.status, parsed, this.#o.token !== undefined);
    return parsed;
  }

  /** Opens an SSE stream and yields its events until it ends or `signal` aborts. */
  async *events(path: string, signal: AbortSignal): AsyncGenerator<{ event: string; data: unknown }> {
    const res = await this.#fetch('GET', path, undefined, signal, 'text/event-stream');
    if (!res.ok) throw apiError(res.status, await res.json().catch(() => undefined), this.#o.token !== undefined);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buf.indexOf('\n\n')) !== -1) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data !== '') yield { event, data: JSON.parse(data) as unknown };
        }
        // A stream that sends a huge line without an end is not one we follow.
        if (buf.length > 1024 * 1024) throw new CliError('the event stream sent an event over 1 MiB', EXIT.failed);
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
  }

  async #fetch(method: string, path: string, body: unknown, signal: AbortSignal, accept = 'application/json'): Promise<Response> {
    const headers: Record<string, string> = { accept };
    if (this.#o.token !== undefined) headers.authorization = `Bearer ${this.#o.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(new URL(path, this.#o.baseUrl), { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
    } catch (err) {
      if (signal.aborted && (signal.reason as Error | undefined)?.name === 'TimeoutError') {
        throw new CliError(`the admin API at ${this.#o.baseUrl} did not answer in ${this.#o.timeoutMs} ms`, EXIT.unreachable);
      }
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new CliError(`cannot reach the admin API at ${this.#o.baseUrl}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, EXIT.unreachable);
    }
  }
}

function apiError(status: number, body: unknown, sentToken: boolean): CliError {
  const p = body as { code?: string; detail?: string } | undefined;
  const what = typeof p === 'object' && p !== null && typeof p.detail === 'string' ? `${p.detail}${p.code === undefined ? '' : ` (${p.code})`}` : String(body).slice(0, 500);
  // The usual first 401: no token was given at all; say where one goes.
  const hint = status === 401 && !sentToken ? '\nno token was sent: set SMART_PROXY_ADMIN_TOKEN or pass --token TOKEN (a token identity holding an admin group)' : '';
  return new CliError(`admin API: ${status}: ${what}${hint}`, status === 401 || status === 403 ? EXIT.unauthorised : EXIT.failed);
}
