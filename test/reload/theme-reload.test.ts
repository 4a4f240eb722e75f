/**
 * A reload (SIGHUP, the admin API's reload) reads the waiting page theme files again: an edited
 * theme is served without a restart, and a broken one (unknown placeholder, missing file)
 * refuses the reload with the resource and the file named, the running theme kept.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startAdminApp } from '../admin/admin-kit.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';

describe('waiting page theme on reload', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sp-theme-reload-'));
  const file = join(dir, 'waiting.html');
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('picks up an edited theme, and keeps the running one when the new one is broken', async () => {
    writeFileSync(file, '<!doctype html><title>{{titleText}}</title><h1>V1 {{resourceId}}</h1>{{script}}');
    // The instance never finishes booting: every request gets the waiting page.
    const resources = { app: { provider: 'mimic', sharing: 'shared', waiting: { themeDir: dir } } };
    const a = await startAdminApp(resources, { mimic: new MimicProvider({ manual: true }) }, {}, true);
    const page = async (): Promise<string> => {
      const res = await fetch(`${a.app.proxyUrl}/smart_proxy/app/g1/x`, { headers: { authorization: 'Bearer ops-token', accept: 'text/html' } });
      assert.equal(res.status, 503);
      return res.text();
    };
    try {
      assert.match(await page(), /<h1>V1 app<\/h1>/);

      writeFileSync(file, '<!doctype html><title>{{titleText}}</title><h1>V2 {{resourceId}}</h1>{{script}}');
      const reloaded = await a.reconfigure(resources);
      assert.ok(reloaded.ok, JSON.stringify(reloaded));
      assert.match(await page(), /<h1>V2 app<\/h1>/, 'the edited theme, without a restart');

      writeFileSync(file, '<h1>{{resourceId}}</h1>\n<p>{{nope}}</p>');
      const broken = await a.reconfigure(resources);
      assert.equal(broken.ok, false);
      assert.match(broken.ok ? '' : broken.errors, /resources\.app\.waiting\.themeDir: .*waiting\.html, line 2: unknown placeholder \{\{nope\}\}/);
      assert.match(await page(), /<h1>V2 app<\/h1>/, 'the running theme is kept');

      unlinkSync(file);
      const missing = await a.reconfigure(resources);
      assert.equal(missing.ok, false);
      assert.match(missing.ok ? '' : missing.errors, /resources\.app\.waiting\.themeDir: waiting page theme: cannot read .*waiting\.html/);
      assert.match(await page(), /<h1>V2 app<\/h1>/);
    } finally {
      await a.close();
    }
  });
});
