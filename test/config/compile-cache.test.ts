/**
 * Node's compile cache at start-up (src/config/compile-cache.js): on in the user's cache
 * directory or the configured one, off when asked, and never used from a directory that is
 * not the user's own or that others can write to; a directory that cannot be made means no
 * cache, never an error. Each case runs in a child process: the cache is per process.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const moduleUrl = new URL('../../src/config/compile-cache.js', import.meta.url).href;
const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sp-compile-cache-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** The environment of a child: nothing of this process's own cache settings. */
function envWith(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_COMPILE_CACHE;
  delete env.SMART_PROXY_COMPILE_CACHE;
  delete env.NODE_DISABLE_COMPILE_CACHE;
  return { ...env, XDG_CACHE_HOME: join(root, 'xdg-unused'), ...extra };
}

/** What enableStartupCompileCache() answers in a fresh process with this environment. */
function enableIn(extra: Record<string, string>): { dir?: string; status: string } {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `import { enableStartupCompileCache } from ${JSON.stringify(moduleUrl)}; process.stdout.write(JSON.stringify(enableStartupCompileCache()));`], {
    env: envWith(extra), encoding: 'utf8', timeout: 30_000,
  });
  return JSON.parse(out) as { dir?: string; status: string };
}

void describe('compile cache at start-up', () => {
  void it('is on in the user\'s cache directory by default, made private (0700)', () => {
    const xdg = join(root, 'xdg');
    const r = enableIn({ XDG_CACHE_HOME: xdg });
    assert.equal(r.status, 'enabled');
    assert.equal(r.dir, join(xdg, 'smart-proxy', 'compile'));
    assert.equal(statSync(r.dir).mode & 0o777, 0o700);
  });

  void it('goes where SMART_PROXY_COMPILE_CACHE says, and is off with "off"', () => {
    const dir = join(root, 'configured');
    assert.deepEqual(enableIn({ SMART_PROXY_COMPILE_CACHE: dir }), { dir, status: 'enabled' });
    assert.deepEqual(enableIn({ SMART_PROXY_COMPILE_CACHE: 'off' }), { status: 'off' });
  });

  void it('is not used from a directory others can write to', () => {
    const dir = join(root, 'open');
    mkdirSync(dir, { mode: 0o700 });
    chmodSync(dir, 0o777);
    assert.deepEqual(enableIn({ SMART_PROXY_COMPILE_CACHE: dir }), { status: 'untrusted directory' });
    assert.deepEqual(readdirSync(dir), []);
  });

  void it('a directory that cannot be made (a file in the way) means no cache, not an error', () => {
    const file = join(root, 'a-file');
    writeFileSync(file, 'x');
    assert.deepEqual(enableIn({ SMART_PROXY_COMPILE_CACHE: join(file, 'cache') }), { status: 'untrusted directory' });
    assert.deepEqual(enableIn({ SMART_PROXY_COMPILE_CACHE: file }), { status: 'untrusted directory' });
  });

  void it('hands the cache to worker threads (the SQLite store\'s) through their environment', () => {
    const script = (enable: string): string => `import { enableStartupCompileCache, workerEnvWithCompileCache } from ${JSON.stringify(moduleUrl)}; ${enable}; process.stdout.write(JSON.stringify(workerEnvWithCompileCache()?.NODE_COMPILE_CACHE ?? null));`;
    const run = (enable: string, extra: Record<string, string>): unknown => JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script(enable)], { env: envWith(extra), encoding: 'utf8', timeout: 30_000 }));
    const dir = join(root, 'workers');
    const got = run('enableStartupCompileCache()', { SMART_PROXY_COMPILE_CACHE: dir });
    assert.ok(typeof got === 'string' && got.startsWith(dir), String(got));
    assert.equal(run('enableStartupCompileCache()', { SMART_PROXY_COMPILE_CACHE: 'off' }), null);
  });

  void it('leaves a cache enabled by NODE_COMPILE_CACHE where Node put it', () => {
    const dir = join(root, 'node-env');
    const r = enableIn({ NODE_COMPILE_CACHE: dir, SMART_PROXY_COMPILE_CACHE: join(root, 'ours') });
    assert.equal(r.status, 'already enabled');
    assert.ok(r.dir?.startsWith(dir), r.dir);
  });

  void it('the entry turns it on before it loads any TypeScript: only the few light modules that do it come before', () => {
    const log = join(root, 'modules.log');
    const config = join(root, 'ok.yaml');
    writeFileSync(config, 'resources:\n  a: { access: { public: true }, provider: { kind: static, endpoint: "http://127.0.0.1:9" } }\n');
    const hook = fileURLToPath(new URL('../fixtures/module-log-hook.ts', import.meta.url));
    execFileSync(process.execPath, ['--import', hook, cli, 'check-config', config], {
      env: envWith({ SMART_PROXY_COMPILE_CACHE: join(root, 'order'), MODULE_LOG: log }), encoding: 'utf8', timeout: 30_000,
    });
    const loaded = readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' ') as [string, string]);
    const rootUrl = new URL('../../', import.meta.url).href;
    const before = loaded.filter(([, on]) => on === '0').map(([url]) => url).filter((u) => !u.startsWith('node:'));
    assert.deepEqual(before.map((u) => u.replace(rootUrl, '')).sort(), ['bin/smart-proxy.js', 'src/config/cache-dir.js', 'src/config/compile-cache.js']);
    assert.ok(loaded.some(([url, on]) => on === '1' && url.endsWith('/src/cli.ts')));
    // The rest of the config code was loaded after it: zod, the schema files.
    assert.ok(loaded.filter(([url, on]) => on === '1' && url.includes('/zod/')).length > 10);
  });

  void it('the CLI fills it with the modules it loads, and answers the same from it', () => {
    const dir = join(root, 'cli');
    const config = join(root, 'ok.yaml');
    writeFileSync(config, 'resources:\n  a: { access: { public: true }, provider: { kind: static, endpoint: "http://127.0.0.1:9" } }\n');
    const run = (): string => execFileSync(process.execPath, [cli, 'check-config', config], { env: envWith({ SMART_PROXY_COMPILE_CACHE: dir }), encoding: 'utf8', timeout: 30_000 });
    const first = run();
    const entries = (): number => readdirSync(dir, { recursive: true }).length;
    const filled = entries();
    // check-config loads the config code (zod, the schema in .ts files): dozens of modules.
    assert.ok(filled > 20, `only ${filled} entries`);
    assert.equal(run(), first);
    assert.equal(entries(), filled);
  });
});
