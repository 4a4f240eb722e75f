import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { ConfigError, effectiveResources, expandStatuses, loadConfigFile, parseConfig } from '../../src/config/load.ts';
import '../helpers/test-caches.ts';

const run = promisify(execFile);
const cli = new URL('../../bin/smart-proxy.js', import.meta.url).pathname;

function problemsOf(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return [...err.problems];
  }
  assert.fail('expected a ConfigError');
}

describe('config', () => {
  it('loads the bundled demo config', async () => {
    const cfg = await loadConfigFile(new URL('../../examples/demo.yaml', import.meta.url).pathname);
    assert.equal(cfg.listen.port, 8080);
    const rs = effectiveResources(cfg);
    assert.ok(rs.length >= 2);
    for (const r of rs) assert.equal(r.provider.kind, 'atmosphere');
  });

  it('names the field, the value, the expectation and the line', () => {
    const problems = problemsOf([
      'providers:',
      '  cloud: { kind: atmosphere, baseUrl: embedded }',
      'resources:',
      '  as1:',
      '    provider: cloud',
      '    bootTimeoutMs: soon',
    ].join('\n'));
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^line 6: resources\.as1\.bootTimeoutMs: .*number.* \(got "soon"\)$/);
  });

  it('refuses unknown fields, unknown providers and bad ids', () => {
    const problems = problemsOf([
      'listen: { port: 8080, prot: 1 }',
      'resources:',
      '  "bad id": { provider: nowhere }',
    ].join('\n'));
    const text = problems.join('\n');
    assert.match(text, /^line 1: listen\.prot: unknown field \(did you mean "port"\?\)$/m);
    assert.match(text, /resources\.bad id/);
  });

  it('puts an unknown key at its own line and suggests the closest known key, inside unions and records too', () => {
    const problems = problemsOf([
      'providers:',
      '  c:',
      '    kind: atmosphere',
      '    baseUrl: embedded',
      '    requestTimeotMs: 5',
      'resourceDefaults:',
      '  bootTimeoutMs: 1000',
      '  idleStopMS: 5',
      '  zzzzqqq: 1',
      'resources:',
      '  a:',
      '    provider: c',
      '    access: { public: true }',
      '    waiting: { browserPag: true }',
    ].join('\n'));
    assert.deepEqual(problems.toSorted(), [
      'line 14: resources.a.waiting.browserPag: unknown field (did you mean "browserPage"?)',
      'line 5: providers.c.requestTimeotMs: unknown field (did you mean "requestTimeoutMs"?)',
      'line 8: resourceDefaults.idleStopMS: unknown field (did you mean "idleStopMs"?)',
      'line 9: resourceDefaults.zzzzqqq: unknown field',
    ]);
  });

  it('refers unknown provider names back to the field', () => {
    const problems = problemsOf('resources:\n  a: { provider: nowhere }\n');
    assert.match(problems.join('\n'), /resources\.a\.provider: names provider "nowhere"/);
  });

  it('reports YAML syntax errors with a line', () => {
    const problems = problemsOf('resources:\n  a: { provider: x\n');
    assert.match(problems[0]!, /^line \d+/);
  });

  it('merges resourceDefaults under each resource', () => {
    const cfg = parseConfig([
      'providers: { c: { kind: atmosphere, baseUrl: "http://127.0.0.1:5000" } }',
      'resourceDefaults: { bootTimeoutMs: 1234, sharing: groups, access: { public: true } }',
      'resources:',
      '  a: { provider: c }',
      '  b: { provider: c, bootTimeoutMs: 99, holdTimeoutMs: 50 }',
    ].join('\n'));
    const [a, b] = effectiveResources(cfg);
    assert.equal(a!.bootTimeoutMs, 1234);
    assert.equal(a!.holdTimeoutMs, 1234);
    assert.equal(a!.sharing, 'groups');
    assert.equal(b!.bootTimeoutMs, 99);
    assert.equal(b!.holdTimeoutMs, 50);
  });

  it('expands status classes', () => {
    const s = expandStatuses(['2xx', 404]);
    assert.equal(s.length, 101);
    assert.ok(s.includes(299) && s.includes(404) && !s.includes(300));
  });

  it('check-config exits 0 for a valid file and 1 with the problems for an invalid one', async (t: TestContext) => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-config-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const good = join(dir, 'good.yaml');
    const bad = join(dir, 'bad.yaml');
    writeFileSync(good, 'providers: { c: { kind: atmosphere, baseUrl: embedded } }\nmockCloud: { enabled: true }\nresources: { a: { provider: c, access: { public: true } } }\n');
    writeFileSync(bad, 'resources: { a: { provider: c, idleStopMs: -1 } }\n');
    const ok = await run(process.execPath, [cli, 'check-config', good]);
    assert.match(ok.stdout, /valid/);
    const failed = await run(process.execPath, [cli, 'check-config', bad]).then(() => undefined, (e: unknown) => e as { code: number; stderr: string });
    assert.ok(failed, 'expected a non-zero exit');
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /resources\.a\.idleStopMs/);
    // `--config FILE`, as `start` takes it, works too; an option is never read as a file name.
    assert.match((await run(process.execPath, [cli, 'check-config', '--config', good])).stdout, /valid/);
    const help = await run(process.execPath, [cli, 'check-config', '--help']);
    assert.match(help.stdout, /smart-proxy check-config FILE \| --config FILE/);
    for (const args of [['--bogus'], [good, bad], ['--config', good, bad]]) {
      const usage = await run(process.execPath, [cli, 'check-config', ...args]).then(() => undefined, (e: unknown) => e as { code: number; stderr: string });
      assert.equal(usage?.code, 2, `check-config ${args.join(' ')} is a bad command line`);
      assert.match(usage.stderr, /usage: smart-proxy/);
      assert.doesNotMatch(usage.stderr, /cannot read the file/);
    }
  });

  it('every command prints its own usage for --help, --version the version, and an unknown option exits 2', async () => {
    for (const command of ['start', 'demo', 'hash-password', 'mock-cloud', 'healthcheck', 'nginx-config', 'haproxy-config']) {
      const help = await run(process.execPath, [cli, command, '--help']);
      assert.match(help.stdout, new RegExp(`^usage:\\n  smart-proxy ${command}`), command);
    }
    const version = await run(process.execPath, [cli, '--version']);
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(version.stdout, `smart-proxy ${pkg.version} (Node.js ${process.version})\n`);
    const bad = await run(process.execPath, [cli, 'nginx-config', '--no-such-option']).then(() => undefined, (e: unknown) => e as { code: number; stderr: string });
    assert.equal(bad?.code, 2);
    assert.match(bad.stderr, /Unknown option '--no-such-option'[\s\S]*usage: smart-proxy/);
  });
});
