/**
 * Every launcher Smart Proxy ships starts the same entry, bin/smart-proxy.js, with the V8 flags
 * of src/node-flags.ts: the `smart-proxy` bin's first line, the Containerfile's ENTRYPOINT,
 * `npm start` and the systemd unit. V8 reads the flags only at start-up, so a launcher that
 * drops one silently runs another heap. The bin is also run for real: its first line must
 * start Node with the flags in effect, and it must turn the compile cache on (by the rules of
 * src/config/compile-cache.js) before any TypeScript is loaded, so that a warm start never
 * loads Node's type stripper.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import '../helpers/test-caches.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const read = (path: string): string => readFileSync(join(root, path), 'utf8');
const ENTRY = 'bin/smart-proxy.js';
const bin = join(root, ENTRY);
const work = mkdtempSync(join(tmpdir(), 'sp-launcher-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** The environment of a child: PATH leads to the Node running the tests; no cache settings of ours. */
function envWith(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${join(process.execPath, '..')}:${process.env.PATH ?? ''}`, XDG_CACHE_HOME: join(work, 'xdg-unused') };
  delete env.NODE_COMPILE_CACHE;
  delete env.SMART_PROXY_COMPILE_CACHE;
  delete env.NODE_DISABLE_COMPILE_CACHE;
  delete env.NODE_OPTIONS;
  return { ...env, ...extra };
}

interface Report { execArgv: string[]; compileCacheDir: string | null; stripper: boolean }
let runs = 0;

/** Runs the bin itself (its first line starts Node) on `check-config`; its output and what its start-up did. */
async function runBin(extra: Record<string, string>): Promise<{ stdout: string; report: Report }> {
  const config = join(work, 'ok.yaml');
  writeFileSync(config, 'resources:\n  a: { access: { public: true }, provider: { kind: static, endpoint: "http://127.0.0.1:9" } }\n');
  const report = join(work, `report-${++runs}.json`);
  const probe = join(root, 'test', 'fixtures', 'startup-report.js');
  const { stdout } = await promisify(execFile)(bin, ['check-config', config], {
    // In `work`: a relative directory name (a mistaken `off`) would be made there.
    cwd: work, env: envWith({ NODE_OPTIONS: `--import=${probe}`, STARTUP_REPORT: report, ...extra }), encoding: 'utf8', timeout: 30_000,
  });
  return { stdout, report: JSON.parse(readFileSync(report, 'utf8')) as Report };
}

const entries = (dir: string): number => readdirSync(dir, { recursive: true }).length;

describe('launch flags', () => {
  it('are set', () => {
    assert.ok(NODE_FLAGS.length > 0);
  });

  it(`are on the bin's first line, in the ENTRYPOINT, in npm start and in the systemd unit, before ${ENTRY}`, () => {
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string>; scripts: Record<string, string> };
    assert.equal(pkg.bin['smart-proxy'], `./${ENTRY}`);
    const shebang = read(ENTRY).split('\n', 1)[0] ?? '';
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read('Containerfile'))?.[1];
    assert.ok(entrypoint !== undefined, 'the Containerfile has a one-line ENTRYPOINT');
    const entry = JSON.parse(entrypoint) as string[];
    const start = pkg.scripts.start ?? '';
    const unit = read('examples/systemd/smart-proxy.service');
    const execStart = /^ExecStart=(.*)$/m.exec(unit)?.[1] ?? '';
    assert.match(shebang, /^#!\/usr\/bin\/env -S node /);
    assert.ok(entry.includes(ENTRY), `the ENTRYPOINT does not start ${ENTRY}: ${entrypoint}`);
    assert.match(start, new RegExp(` ${ENTRY} `), `npm start does not start ${ENTRY}: ${start}`);
    assert.ok(execStart.includes(` ${ENTRY} `), `the systemd unit's ExecStart does not start ${ENTRY}: ${execStart}`);
    assert.equal(/^ExecStartPre=.* (\S+) check-config /m.exec(unit)?.[1], ENTRY);
    for (const flag of NODE_FLAGS) {
      assert.ok(shebang.split(' ').includes(flag), `${ENTRY}'s first line lacks ${flag}: ${shebang}`);
      assert.ok(entry.indexOf(flag) > 0 && entry.indexOf(flag) < entry.indexOf(ENTRY), `the ENTRYPOINT lacks ${flag} before ${ENTRY}: ${entrypoint}`);
      assert.ok(start.includes(` node ${flag} `) || start.includes(` ${flag} ${ENTRY}`), `npm start lacks ${flag}: ${start}`);
      assert.ok(execStart.includes(`node ${flag} `), `the systemd unit's ExecStart lacks ${flag}: ${execStart}`);
    }
  });

  it('are in effect in a process started by the bin itself', async () => {
    // A preload prints the flags V8 was given and exits before the CLI runs: the bin's first
    // line is what started this Node.
    const probe = join(root, 'test', 'fixtures', 'print-exec-argv.ts');
    const { stdout } = await promisify(execFile)(bin, ['--help'], {
      env: envWith({ NODE_OPTIONS: `--import=${probe}` }),
      timeout: 30_000,
    });
    const execArgv = JSON.parse(stdout) as string[];
    for (const flag of NODE_FLAGS) assert.ok(execArgv.includes(flag), `started without ${flag}: ${stdout}`);
  });
});

describe(`the entry, ${ENTRY}`, () => {
  it('fills the compile cache on a first start, and a warm start never loads the type stripper', async () => {
    const dir = join(work, 'configured');
    const cold = await runBin({ SMART_PROXY_COMPILE_CACHE: dir });
    assert.ok(cold.report.compileCacheDir?.startsWith(dir), JSON.stringify(cold.report));
    for (const flag of NODE_FLAGS) assert.ok(cold.report.execArgv.includes(flag), JSON.stringify(cold.report));
    // An empty cache: the TypeScript is stripped (cli.ts and on), and kept.
    assert.equal(cold.report.stripper, true);
    const filled = entries(dir);
    assert.ok(filled > 20, `only ${filled} entries`);
    const warm = await runBin({ SMART_PROXY_COMPILE_CACHE: dir });
    assert.deepEqual(warm.report, { ...cold.report, stripper: false });
    assert.equal(warm.stdout, cold.stdout);
    assert.equal(entries(dir), filled);
  });

  it('uses the user\'s cache directory by default', async () => {
    const xdg = join(work, 'xdg');
    const { report } = await runBin({ XDG_CACHE_HOME: xdg });
    assert.ok(report.compileCacheDir?.startsWith(join(xdg, 'smart-proxy', 'compile')), JSON.stringify(report));
  });

  it('is off with SMART_PROXY_COMPILE_CACHE=off (or 0)', async () => {
    for (const off of ['off', '0']) {
      const { stdout, report } = await runBin({ SMART_PROXY_COMPILE_CACHE: off });
      assert.match(stdout, /valid/);
      assert.equal(report.compileCacheDir, null);
      assert.equal(report.stripper, true);
    }
    assert.deepEqual(readdirSync(work).filter((n) => n === 'off' || n === '0'), []);
  });

  it('refuses a directory others can write to, and starts without a cache', async () => {
    const dir = join(work, 'open');
    mkdirSync(dir, { mode: 0o700 });
    chmodSync(dir, 0o777);
    const { stdout, report } = await runBin({ SMART_PROXY_COMPILE_CACHE: dir });
    assert.match(stdout, /valid/);
    assert.equal(report.compileCacheDir, null);
    assert.deepEqual(readdirSync(dir), []);
  });

  it('leaves a cache enabled by NODE_COMPILE_CACHE where Node put it', async () => {
    const dir = join(work, 'node-env');
    const ours = join(work, 'ours');
    const { report } = await runBin({ NODE_COMPILE_CACHE: dir, SMART_PROXY_COMPILE_CACHE: ours });
    assert.ok(report.compileCacheDir?.startsWith(dir), JSON.stringify(report));
    assert.throws(() => readdirSync(ours), { code: 'ENOENT' });
  });

  it('says in one line when its Node cannot run TypeScript, instead of a stack trace', async () => {
    const run = promisify(execFile)(process.execPath, ['--no-experimental-strip-types', bin, '--version'], { env: envWith({}), encoding: 'utf8', timeout: 30_000 });
    const err = await run.then(() => assert.fail('exited 0'), (e: unknown) => e as { code: number; stderr: string });
    assert.equal(err.code, 1);
    assert.match(err.stderr, /^smart-proxy: Node \S+ cannot run TypeScript directly; run it with Node 22\.18 or later/);
    assert.equal(err.stderr.trim().split('\n').length, 1, err.stderr);
  });
});
