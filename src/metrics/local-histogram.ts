/**
 * A histogram with one label (`resource`) kept in plain typed arrays, for the warm path:
 * an observation is a bucket search and two additions, with no label hashing or allocation
 * (prom-client's Histogram hashes the label set on every observe, about 1 µs). It takes
 * part in the registry like any metric: the registry asks `get()` when Prometheus scrapes.
 */
import type { Metric, Registry } from 'prom-client';

/** What the registry formats: one line per value. */
interface Collected {
  readonly name: string;
  readonly help: string;
  readonly type: 'histogram';
  readonly aggregator: 'sum';
  readonly values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }>;
}

export interface Series {
  /** Observations per bucket (not cumulative); the last slot is +Inf. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

export class LocalHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #buckets: readonly number[];
  readonly #label: string;
  readonly #series = new Map<string, Series>();

  constructor(options: { name: string; help: string; label: string; buckets: readonly number[]; registry: Registry }) {
    this.name = options.name;
    this.help = options.help;
    this.#label = options.label;
    this.#buckets = options.buckets;
    // The registry reads name, help, type and get(); nothing else of prom-client's Metric class.
    options.registry.registerMetric(this as unknown as Metric);
  }

  observe(labelValue: string, value: number): void {
    this.observeIn(this.series(labelValue), value);
  }

  /**
   * The series of one label value, created (and exported from then on) on first use. A caller
   * that keeps it observes with observeIn, without a lookup by label per observation.
   */
  series(labelValue: string): Series {
    let s = this.#series.get(labelValue);
    if (s === undefined) {
      s = { counts: new Float64Array(this.#buckets.length + 1), sum: 0, count: 0 };
      this.#series.set(labelValue, s);
    }
    return s;
  }

  /** Adds `value` to a series of this histogram (from series()). */
  observeIn(s: Series, value: number): void {
    let i = 0;
    while (i < this.#buckets.length && value > (this.#buckets[i] as number)) i++;
    s.counts[i] = (s.counts[i] ?? 0) + 1;
    s.sum += value;
    s.count++;
  }

  get(): Collected {
    const values: Collected['values'] = [];
    for (const [labelValue, s] of this.#series) {
      let cumulative = 0;
      for (let i = 0; i <= this.#buckets.length; i++) {
        cumulative += s.counts[i] ?? 0;
        const le = i < this.#buckets.length ? (this.#buckets[i] as number) : '+Inf';
        values.push({ metricName: `${this.name}_bucket`, labels: { le, [this.#label]: labelValue }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: { [this.#label]: labelValue }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { [this.#label]: labelValue }, value: s.count });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }
}
