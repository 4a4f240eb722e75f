/** The `smart-proxy start` progress line: phase, a bar from the boot estimate, elapsed and ETA. */

const WIDTH = 24;

export interface ProgressView {
  readonly step: string;
  readonly elapsedMs: number | null;
  readonly eta: { readonly remainingMs: number; readonly p50Ms: number } | null;
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;

/** `booting   [#########---------------]  38%  1.9s, ETA 3.1s` (no ETA without boot history). */
export function progressLine(p: ProgressView): string {
  const elapsed = p.elapsedMs ?? 0;
  let fraction: number | undefined;
  if (p.step === 'ready') fraction = 1;
  else if (p.eta !== null && p.eta.p50Ms > 0) fraction = Math.min(0.99, elapsed / p.eta.p50Ms);
  const step = p.step.padEnd(9);
  if (fraction === undefined) return `${step} [${'?'.repeat(WIDTH)}]  ${seconds(elapsed)}, no estimate yet`;
  const filled = Math.round(fraction * WIDTH);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(WIDTH - filled)}]`;
  const pct = `${Math.round(fraction * 100)}%`.padStart(4);
  if (p.step === 'ready') return `${step} ${bar} ${pct}  ready in ${seconds(elapsed)}`;
  return `${step} ${bar} ${pct}  ${seconds(elapsed)}, ETA ${seconds(p.eta?.remainingMs ?? 0)}`;
}
