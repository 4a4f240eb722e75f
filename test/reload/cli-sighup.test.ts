/**
 * The shipped entry point, as an operator runs it: `smart-proxy start --config FILE` in a
 * child process (through package.json's `bin`, as `npm exec`/`npx` would), reloaded with a
 * real SIGHUP, with the access log on.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startEchoServer } from '../helpers/echo-server.ts';
import '../helpers/test-caches.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

test('SIGHUP reloads the config file of `smart-proxy start`; a bad file is refused and the proxy keeps serving', async () => {
  const backend = await startEchoServer();
  const dir = await mkdtemp(join(tmpdir(), 'sp-hup-'));
  const file = join(dir, 'config.yaml');
  const accessLog = join(dir, 'access.log');
  const config = (resources: string[]): string => JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    state: { kind: 'memory' },
    shutdown: { drainTimeoutMs: 2_000 },
    accessLog: { enabled: true, format: 'combined', path: accessLog },
    resourceDefaults: { access: { public: true } },
    resources: Object.fromEntries(resources.map((id) => [id, { provider: { kind: 'static', endpoint: backend.url } }])),
  });
  await writeFile(file, config(['one']));
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  const bin = pkg.bin['smart-proxy'];
  assert.ok(bin !== undefined);
  const child = spawn(process.execPath, [join(root, bin), 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = once(child, 'exit');
  const waitOutput = async (what: () => RegExpMatchArray | null, label: string): Promise<RegExpMatchArray> => {
    for (;;) {
      const m = what();
      if (m !== null) return m;
      const next = await Promise.race([once(child.stdout, 'data').then(() => 'data'), once(child.stderr, 'data').then(() => 'data'), exited.then(() => 'exit')]);
      if (next === 'exit') throw new Error(`proxy exited before ${label}:\n${out}\n${err}`);
    }
  };
  try {
    const m = await waitOutput(() => out.match(/"url":"(http:\/\/127\.0\.0\.1:\d+)"/), 'listening');
    const url = m[1] ?? '';
    const get = async (id: string): Promise<number> => {
      const r = await fetch(`${url}/smart_proxy/${id}/-/path?q=1`, { headers: { 'user-agent': 'hup-test' } });
      await r.text();
      return r.status;
    };
    assert.equal(await get('one'), 200);
    assert.equal(await get('two'), 404);

    await writeFile(file, config(['one', 'two']));
    child.kill('SIGHUP');
    await waitOutput(() => err.match(/SIGHUP: configuration reloaded.*"added":\["two"\]/), 'the reload');
    assert.equal(await get('two'), 200);

    await writeFile(file, '{ "resources": 12 }');
    child.kill('SIGHUP');
    await waitOutput(() => err.match(/SIGHUP: configuration refused[^\n]*\n[^\n]*invalid configuration/), 'the refusal');
    assert.equal(await get('two'), 200);

    // Valid, but a secret's environment variable is unset: refused, naming the file and the path.
    const unset = 'SP_TEST_SURELY_UNSET_SECRET';
    assert.equal(process.env[unset], undefined);
    const withSecret = JSON.parse(config(['one', 'two'])) as { providers?: unknown; resources: Record<string, unknown> };
    withSecret.providers = { nova: {
      kind: 'http', baseUrl: 'http://127.0.0.1:9', credentials: { token: { env: unset } },
      start: { request: { method: 'POST', url: '/s/{serviceId}' } },
      inspect: [{ request: { url: '/s/{serviceId}' }, state: { pointer: '/s', values: { ACTIVE: 'running' } }, endpoint: 'http://{/a}:8080' }],
      stop: { request: { method: 'POST', url: '/s/{serviceId}' } },
    } };
    withSecret.resources.three = { provider: 'nova' };
    await writeFile(file, JSON.stringify(withSecret));
    const from = err.length;
    child.kill('SIGHUP');
    const refused = await waitOutput(() => err.slice(from).match(/SIGHUP: configuration refused[^\n]*\n([^\n]*)\n([^\n]*)\n/), 'the second refusal');
    assert.equal(refused[1], `invalid configuration in ${file}:`);
    assert.equal(refused[2], `  - providers.nova.credentials.token: environment variable ${unset} is not set`);
    assert.equal(await get('two'), 200);

    child.kill('SIGTERM');
    const [code] = await exited as [number | null];
    assert.equal(code, 0, `${out}\n${err}`);
    // One combined-format line per request, flushed at shutdown.
    const lines = (await readFile(accessLog, 'utf8')).trim().split('\n');
    assert.equal(lines.length, 5);
    assert.match(lines[0] ?? '', /^127\.0\.0\.1 - - \[\d{2}\/\w{3}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET \/smart_proxy\/one\/-\/path\?q=1 HTTP\/1\.1" 200 \d+ "-" "hup-test"$/);
    assert.match(lines[1] ?? '', /" 404 /);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('`npm exec smart-proxy` (what npx runs) reaches the CLI through package.json bin', async () => {
  // The bin's `#!/usr/bin/env node` must find this Node (24), not an older one on PATH.
  const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` };
  const out = await new Promise<string>((resolve, reject) => {
    execFile('npm', ['exec', '--offline', 'smart-proxy', '--', 'check-config', 'examples/demo.yaml'], { cwd: root, env, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
  assert.match(out, /examples\/demo\.yaml: valid/);
});

test('a SIGTERM and a SIGHUP as soon as the proxy listens (start-up not over: the admin listener still to come) shut it down gracefully, not by Node\'s default', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sp-early-'));
  const file = join(dir, 'config.yaml');
  await writeFile(file, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    state: { kind: 'memory' },
    shutdown: { drainTimeoutMs: 2_000 },
    // The admin listener is started after the proxy's: its code is loaded then, which leaves
    // a window between "proxy listening" and the end of start-up.
    admin: { listen: { host: '127.0.0.1', port: 0 }, anonymousFromLoopback: true },
    resources: { one: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:9' }, access: { public: true } } },
  }));
  const child = spawn(process.execPath, [join(root, 'bin/smart-proxy.js'), 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = once(child, 'exit');
  try {
    child.stdout.on('data', (d: Buffer) => {
      const first = !out.includes('proxy listening');
      out += d.toString();
      if (first && out.includes('proxy listening')) {
        child.kill('SIGHUP');
        child.kill('SIGTERM');
      }
    });
    const [code, signal] = await exited as [number | null, NodeJS.Signals | null];
    assert.equal(signal, null, `killed by ${signal ?? ''}:\n${out}\n${err}`);
    assert.equal(code, 0, `${out}\n${err}`);
    assert.match(err, /SIGTERM: draining and shutting down/);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
});
