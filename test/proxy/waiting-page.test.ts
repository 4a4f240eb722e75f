import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { effectiveResources, parseConfig } from '../../src/config/load.ts';
import type { ProgressSnapshot } from '../../src/proxy/progress-sse.ts';
import { clientScript } from '../../src/proxy/waiting-client-script.ts';
import {
  builtinTheme, etaText, formatDuration, loadTheme, parseTemplate, PLACEHOLDERS, renderWaitingPage, ThemeLoader,
} from '../../src/proxy/waiting-page.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

const snap = (over: Partial<ProgressSnapshot> = {}): ProgressSnapshot => ({
  resource: 'app', state: 'starting', phase: 'booting', step: 'booting', elapsedMs: 1200,
  eta: { samples: 4, p50Ms: 3000, p90Ms: 8000, remainingMs: 1800 }, reason: null, code: null, retryAfterS: 2, ...over,
});
const view = (over: Partial<ProgressSnapshot> = {}) => ({
  snapshot: snap(over), path: '/smart_proxy/app/g1/', statusUrl: '/_smart_proxy/status/app/g1', eventsUrl: '/_smart_proxy/events/app/g1', refreshS: 3,
});

describe('waiting page rendering', () => {
  it('fills every placeholder of the built-in theme and leaves none behind', () => {
    const { html, csp } = renderWaitingPage(builtinTheme(), view(), clientScript);
    assert.doesNotMatch(html, /\{\{/);
    assert.match(html, /<html lang="en">/);
    assert.match(html, /<main id="sp-main" data-step="booting"/);
    assert.match(html, /<p id="sp-state" class="state">Booting<\/p>/);
    assert.match(html, /<progress id="sp-progress" max="100" value="15"/);
    assert.match(html, /About 1\.8 s left: usually 3\.0 s, 9 in 10 within 8\.0 s \(from 4 past starts\)/);
    assert.match(html, /prefers-reduced-motion/);
    const nonce = /'nonce-([^']+)'/.exec(csp)?.[1] ?? '';
    assert.ok(html.includes(`<script nonce="${nonce}">`));
    assert.equal(html.match(/<script/g)?.length, 1, 'one script, the nonce-carrying one');
    // A fresh nonce per response.
    assert.notEqual(renderWaitingPage(builtinTheme(), view(), clientScript).csp, csp);
  });

  it('escapes every untrusted value, in text and in attributes, and keeps the script config inert', () => {
    const evil = '"><script>alert(1)</script>';
    const { html } = renderWaitingPage(builtinTheme(), {
      ...view({ resource: evil, reason: `<img src=x onerror=alert(2)>` , step: 'failed', state: 'failed' }),
      path: `/smart_proxy/app/g1/${evil}`,
    }, clientScript);
    assert.ok(!html.includes('<script>alert'));
    assert.ok(!html.includes('<img src=x'));
    assert.ok(html.includes('&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;'));
    // Inside the inline script the JSON has its "<" escaped, so "</script>" cannot end it early.
    const script = html.slice(html.indexOf('<script nonce'));
    assert.equal(script.match(/<\/script>/g)?.length, 1);
    assert.ok(script.includes('\\u003c/script>'));
  });

  it('titles the page by state: starting, ready, failed, timed out', () => {
    const title = (over: Partial<ProgressSnapshot>): string =>
      /<title id="sp-title-text">([^<]*)<\/title>/.exec(renderWaitingPage(builtinTheme(), view(over), clientScript).html)?.[1] ?? '';
    assert.equal(title({}), 'Starting app…');
    assert.equal(title({ step: 'stopping', state: 'stopping', phase: null }), 'Starting app…');
    assert.equal(title({ step: 'ready', state: 'ready', phase: null }), 'app is ready');
    assert.equal(title({ step: 'failed', state: 'failed', code: 'SP_START_FAILED', reason: 'no' }), 'Could not start app');
    assert.equal(title({ step: 'failed', state: 'failed', code: 'SP_BOOT_TIMEOUT', reason: 'slow' }), 'app did not start in time');
    assert.equal(title({ resource: '<b>' }), 'Starting &lt;b&gt;…', 'escaped');
  });

  it('words the estimate for each situation', () => {
    assert.equal(etaText(snap({ eta: null })), 'No estimate yet: this resource has no recorded starts.');
    assert.match(etaText(snap({ elapsedMs: 4000 })), /^A little slower than usual: 9 in 10 starts finish within 8\.0 s/);
    assert.match(etaText(snap({ elapsedMs: 9000 })), /^Slower than usual: it usually takes 3\.0 s \(from 4 past starts\)/);
    assert.match(etaText(snap({ eta: { samples: 1, p50Ms: 1000, p90Ms: 1000, remainingMs: 1000 }, elapsedMs: 0 })), /from 1 past start\)/);
    assert.equal(formatDuration(850), '0.9 s');
    assert.equal(formatDuration(12_400), '12 s');
    assert.equal(formatDuration(125_000), '2 min 5 s');
  });
});

describe('themes', () => {
  it('refuses an unknown placeholder, naming the file and line', () => {
    assert.throws(() => parseTemplate('<p>\n{{resourceId}}\n{{resourceID}}</p>', 'my/waiting.html'),
      /my\/waiting\.html, line 3: unknown placeholder \{\{resourceID\}\}/);
  });

  it('refuses a folder without waiting.html', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-theme-'));
    try {
      assert.throws(() => loadTheme(dir), (err: Error) => err.message.includes(join(dir, 'waiting.html')));
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('documents every placeholder in the how-to', async () => {
    const { readFile } = await import('node:fs/promises');
    const doc = await readFile(new URL('../../docs/how-to/theme-the-waiting-page.md', import.meta.url), 'utf8');
    for (const name of Object.keys(PLACEHOLDERS)) assert.ok(doc.includes(`{{${name}}}`), `{{${name}}} is documented`);
  });

  it('serves an operator theme from its folder, configured per resource', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-theme-'));
    writeFileSync(join(dir, 'waiting.html'), '<!doctype html><title>Hang on</title><h1>ACME: {{resourceId}} is {{step}}</h1><p>{{etaText}}</p>{{script}}');
    const yaml = [
      'providers: { p: { kind: atmosphere, baseUrl: "http://127.0.0.1:1" } }',
      `resourceDefaults: { holdTimeoutMs: 20000, access: { public: true }, waiting: { themeDir: ${JSON.stringify(dir)}, defaultWaitMs: 90000 } }`,
      'resources:',
      '  a: { provider: p }',
      '  b: { provider: p, waiting: { browserPage: false, defaultWaitMs: 1500 } }',
    ].join('\n');
    const [a, b] = effectiveResources(parseConfig(yaml));
    assert.deepEqual(a?.waiting, { browserPage: true, defaultWaitMs: 20_000, themeDir: dir }, 'capped at holdTimeoutMs');
    assert.deepEqual(b?.waiting, { browserPage: false, defaultWaitMs: 1500, themeDir: dir }, 'merged field by field');
    assert.throws(() => parseConfig('resources: { a: { provider: { kind: atmosphere, baseUrl: embedded }, waiting: { page: true } } }'), /resources\.a\.waiting\.page: unknown field/);

    const loader = new ThemeLoader();
    const theme = loader.load(a?.waiting.themeDir);
    assert.equal(loader.load(b?.waiting.themeDir), theme, 'loaded once');
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, waiting: { browserPage: true, theme } }] });
    try {
      const res = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
      assert.equal(res.status, 503);
      const html = await res.text();
      assert.match(html, /<h1>ACME: app is requested<\/h1><p>No estimate yet/);
      assert.match(html, /<script nonce=/);
    } finally {
      await h.close();
      rmSync(dir, { recursive: true });
    }
  });
});
