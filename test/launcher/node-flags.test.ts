/**
 * The V8 flags of src/node-flags.ts reach Node through every launcher Smart Proxy ships: the
 * `smart-proxy` bin's first line, the Containerfile's ENTRYPOINT and `npm start`. V8 reads them
 * only at start-up, so a launcher that drops one silently runs another heap. The bin is also
 * run for real: its first line must start Node with the flags in effect.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NODE_FLAGS } from '../../src/node-flags.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const read = (path: string): string => readFileSync(join(root, path), 'utf8');

describe('launch flags', () => {
  it('are set', () => {
    assert.ok(NODE_FLAGS.length > 0);
  });

  it('are on the bin\'s first line, in the ENTRYPOINT, in npm start and in the systemd unit, before the script', () => {
    const shebang = read('src/cli.ts').split('\n', 1)[0] ?? '';
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read('Containerfile'))?.[1];
    assert.ok(entrypoint !== undefined, 'the Containerfile has a one-line ENTRYPOINT');
    const entry = JSON.parse(entrypoint) as string[];
    const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start ?? '';
    const unit = /^ExecStart=(.*)$/m.exec(read('examples/systemd/smart-proxy.service'))?.[1] ?? '';
    assert.match(shebang, /^#!\/usr\/bin\/env -S node /);
    for (const flag of NODE_FLAGS) {
      assert.ok(shebang.split(' ').includes(flag), `src/cli.ts's first line lacks ${flag}: ${shebang}`);
      assert.ok(entry.indexOf(flag) > 0 && entry.indexOf(flag) < entry.indexOf('src/cli.ts'), `the ENTRYPOINT lacks ${flag} before src/cli.ts: ${entrypoint}`);
      assert.ok(start.includes(` node ${flag} `) || start.includes(` ${flag} src/cli.ts`), `npm start lacks ${flag}: ${start}`);
      assert.ok(unit.includes(`node ${flag} `), `the systemd unit's ExecStart lacks ${flag}: ${unit}`);
    }
  });

  it('are in effect in a process started by the bin itself', async () => {
    // A preload prints the flags V8 was given and exits before the CLI runs: the bin's first
    // line is what started this Node. PATH leads to the Node running the tests.
    const probe = join(root, 'test', 'fixtures', 'print-exec-argv.ts');
    const { stdout } = await promisify(execFile)(join(root, 'src', 'cli.ts'), ['--help'], {
      env: { ...process.env, PATH: `${join(process.execPath, '..')}:${process.env.PATH ?? ''}`, NODE_OPTIONS: `--import=${probe}` },
      timeout: 30_000,
    });
    const execArgv = JSON.parse(stdout) as string[];
    for (const flag of NODE_FLAGS) assert.ok(execArgv.includes(flag), `started without ${flag}: ${stdout}`);
  });
});
