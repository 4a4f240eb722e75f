/**
 * The waiting page a browser gets at once for a resource that is not ready: rendered from a
 * theme folder (the built-in one in `./theme/`, or an operator's) by `{{placeholder}}`
 * substitution. Every value is HTML-escaped except `{{script}}`, which is the proxy's own
 * live-update script. See docs/how-to/theme-the-waiting-page.md.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SmartProxyError } from '../core/errors.ts';
import type { ProgressSnapshot, ProgressStep } from './progress-sse.ts';

/** The file a theme folder must hold. */
export const THEME_FILE = 'waiting.html';

export const BUILTIN_THEME_DIR = fileURLToPath(new URL('./theme/', import.meta.url));

/** Every placeholder a template may use; anything else is a start-up error (a typo). */
export const PLACEHOLDERS = {
  resourceId: 'The resource id from the URL.',
  path: 'The URL the person asked for (path and query); the page continues there.',
  step: 'Machine name of the current step: stopped, requested, booting, probing, ready, failed, stopping.',
  stepText: 'The current step in words.',
  titleText: 'The page title for the current state: "Starting …", "… is ready", "Could not start …", "… did not start in time".',
  elapsedText: 'Time since the start was requested, e.g. "3 s".',
  etaText: 'The estimate in words, from this resource\'s past boots, or "No estimate yet…".',
  progressPercent: 'Integer 0-100: elapsed time against the 90th-percentile boot (0 without history).',
  reason: 'Why the last start failed; empty otherwise.',
  retryAfterS: 'Seconds until a retry makes sense (the Retry-After value).',
  refreshS: 'Seconds between reloads without JavaScript (use in a <noscript> meta refresh).',
  statusUrl: 'URL of the JSON status document.',
  eventsUrl: 'URL of the Server-Sent Events progress stream.',
  nonce: 'The CSP nonce of this response, for an operator\'s own <script nonce="…">.',
  script: 'The built-in live-update <script> element (inserted as is, not escaped).',
} as const;

export type PlaceholderName = keyof typeof PLACEHOLDERS;

type Part = string | { readonly name: PlaceholderName };

export interface WaitingTheme {
  /** The template file it came from (for messages). */
  readonly file: string;
  readonly parts: readonly Part[];
}

const PLACEHOLDER_RE = /\{\{\s*([A-Za-z][A-Za-z0-9]*)\s*\}\}/g;

/** Parses a template; unknown placeholders are an error naming the line. */
export function parseTemplate(text: string, file: string): WaitingTheme {
  const parts: Part[] = [];
  let last = 0;
  for (const m of text.matchAll(PLACEHOLDER_RE)) {
    const name = m[1] as string;
    if (!(name in PLACEHOLDERS)) {
      const line = text.slice(0, m.index).split('\n').length;
      throw new SmartProxyError('SP_CONFIG_INVALID',
        `${file}, line ${line}: unknown placeholder {{${name}}} (known: ${Object.keys(PLACEHOLDERS).join(', ')})`);
    }
    parts.push(text.slice(last, m.index), { name: name as PlaceholderName });
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  return { file, parts };
}

/** Reads `dir/waiting.html` (once, at start-up). */
export function loadTheme(dir: string): WaitingTheme {
  const file = join(dir, THEME_FILE);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SmartProxyError('SP_CONFIG_INVALID', `waiting page theme: cannot read ${file}: ${(err as Error).message}`);
  }
  return parseTemplate(text, file);
}

/** Loads each theme folder once, however many resources share it. */
export class ThemeLoader {
  readonly #byDir = new Map<string, WaitingTheme>();

  /** `undefined` (no folder configured) means the built-in theme. Relative to the working directory. */
  load(dir: string | undefined): WaitingTheme | undefined {
    if (dir === undefined) return undefined;
    const abs = resolve(dir);
    let theme = this.#byDir.get(abs);
    if (theme === undefined) {
      theme = loadTheme(abs);
      this.#byDir.set(abs, theme);
    }
    return theme;
  }
}

let builtin: WaitingTheme | undefined;

export function builtinTheme(): WaitingTheme {
  builtin ??= loadTheme(BUILTIN_THEME_DIR);
  return builtin;
}

export const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

export const stepTexts: Readonly<Record<ProgressStep, string>> = {
  stopped: 'Not started yet',
  requested: 'Asking for it to be started',
  booting: 'Booting',
  probing: 'Booted; checking that it answers',
  ready: 'Ready; opening it',
  failed: 'The start failed',
  stopping: 'Waiting for a previous run to stop',
};

/**
 * The page title (the browser tab) by state, so a tab in the background says what happened.
 * The live script gets these texts for the page's resource and sets `document.title` from them
 * as the state changes; a boot timeout is worded apart from other failures.
 */
export function titleTexts(resource: string): Readonly<Record<'starting' | 'ready' | 'failed' | 'timeout', string>> {
  return {
    starting: `Starting ${resource}…`,
    ready: `${resource} is ready`,
    failed: `Could not start ${resource}`,
    timeout: `${resource} did not start in time`,
  };
}

/** Which of `titleTexts` a snapshot gets. The live script has the same rule. */
export function titleKind(snap: ProgressSnapshot): 'starting' | 'ready' | 'failed' | 'timeout' {
  if (snap.step === 'ready') return 'ready';
  if (snap.step !== 'failed') return 'starting';
  return snap.code === 'SP_BOOT_TIMEOUT' ? 'timeout' : 'failed';
}

/** "0.8 s", "12 s", "2 min 5 s". */
export function formatDuration(ms: number): string {
  const s = ms / 1000;
  if (s < 10) return `${(Math.round(s * 10) / 10).toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const whole = Math.round(s);
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

/** The estimate in words. The live script has the same rules (waiting-client-script.ts). */
export function etaText(snap: ProgressSnapshot): string {
  const eta = snap.eta;
  if (eta === null) return 'No estimate yet: this resource has no recorded starts.';
  const from = `from ${eta.samples} past start${eta.samples === 1 ? '' : 's'}`;
  if (snap.step === 'ready') return `Usually ${formatDuration(eta.p50Ms)} (${from}).`;
  const elapsed = snap.elapsedMs ?? 0;
  if (elapsed < eta.p50Ms) {
    const range = eta.p90Ms > eta.p50Ms ? `, 9 in 10 within ${formatDuration(eta.p90Ms)}` : '';
    return `About ${formatDuration(eta.p50Ms - elapsed)} left: usually ${formatDuration(eta.p50Ms)}${range} (${from}).`;
  }
  if (elapsed < eta.p90Ms) return `A little slower than usual: 9 in 10 starts finish within ${formatDuration(eta.p90Ms)} (${from}).`;
  return `Slower than usual: it usually takes ${formatDuration(eta.p50Ms)} (${from}).`;
}

export function progressPercent(snap: ProgressSnapshot): number {
  if (snap.step === 'ready') return 100;
  if (snap.eta === null || snap.elapsedMs === null || snap.eta.p90Ms <= 0) return 0;
  return Math.min(95, Math.round(snap.elapsedMs / snap.eta.p90Ms * 100));
}

export interface PageView {
  readonly snapshot: ProgressSnapshot;
  /** The request target the person asked for (already validated by the route parser). */
  readonly path: string;
  readonly statusUrl: string;
  readonly eventsUrl: string;
  readonly refreshS: number;
}

export interface RenderedPage {
  readonly html: string;
  /** The value for the Content-Security-Policy header (carries this page's nonce). */
  readonly csp: string;
}

/**
 * Renders the page. The CSP allows nothing from elsewhere: inline styles, the one script
 * with this response's nonce, EventSource to this origin, `data:` images for a theme's logo.
 */
export function renderWaitingPage(theme: WaitingTheme, view: PageView, clientScript: (config: string) => string): RenderedPage {
  const nonce = randomBytes(16).toString('base64');
  const snap = view.snapshot;
  const titles = titleTexts(snap.resource);
  const config = JSON.stringify({
    snapshot: snap, eventsUrl: view.eventsUrl, refreshS: view.refreshS, stepTexts, titles,
  }).replace(/</g, '\\u003c');
  const values: Record<PlaceholderName, string> = {
    resourceId: escapeHtml(snap.resource),
    path: escapeHtml(view.path.length > 500 ? `${view.path.slice(0, 500)}…` : view.path),
    step: escapeHtml(snap.step),
    stepText: escapeHtml(stepTexts[snap.step]),
    titleText: escapeHtml(titles[titleKind(snap)]),
    elapsedText: escapeHtml(snap.elapsedMs === null ? '–' : formatDuration(snap.elapsedMs)),
    etaText: escapeHtml(etaText(snap)),
    progressPercent: String(progressPercent(snap)),
    reason: escapeHtml(snap.reason ?? ''),
    retryAfterS: String(snap.retryAfterS),
    refreshS: String(view.refreshS),
    statusUrl: escapeHtml(view.statusUrl),
    eventsUrl: escapeHtml(view.eventsUrl),
    nonce: escapeHtml(nonce),
    script: `<script nonce="${escapeHtml(nonce)}">${clientScript(config)}</script>`,
  };
  const html = theme.parts.map((p) => typeof p === 'string' ? p : values[p.name]).join('');
  const csp = `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'`;
  return { html, csp };
}
