/**
 * The chart of docs/benchmarks.md, drawn by hand (no plotting dependency): latency by
 * percentile on a "nines" axis (50 %, 90 %, 99 %, 99.9 % equally spaced), one line per
 * contender; beside it, the wake latency by percentile with the targets.
 */
import type { ContenderResult } from '../suites/throughput.ts';
import type { WakeResult } from '../suites/wake.ts';
import { quantile } from './stats.ts';

interface Series { readonly name: string; readonly color: string; readonly points: ReadonlyArray<readonly [number, number]> }
interface Panel {
  readonly title: string;
  readonly yLabel: string;
  readonly log: boolean;
  readonly series: readonly Series[];
  readonly refLines?: ReadonlyArray<{ y: number; label: string }>;
  /** Right end of the percentile axis. */
  readonly maxPercentile: number;
}

const COLORS: Record<string, string> = {
  direct: '#7f7f7f', nginx: '#2ca02c', chp: '#d62728', bare: '#1f77b4', dispatch: '#17becf', smart: '#ff7f0e', 'smart-public': '#ffbb78', 'smart-jwt': '#e377c2', front: '#bcbd22', 'front-lua': '#8c6d31', probe: '#9467bd', provider: '#8c564b', 'first-boot': '#c49c94',
};
const PERCENTILES = [30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.99];
const nines = (p: number): number => -Math.log10(1 - p / 100);
const X_TICKS: Array<[number, string]> = [[50, '50%'], [90, '90%'], [99, '99%'], [99.9, '99.9%'], [99.99, '99.99%']];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceTicks(min: number, max: number, log: boolean): number[] {
  if (log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= min * 0.999 && v <= max * 1.001) out.push(v);
      }
    }
    return out;
  }
  const step = [1, 2, 5, 10, 20, 25, 50, 100, 200, 500].find((s) => max / s <= 8) ?? 1000;
  const out: number[] = [];
  for (let v = 0; v <= max + 1e-9; v += step) out.push(v);
  return out;
}

function panel(p: Panel, x0: number, y0: number, w: number, h: number): string {
  const all = p.series.flatMap((s) => s.points.map(([, v]) => v)).concat((p.refLines ?? []).map((r) => r.y));
  let yMin = p.log ? 10 ** Math.floor(Math.log10(Math.max(1e-3, Math.min(...all)))) : 0;
  let yMax = Math.max(...all) * 1.08;
  if (p.log && yMin <= 0) yMin = 0.01;
  const ticks = niceTicks(yMin, yMax, p.log);
  if (!p.log) yMax = Math.max(yMax, ticks.at(-1)!);
  const L = 58; const R = 28; const T = 34; const B = 44;
  const pw = w - L - R; const ph = h - T - B;
  const xMax = nines(p.maxPercentile);
  const xs = (pct: number): number => x0 + L + (nines(pct) / xMax) * pw;
  const ys = (v: number): number => {
    const f = p.log ? (Math.log10(v) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin)) : v / yMax;
    return y0 + T + ph - Math.max(0, Math.min(1, f)) * ph;
  };
  const parts: string[] = [];
  parts.push(`<text x="${x0 + L}" y="${y0 + 20}" font-size="15" font-weight="bold">${esc(p.title)}</text>`);
  for (const v of ticks) {
    const y = ys(v).toFixed(1);
    parts.push(`<line x1="${x0 + L}" x2="${x0 + L + pw}" y1="${y}" y2="${y}" stroke="#e3e3e3"/>`);
    parts.push(`<text x="${x0 + L - 6}" y="${y}" dy="4" font-size="11" text-anchor="end">${v < 1 ? v.toFixed(v < 0.1 ? 2 : 1) : String(v)}</text>`);
  }
  for (const [pct, label] of X_TICKS.filter(([pct]) => pct <= p.maxPercentile)) {
    const x = xs(pct).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${y0 + T}" y2="${y0 + T + ph}" stroke="#e3e3e3"/>`);
    parts.push(`<text x="${x}" y="${y0 + T + ph + 16}" font-size="11" text-anchor="middle">${label}</text>`);
  }
  parts.push(`<rect x="${x0 + L}" y="${y0 + T}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${x0 + L + pw / 2}" y="${y0 + h - 6}" font-size="12" text-anchor="middle">percentile</text>`);
  parts.push(`<text transform="translate(${x0 + 14},${y0 + T + ph / 2}) rotate(-90)" font-size="12" text-anchor="middle">${esc(p.yLabel)}</text>`);
  for (const r of p.refLines ?? []) {
    const y = ys(r.y).toFixed(1);
    parts.push(`<line x1="${x0 + L}" x2="${x0 + L + pw}" y1="${y}" y2="${y}" stroke="#444" stroke-dasharray="5,4"/>`);
    parts.push(`<text x="${x0 + L + 4}" y="${y}" dy="-3" font-size="10" fill="#444">${esc(r.label)}</text>`);
  }
  for (const s of p.series) {
    const d = s.points.map(([pct, v], j) => `${j === 0 ? 'M' : 'L'}${xs(pct).toFixed(1)},${ys(v).toFixed(1)}`).join(' ');
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.2"/>`);
    for (const [pct, v] of s.points) parts.push(`<circle cx="${xs(pct).toFixed(1)}" cy="${ys(v).toFixed(1)}" r="2.4" fill="${s.color}"/>`);
  }
  // Legend in the lower right, where latency curves (rising to the right) leave room.
  const legendW = 210;
  const legendH = p.series.length * 17 + 8;
  const lx = x0 + L + pw - legendW - 6;
  const ly0 = y0 + T + ph - legendH - 6;
  parts.push(`<rect x="${lx}" y="${ly0}" width="${legendW}" height="${legendH}" fill="#fff" fill-opacity="0.92" stroke="#ccc"/>`);
  p.series.forEach((s, i) => {
    const ly = ly0 + 16 + i * 17;
    parts.push(`<rect x="${lx + 8}" y="${ly - 6}" width="16" height="4" fill="${s.color}"/>`);
    parts.push(`<text x="${lx + 30}" y="${ly}" font-size="11">${esc(s.name)}</text>`);
  });
  return parts.join('\n');
}

export function latencyChart(t: readonly ContenderResult[], wake: readonly WakeResult[] | undefined): string {
  const warm: Panel = {
    title: 'Warm path latency (wrk, 50 connections)',
    yLabel: 'latency, ms (log scale)',
    log: true,
    maxPercentile: 99.99,
    series: t.map((c) => ({
      name: c.label, color: COLORS[c.name] ?? '#000',
      points: PERCENTILES.filter((p) => c.latencyUs[String(p)] !== undefined).map((p) => [p, c.latencyUs[String(p)]! / 1000] as const),
    })),
  };
  const w1 = 560; const w2 = wake ? 440 : 0; const h = 400;
  const body = [panel(warm, 0, 0, w1, h)];
  if (wake) {
    body.push(panel({
      title: 'Wake latency (readiness flips → response)',
      yLabel: 'ms',
      log: false,
      maxPercentile: 99.9,
      refLines: [{ y: 20, label: 'p50 target 20 ms' }, { y: 50, label: 'p99 target 50 ms' }],
      series: wake.map((wr) => ({
        name: wr.path === 'probe' ? 'found by probe' : wr.path === 'provider' ? 'found by provider poll' : 'provider poll, first boots', color: COLORS[wr.path] ?? '#000',
        points: PERCENTILES.filter((p) => p <= 99.9).map((p) => [p, quantile(wr.samplesMs, p / 100)] as const),
      })),
    }, w1, 0, w2, h));
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w1 + w2}" height="${h}" viewBox="0 0 ${w1 + w2} ${h}" font-family="Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="#fff"/>
${body.join('\n')}
</svg>
`;
}
