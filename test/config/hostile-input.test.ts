/**
 * Config files as people really get them wrong: each mistake gives one clear problem naming
 * the file (and the line where there is one), never a stack trace or a silent pass.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ConfigError, loadConfigFile, maxConfigBytes } from '../../src/config/load.ts';
import '../helpers/test-caches.ts';

const run = promisify(execFile);
const cli = new URL('../../bin/smart-proxy.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'sp-hostile-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const valid = 'providers:\n  cloud: { kind: atmosphere, baseUrl: embedded }\nresources:\n  lab: { provider: cloud, access: { public: true } }\n';

function file(name: string, content: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

async function problemsOf(path: string): Promise<string[]> {
  try {
    await loadConfigFile(path, null);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.match(err.message, new RegExp(`invalid configuration in ${path.replaceAll('.', '\\.')}`));
    return [...err.problems];
  }
  assert.fail(`expected ${path} to be refused`);
}

describe('hostile config files', () => {
  it('an empty file, or one of comments only, is called empty', async () => {
    for (const text of ['', '# nothing yet\n\n']) {
      const problems = await problemsOf(file('empty.yaml', text));
      assert.equal(problems.length, 1);
      assert.match(problems[0]!, /^the file is empty .*resources/);
    }
  });

  it('a directory is named as one', async () => {
    const d = join(dir, 'conf.d');
    mkdirSync(d);
    assert.deepEqual(await problemsOf(d), ['is a directory, not a config file: name the YAML file in it']);
  });

  it('a missing file says so in words', async () => {
    assert.deepEqual(await problemsOf(join(dir, 'nope.yaml')), ['cannot read the file: it does not exist']);
  });

  it('a file past the size bound is refused before it is read', async () => {
    const path = file('huge.yaml', valid);
    truncateSync(path, maxConfigBytes + 1); // sparse: no 16 MiB written
    const problems = await problemsOf(path);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^is 16\.0 MiB; a config file may be at most 16 MiB/);
  });

  it('bytes that are not UTF-8 are refused with their line, not turned into U+FFFD', async () => {
    const bytes = Buffer.concat([Buffer.from(valid.replace('lab:', 'l')), Buffer.from('# caf'), Buffer.from([0xe9]), Buffer.from('\n')]);
    const problems = await problemsOf(file('latin1.yaml', bytes));
    assert.deepEqual(problems, ['line 5: not UTF-8 text: save the file as UTF-8 (is it a YAML file?)']);
  });

  it('a billion-laughs alias bomb is a config error, not a crash', async () => {
    const levels = ['a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
    for (const [prev, name] of [['a', 'b'], ['b', 'c'], ['c', 'd'], ['d', 'e'], ['e', 'f'], ['f', 'g']]) {
      levels.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(', ')}]`);
    }
    const problems = await problemsOf(file('bomb.yaml', `${levels.join('\n')}\n${valid}`));
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^YAML aliases expand too far/);
  });

  it('a missing required field is called missing, at its parent\'s line', async () => {
    const problems = await problemsOf(file('noprov.yaml', valid.replace('provider: cloud, ', '')));
    assert.deepEqual(problems, ['line 4: resources.lab.provider: required, but missing']);
    const noResources = await problemsOf(file('nores.yaml', 'providers:\n  cloud: { kind: atmosphere, baseUrl: embedded }\n'));
    assert.deepEqual(noResources, ['resources: required, but missing (expected a mapping)']);
  });

  it('a section indented under providers or resources is named as a likely indentation mistake', async () => {
    const problems = await problemsOf(file('indent.yaml', 'providers:\n  cloud: { kind: atmosphere, baseUrl: embedded }\n  resources:\n    lab: { provider: cloud, access: { public: true } }\n'));
    assert.deepEqual(problems, [
      'line 4: providers.resources.kind: required, but missing (is `resources:` indented under `providers:` by mistake?)',
      'resources: required, but missing (expected a mapping)',
    ]);
  });

  it('one syntax mistake lists a few errors, a hint and a count, not a page of them', async () => {
    const text = `${valid}  api: { provider: cloud, probe: { kind: http, path: /v1/{id}, timeoutMs: 100 }, access: { public: true } }\n`;
    const problems = await problemsOf(file('braces.yaml', text));
    assert.ok(problems.length <= 7, problems.join('\n'));
    assert.match(problems[0]!, /^line 5, column \d+: /);
    assert.ok(problems.some((p) => p.startsWith('hint: inside { … } or [ … ], quote')), problems.join('\n'));
  });

  it('an unset environment variable: check-config warns with its path, start refuses naming the file', async () => {
    const name = 'SP_TEST_SURELY_UNSET_TOKEN';
    const path = file('env.yaml', [
      'listen: { host: 127.0.0.1, port: 0 }',
      'providers:',
      '  nova:',
      '    kind: http',
      '    baseUrl: http://127.0.0.1:9',
      '    credentials:',
      `      token: { env: ${name} }`,
      "    start: { request: { method: POST, url: '/servers/{serviceId}/action' } }",
      "    inspect: [{ request: { url: '/servers/{serviceId}' }, state: { pointer: /s, values: { ACTIVE: running } }, endpoint: 'http://{/a}:8080' }]",
      "    stop: { request: { method: POST, url: '/servers/{serviceId}/action' } }",
      'resources:',
      '  lab: { provider: nova, access: { public: true } }',
      '',
    ].join('\n'));
    const env = { ...process.env };
    delete env[name];
    const checked = await run(process.execPath, [cli, 'check-config', path], { timeout: 30_000, env });
    assert.equal(checked.stdout, `${path}: valid\n`);
    assert.equal(checked.stderr, `warning: providers.nova.credentials.token: environment variable ${name} is not set here; \`start\` refuses to run without it\n`);
    const started = await run(process.execPath, [cli, 'start', '--config', path], { timeout: 30_000, env }).then(() => assert.fail('expected exit 1'), (e: { code: number; stderr: string }) => e);
    assert.equal(started.code, 1);
    assert.equal(started.stderr, `invalid configuration in ${path}:\n  - providers.nova.credentials.token: environment variable ${name} is not set\n`);
  });

  it('check-config warns about a waiting page theme that start would refuse', async () => {
    const themeDir = join(dir, 'theme');
    mkdirSync(themeDir);
    writeFileSync(join(themeDir, 'waiting.html'), '<h1>{{resourceId}}</h1>\n<p>{{resourceID}}</p>\n');
    const path = file('theme.yaml', `${valid}resourceDefaults:\n  waiting: { themeDir: ${themeDir} }\n`);
    const checked = await run(process.execPath, [cli, 'check-config', path], { timeout: 30_000 });
    assert.equal(checked.stdout, `${path}: valid\n`);
    assert.match(checked.stderr, /^warning: resources\.lab\.waiting\.themeDir: .*waiting\.html, line 2: unknown placeholder \{\{resourceID\}\}.*`start` refuses to run with it\n$/);
  });

  it('check-config and start print the problem without a stack trace', async () => {
    const bomb = file('bomb2.yaml', 'a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n');
    for (const args of [['check-config', bomb], ['start', '--config', bomb], ['check-config', dir]]) {
      const out = await run(process.execPath, [cli, ...args], { timeout: 30_000 }).then(() => assert.fail('expected exit 1'), (e: { code: number; stderr: string; stdout: string }) => e);
      assert.equal(out.code, 1);
      const text = out.stderr + out.stdout;
      assert.match(text, /invalid configuration in /);
      assert.doesNotMatch(text, /\n\s+at .*\.ts:\d+/, 'no stack trace');
    }
  });
});
