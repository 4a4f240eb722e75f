/**
 * A bounded in-memory ring of a process's output: keeps the last `maxBytes` bytes, drops
 * the oldest. Cheap to append (no copy until read), so a chatty process costs bounded memory.
 */
export class LogRing {
  readonly maxBytes: number;
  #chunks: Buffer[] = [];
  #bytes = 0;
  /** Bytes dropped from the front since the start (so a reader knows output was cut). */
  droppedBytes = 0;

  constructor(maxBytes: number) {
    this.maxBytes = Math.max(0, maxBytes);
  }

  get bytes(): number {
    return this.#bytes;
  }

  append(chunk: Buffer): void {
    if (this.maxBytes === 0) {
      this.droppedBytes += chunk.length;
      return;
    }
    if (chunk.length >= this.maxBytes) {
      // One chunk larger than the ring: keep only its tail.
      this.droppedBytes += this.#bytes + chunk.length - this.maxBytes;
      this.#chunks = [Buffer.from(chunk.subarray(chunk.length - this.maxBytes))];
      this.#bytes = this.maxBytes;
      return;
    }
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    while (this.#bytes > this.maxBytes) {
      const first = this.#chunks[0] as Buffer;
      const over = this.#bytes - this.maxBytes;
      if (first.length <= over) {
        this.#chunks.shift();
        this.#bytes -= first.length;
        this.droppedBytes += first.length;
      } else {
        this.#chunks[0] = first.subarray(over);
        this.#bytes -= over;
        this.droppedBytes += over;
      }
    }
  }

  /** The kept output as UTF-8 (a multi-byte character cut at the front shows as U+FFFD). */
  text(): string {
    return Buffer.concat(this.#chunks, this.#bytes).toString('utf8');
  }

  /** The last `maxChars` characters, for error reasons and logs. */
  tail(maxChars: number): string {
    const t = this.text();
    return t.length > maxChars ? t.slice(t.length - maxChars) : t;
  }
}
