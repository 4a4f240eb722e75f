/**
 * Reads Prometheus text exposition with a real parser (parse-prometheus-text-format), so a
 * malformed line fails the test. That parser folds a labelled histogram's series into one,
 * so histograms are read a second time with their TYPE lines removed: each `_bucket`,
 * `_sum` and `_count` line then comes back as a plain sample with all its labels.
 */
import parse, { type ParsedFamily } from 'parse-prometheus-text-format';

export interface Scrape {
  readonly families: readonly ParsedFamily[];
  /** The sample `name` with exactly these labels (missing: undefined). */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample of `name` as [labels, value]. */
  samples(name: string): Array<[Record<string, string>, number]>;
  help(name: string): string | undefined;
  type(name: string): string | undefined;
}

export function parseScrape(text: string): Scrape {
  const families = parse(text);
  const flat = parse(text.split('\n').filter((l) => !/^# TYPE \S+ histogram$/.test(l)).join('\n'));
  const byName = new Map<string, Array<[Record<string, string>, number]>>();
  for (const f of flat) {
    const list = byName.get(f.name) ?? [];
    for (const m of f.metrics) list.push([{ ...(m.labels ?? {}) }, Number(m.value)]);
    byName.set(f.name, list);
  }
  const same = (a: Record<string, string>, b: Record<string, string>): boolean =>
    Object.keys(a).length === Object.keys(b).length && Object.entries(a).every(([k, v]) => b[k] === v);
  return {
    families,
    samples: (name) => byName.get(name) ?? [],
    value: (name, labels = {}) => byName.get(name)?.find(([l]) => same(l, labels))?.[1],
    help: (name) => families.find((f) => f.name === name)?.help,
    type: (name) => families.find((f) => f.name === name)?.type,
  };
}
