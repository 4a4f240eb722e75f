import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startTestApp, testConfig } from '../metrics/metrics-app.ts';

/** A raw request, so the target can hold characters fetch would encode. */
function rawGet(base: string, target: string, headers: Record<string, string> = {}): Promise<number> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: target, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the JSON access log has one parsable line per request, with the cold wait', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sp-alog-'));
  const path = join(dir, 'access.log');
  const p = new MimicProvider();
  const t = await startTestApp(testConfig({ accessLog: { enabled: true, format: 'json', path }, resources: { app: { provider: 'p' } } }, ['p']), { p });
  try {
    assert.equal(await rawGet(t.app.proxyUrl, '/smart_proxy/app/-/a?x=1', { 'user-agent': 'ua "quoted"\\' }), 200);
    assert.equal(await rawGet(t.app.proxyUrl, '/smart_proxy/app/-/b'), 200);
    assert.equal(await rawGet(t.app.proxyUrl, '/smart_proxy/none/-/"%22'), 404);
  } finally {
    await t.close();
  }
  try {
    const lines = (await readFile(path, 'utf8')).trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 3);
    const [cold, warm, missing] = lines;
    assert.equal(cold?.status, 200);
    assert.equal(cold?.resource, 'app');
    assert.equal(cold?.warm, false);
    assert.equal(typeof cold?.wokeMs, 'number');
    assert.equal(cold?.userAgent, 'ua "quoted"\\');
    assert.equal(cold?.url, '/smart_proxy/app/-/a?x=1');
    assert.equal(warm?.warm, true);
    assert.equal(warm?.wokeMs, undefined);
    assert.equal(missing?.status, 404);
    assert.equal(missing?.resource, undefined);
    for (const l of lines) {
      assert.equal(l.remote, '127.0.0.1');
      assert.equal(typeof l.durationMs, 'number');
      assert.match(String(l.time), /^\d{4}-\d{2}-\d{2}T/);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
