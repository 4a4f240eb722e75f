/** What past boots of a resource say about the next one. */
export interface BootEstimate {
  readonly samples: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
}

/**
 * The last boot durations of each resource, kept in memory (the state store persists them
 * when one is configured). Bounded: only the newest `capacity` samples count, so the
 * estimate follows a resource whose boots get faster or slower.
 */
export class BootHistory {
  readonly #capacity: number;
  readonly #samples = new Map<string, number[]>();

  constructor(capacity = 50) {
    this.#capacity = capacity;
  }

  add(resourceId: string, bootMs: number): void {
    if (!Number.isFinite(bootMs) || bootMs < 0) return;
    let list = this.#samples.get(resourceId);
    if (list === undefined) {
      list = [];
      this.#samples.set(resourceId, list);
    }
    list.push(bootMs);
    if (list.length > this.#capacity) list.shift();
  }

  estimate(resourceId: string): BootEstimate | undefined {
    const list = this.#samples.get(resourceId);
    if (list === undefined || list.length === 0) return undefined;
    const sorted = [...list].sort((a, b) => a - b);
    return { samples: sorted.length, p50Ms: quantile(sorted, 0.5), p90Ms: quantile(sorted, 0.9) };
  }
}

/** Nearest-rank quantile of an ascending list. */
function quantile(sorted: readonly number[], q: number): number {
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx] as number;
}
