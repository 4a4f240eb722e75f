/**
 * The last `maxBytes` of a VM's serial console, plus a watch for a marker line (`READY`).
 * The marker is matched as a substring anywhere in the stream, across chunk boundaries,
 * because firmware escape sequences can prefix the line (`c\x1b[?7l\x1b[2JREADY …`).
 */
export class ConsoleBuffer {
  readonly #maxBytes: number;
  readonly #marker: string | undefined;
  #chunks: Buffer[] = [];
  #bytes = 0;
  /** The tail kept to find a marker split across two chunks. */
  #carry = '';
  #markerSeen = false;
  #totalBytes = 0;
  readonly #markerListeners = new Set<() => void>();

  constructor(maxBytes: number, marker?: string) {
    this.#maxBytes = Math.max(1, maxBytes);
    this.#marker = marker === '' ? undefined : marker;
  }

  get markerSeen(): boolean {
    return this.#markerSeen;
  }

  /** Bytes ever written, including those dropped from the front. */
  get totalBytes(): number {
    return this.#totalBytes;
  }

  /** Calls `listener` once when the marker appears (at once if it already has). */
  onMarker(listener: () => void): () => void {
    if (this.#markerSeen) {
      listener();
      return () => undefined;
    }
    this.#markerListeners.add(listener);
    return () => this.#markerListeners.delete(listener);
  }

  write(chunk: Buffer): void {
    this.#totalBytes += chunk.length;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    while (this.#bytes > this.#maxBytes && this.#chunks.length > 0) {
      const first = this.#chunks[0] as Buffer;
      const excess = this.#bytes - this.#maxBytes;
      if (first.length <= excess) {
        this.#chunks.shift();
        this.#bytes -= first.length;
      } else {
        this.#chunks[0] = first.subarray(excess);
        this.#bytes -= excess;
      }
    }
    if (this.#marker !== undefined && !this.#markerSeen) {
      const text = this.#carry + chunk.toString('latin1');
      if (text.includes(this.#marker)) {
        this.#markerSeen = true;
        this.#carry = '';
        for (const l of this.#markerListeners) l();
        this.#markerListeners.clear();
      } else {
        this.#carry = this.#marker.length > 1 ? text.slice(-(this.#marker.length - 1)) : '';
      }
    }
  }

  /** The kept console text (UTF-8, lossy on a cut multi-byte character at the front). */
  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8');
  }

  /** The last `n` characters, for error messages. */
  tail(n: number): string {
    const t = this.text();
    return t.length <= n ? t : t.slice(-n);
  }
}
