/**
 * A counting semaphore for VM boots. Cold boots under TCG cost ~1.5 CPU-s each, so letting
 * every waiting request boot its VM at once only makes all of them late; a small number at a
 * time finishes each sooner (measured on 2 cores: 2 at once → 1.8 s, 8 → 8 s).
 */
export class BootGate {
  readonly #limit: number;
  #inUse = 0;
  #pauses = 0;
  readonly #queue: Array<{ grant: (release: () => void) => void; reject: (err: Error) => void }> = [];

  constructor(limit: number) {
    this.#limit = Math.max(1, Math.floor(limit));
  }

  get inUse(): number {
    return this.#inUse;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Resolves with a release function once a slot is free. The release is idempotent. When
   * `signal` aborts first, rejects with its reason and takes no slot.
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted === true) return Promise.reject(reasonOf(signal));
    if (this.#inUse < this.#limit && this.#pauses === 0) {
      this.#inUse++;
      return Promise.resolve(this.#releaser());
    }
    return new Promise((resolve, reject) => {
      const entry = {
        grant: (release: () => void): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
        reject,
      };
      const onAbort = (): void => {
        const i = this.#queue.indexOf(entry);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(reasonOf(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(entry);
    });
  }

  /**
   * Holds every new boot in the queue until the returned function is called (boots already
   * running go on). For maintenance, and for tests that must see a VM still `starting`.
   */
  pause(): () => void {
    this.#pauses++;
    let resumed = false;
    return () => {
      if (resumed) return;
      resumed = true;
      this.#pauses--;
      while (this.#pauses === 0 && this.#inUse < this.#limit && this.#queue.length > 0) {
        const next = this.#queue.shift();
        if (next === undefined) break;
        this.#inUse++;
        next.grant(this.#releaser());
      }
    };
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#pauses === 0 ? this.#queue.shift() : undefined;
      if (next !== undefined) next.grant(this.#releaser()); // the slot passes on; inUse unchanged
      else this.#inUse--;
    };
  }
}

function reasonOf(signal: AbortSignal | undefined): Error {
  const r: unknown = signal?.reason;
  return r instanceof Error ? r : new Error('aborted');
}
