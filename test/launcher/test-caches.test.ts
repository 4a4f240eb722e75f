/**
 * A test run keeps the caches of the processes it starts inside the checkout: `bin/smart-proxy.js`
 * run as tests run it (here with a HOME of its own, to see where it writes) puts Node's compile
 * cache under test/tmp/cache/, and nothing under HOME/.cache. `npm test` loads the same setting
 * into every test process.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { testCacheEnv } from '../helpers/test-caches.ts';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

describe('caches of a test run', () => {
  const home = mkdtempSync(join(tmpdir(), 'sp-test-home-'));
  after(() => rmSync(home, { recursive: true, force: true }));

  it('go inside the checkout, never to the home directory', async () => {
    assert.equal(process.env.SMART_PROXY_COMPILE_CACHE, testCacheEnv.SMART_PROXY_COMPILE_CACHE, 'set for this process and its children');
    const config = join(home, 'config.yaml');
    writeFileSync(config, 'providers:\n  cloud: { kind: atmosphere, baseUrl: embedded }\nresources:\n  lab: { provider: cloud, access: { public: true } }\n');
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
    delete env.XDG_CACHE_HOME;
    delete env.NODE_COMPILE_CACHE;
    const out = await run(process.execPath, [cli, 'check-config', config], { env, timeout: 30_000 });
    assert.equal(out.stdout, `${config}: valid\n`);
    assert.equal(existsSync(join(home, '.cache')), false, 'nothing under HOME/.cache');
    assert.ok(readdirSync(testCacheEnv.SMART_PROXY_COMPILE_CACHE).length > 0, 'the compile cache is in the checkout');
  });

  it('is what npm test loads into every test process', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { scripts: Record<string, string> };
    assert.match(pkg.scripts['test:unit'] ?? '', /--import \.\/test\/helpers\/test-caches\.ts /);
  });
});
