/**
 * scripts/launch.mjs, the plain-JavaScript launcher behind `npm start` and `npm test`, run for
 * real: on the machine's own old Node (/usr/bin/node, Node 20 on these machines) it must run the
 * command under Node >= 22.18, pass exit codes and signals through, bound the whole run, and
 * leave no process behind.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { exitOf } from '../helpers/system.ts';
import '../helpers/test-caches.ts';

const launcher = fileURLToPath(new URL('../../scripts/launch.mjs', import.meta.url));
const systemNode = '/usr/bin/node';
const systemVersion = existsSync(systemNode) ? spawnSync(systemNode, ['-p', 'process.versions.node'], { encoding: 'utf8' }).stdout.trim() : '';
const [major = 0, minor = 0] = systemVersion.split('.').map(Number);
const systemIsOld = systemVersion !== '' && (major < 22 || (major === 22 && minor < 18));

interface Run {
  readonly child: ReturnType<typeof spawn>;
  readonly done: ReturnType<typeof exitOf>;
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout contains `text`. */
  until(text: string): Promise<void>;
}

function launch(t: TestContext, node: string, args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(node, [launcher, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; for (const w of [...waiters]) w(); });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const done = exitOf(child);
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await done;
  });
  return {
    child, done, stdout: () => out, stderr: () => err,
    until: (text) => new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (!out.includes(text)) return;
        waiters.splice(waiters.indexOf(check), 1);
        resolve();
      };
      waiters.push(check);
      void done.then(() => reject(new Error(`launcher ended before "${text}": ${out}\n${err}`)));
      check();
    }),
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A child that reports its Node, then leaves a grandchild running and prints its pid. */
const withGrandchild = (after: string): string =>
  `const c = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
   console.log('grandchild ' + c.pid); ${after}`;

describe('scripts/launch.mjs', { skip: systemIsOld ? false : `${systemNode} is not older than 22.18 (${systemVersion || 'missing'})` }, () => {
  it('on an old Node says so in one line and runs the command under Node >= 22.18; exit codes pass through', async (t) => {
    const r = launch(t, systemNode, ['--', 'node', '-e', 'console.log("child " + process.versions.node + " " + process.execPath); process.exit(7)']);
    const { code } = await r.done;
    assert.equal(code, 7, r.stderr());
    const [, version = ''] = /child (\S+)/.exec(r.stdout()) ?? [];
    const [a = 0, b = 0] = version.split('.').map(Number);
    assert.ok(a > 22 || (a === 22 && b >= 18), `child ran under ${version}`);
    const notice = r.stderr().trim().split('\n');
    assert.equal(notice.length, 1, r.stderr());
    assert.match(notice[0] ?? '', new RegExp(`Node ${systemVersion.replaceAll('.', '\\.')} is older than 22\\.18.*using Node ${version.replaceAll('.', '\\.')}`));
  });

  it('nested `node` and `npm` resolve to the new Node (PATH first)', async (t) => {
    const r = launch(t, systemNode, ['--', 'sh', '-c', 'node -p process.versions.node']);
    assert.equal((await r.done).code, 0, r.stderr());
    assert.notEqual(r.stdout().trim(), systemVersion);
  });

  it('a signal delivered twice at once (terminal and npm) reaches the command once; its death by signal is ours', async (t) => {
    const script = `let n = 0;
      process.on('SIGTERM', () => { n++; console.log('SIGTERM ' + n); setTimeout(() => { process.removeAllListeners('SIGTERM'); process.kill(process.pid, 'SIGTERM'); }, 300); });
      console.log('ready'); setInterval(() => {}, 1000);`;
    const r = launch(t, systemNode, ['--', 'node', '-e', script]);
    await r.until('ready');
    r.child.kill('SIGTERM');
    r.child.kill('SIGTERM');
    const { code, signal } = await r.done;
    assert.equal(signal, 'SIGTERM', `code ${code}: ${r.stderr()}`);
    assert.deepEqual(r.stdout().trim().split('\n'), ['ready', 'SIGTERM 1']);
  });

  it('--max-run-ms bounds the whole run: the group is stopped (grandchildren too) and the exit code is 124', async (t) => {
    const r = launch(t, systemNode, ['--max-run-ms', '5000', '--label', 'a stuck run', '--', 'node', '-e', withGrandchild('setInterval(() => {}, 1000);')]);
    await r.until('grandchild ');
    const pid = Number(/grandchild (\d+)/.exec(r.stdout())?.[1]);
    const { code } = await r.done;
    assert.equal(code, 124, r.stderr());
    assert.match(r.stderr(), /"a stuck run" did not finish within 5 s/);
    assert.equal(alive(pid), false, 'grandchild stopped');
  });

  it('processes the command leaves behind are stopped and named; its exit code is kept', async (t) => {
    const r = launch(t, systemNode, ['--', 'node', '-e', withGrandchild('setTimeout(() => process.exit(0), 50);')]);
    const { code } = await r.done;
    const pid = Number(/grandchild (\d+)/.exec(r.stdout())?.[1]);
    assert.equal(code, 0, r.stderr());
    assert.match(r.stderr(), /left processes running; stopping them/);
    assert.equal(alive(pid), false, 'grandchild stopped');
  });

  it('a command that cannot be spawned fails at once with 127, naming it', async (t) => {
    const r = launch(t, systemNode, ['--', 'no-such-command-sp']);
    assert.equal((await r.done).code, 127);
    assert.match(r.stderr(), /cannot run "no-such-command-sp"/);
  });

  it('without Node 24 in the tools folder, installs node@24 there with npm once, then runs under it', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-launch-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // A stand-in for npm (the registry is not the subject here): records its arguments and
    // installs the Node that runs this test as .bin/node, as `npm install node@24` would.
    const fakeNpm = join(dir, 'fake-npm.cjs');
    writeFileSync(fakeNpm, `const fs = require('node:fs'), path = require('node:path');
      const args = process.argv.slice(2); fs.writeFileSync(${JSON.stringify(join(dir, 'args.json'))}, JSON.stringify(args));
      const prefix = args[args.indexOf('--prefix') + 1]; fs.mkdirSync(path.join(prefix, 'node_modules/.bin'), { recursive: true });
      fs.symlinkSync(${JSON.stringify(process.execPath)}, path.join(prefix, 'node_modules/.bin/node'));`);
    const tools = join(dir, 'tools');
    const r = launch(t, systemNode, ['--', 'node', '-p', 'process.versions.node'], { SMART_PROXY_TOOLS_DIR: tools, npm_execpath: fakeNpm });
    assert.equal((await r.done).code, 0, r.stderr());
    assert.equal(r.stdout().trim(), process.versions.node);
    const args = JSON.parse(readFileSync(join(dir, 'args.json'), 'utf8')) as string[];
    assert.deepEqual([args[0], args[1], args[2], args.at(-1)], ['install', '--prefix', tools, 'node@24']);
    assert.match(r.stderr(), /installing node@24 into \.tools\/ from the npm registry/);
    assert.match(r.stderr(), new RegExp(`installed Node ${process.versions.node.replaceAll('.', '\\.')}`));
  });
});
