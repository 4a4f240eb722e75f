/**
 * The access log: one line per request, written when its response has ended or its client
 * left. A WebSocket upgrade is one line too, written when its tunnel closes: status 101 (or
 * the refusal's status), the tunnel's lifetime as its duration, and the bytes both ways. JSON (one object a line) or the Apache/nginx "combined" format, to standard output
 * or appended to a file. A slow disk never holds requests up: past a bound of unwritten
 * bytes, lines are dropped and counted instead of buffered without end.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Writable } from 'node:stream';
import type { Logger } from '../core/ports.ts';
import type { RequestObserver, RequestRecord, UpgradeRecord } from './observer.ts';

export interface AccessLogOptions {
  readonly format: 'json' | 'combined';
  /** Append here; absent: standard output. */
  readonly path?: string | undefined;
  readonly logger: Logger;
  /** Unwritten bytes kept at most before lines are dropped. */
  readonly maxBufferedBytes?: number;
  /** Where standard output goes (tests). */
  readonly stdout?: Writable;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export class AccessLog implements RequestObserver {
  readonly #format: 'json' | 'combined';
  readonly #path: string | undefined;
  readonly #log: Logger;
  readonly #maxBuffered: number;
  readonly #stdout: Writable;
  #file: WriteStream | undefined;
  /** Lines dropped because the output could not keep up. */
  dropped = 0;

  constructor(options: AccessLogOptions) {
    this.#format = options.format;
    this.#path = options.path;
    this.#log = options.logger;
    this.#maxBuffered = options.maxBufferedBytes ?? 8 * 1024 * 1024;
    this.#stdout = options.stdout ?? process.stdout;
    if (this.#path !== undefined) this.#file = this.#open(this.#path);
  }

  finished(req: IncomingMessage, res: ServerResponse, record: RequestRecord): void {
    this.#write(req, record, { status: statusOf(res), bytes: sizeOf(res) });
  }

  upgraded(req: IncomingMessage, record: UpgradeRecord): void {
    // 499 as for any request: the client left before it was answered.
    this.#write(req, record, { status: record.status ?? 499, bytes: record.bytesOut, bytesIn: record.bytesIn, upgrade: 'websocket' });
  }

  #write(req: IncomingMessage, record: RequestRecord, answer: Answer): void {
    const line = this.#format === 'json' ? jsonLine(req, record, answer) : combinedLine(req, record, answer);
    const out = this.#file ?? this.#stdout;
    if (out.writableLength > this.#maxBuffered) {
      if (this.dropped++ === 0) this.#log.warn({ path: this.#path ?? 'stdout' }, 'access log cannot keep up; dropping lines');
      return;
    }
    out.write(line);
  }

  held(): void {
    // Holds show in the request's line (wokeMs).
  }

  /** Opens the file again (after log rotation moved it away). */
  reopen(): void {
    if (this.#path === undefined) return;
    const old = this.#file;
    this.#file = this.#open(this.#path);
    old?.end();
  }

  /** Flushes and closes the file (standard output stays open). */
  async close(): Promise<void> {
    const file = this.#file;
    this.#file = undefined;
    if (file === undefined || file.destroyed) return;
    await new Promise<void>((resolve) => file.end(resolve));
  }

  #open(path: string): WriteStream {
    const stream = createWriteStream(path, { flags: 'a' });
    stream.on('error', (err) => this.#log.error({ err, path }, 'access log write failed'));
    return stream;
  }
}

/** What the client got: the status and the bytes of the body (of a tunnel: the frames it was sent). */
interface Answer {
  readonly status: number;
  readonly bytes: number | undefined;
  /** A tunnel's bytes from the client. */
  readonly bytesIn?: number;
  readonly upgrade?: 'websocket';
}

function statusOf(res: ServerResponse): number {
  // 499 (nginx's "client closed request"): the client left before the response ended.
  return res.writableFinished ? res.statusCode : 499;
}

function sizeOf(res: ServerResponse): number | undefined {
  const len = res.getHeader('content-length');
  const n = typeof len === 'string' ? Number(len) : typeof len === 'number' ? len : NaN;
  return Number.isSafeInteger(n) ? n : undefined;
}

function jsonLine(req: IncomingMessage, record: RequestRecord, answer: Answer): string {
  return `${JSON.stringify({
    time: new Date().toISOString(),
    remote: req.socket.remoteAddress,
    method: req.method,
    url: req.url,
    protocol: `HTTP/${req.httpVersion}`,
    status: answer.status,
    bytes: answer.bytes,
    bytesIn: answer.bytesIn,
    upgrade: answer.upgrade,
    durationMs: Math.round((performance.now() - record.startedAt) * 10) / 10,
    resource: record.resourceId,
    user: record.user,
    warm: record.warm,
    wokeMs: record.wokeMs,
    userAgent: req.headers['user-agent'],
    referer: req.headers.referer,
  })}\n`;
}

/** Combined Log Format; quotes and backslashes in fields escaped as nginx does (\x22). */
function combinedLine(req: IncomingMessage, record: RequestRecord, answer: Answer): string {
  const d = new Date();
  const pad = (n: number): string => String(n).padStart(2, '0');
  const time = `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()] ?? 'Jan'}/${d.getUTCFullYear()}:${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
  const size = answer.bytes;
  return `${req.socket.remoteAddress ?? '-'} - ${field(record.user)} [${time}] "${esc(req.method ?? '-')} ${esc(req.url ?? '-')} HTTP/${req.httpVersion}" ${answer.status} ${size ?? '-'} "${esc(header(req, 'referer'))}" "${esc(header(req, 'user-agent'))}"\n`;
}

function header(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  return typeof v === 'string' ? v : '-';
}

function field(v: string | undefined): string {
  return v === undefined || v === '' ? '-' : esc(v).replaceAll(' ', '\\x20');
}

function esc(s: string): string {
  // Control characters, quotes and backslashes as \xHH, so one request is one parsable line.
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return s.replace(/[\x00-\x1f"\\\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
