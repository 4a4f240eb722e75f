/**
 * `smart-proxy demo` as a newcomer runs it (the command behind `npm start`), as a real child
 * process: the embedded mock cloud on a free port, the banner's commands run as printed by a
 * real shell, a port clash named with the flag that moves it, and a quick graceful exit.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { exitOf, requireBinary } from '../helpers/system.ts';
import '../helpers/test-caches.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));

function startDemo(t: TestContext, args: string[]) {
  const child = spawn(process.execPath, [cli, 'demo', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const done = exitOf(child);
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await done;
  });
  const banner = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', () => { if (out.includes('Ctrl-C stops')) resolve(out); });
    void done.then(({ code }) => reject(new Error(`demo exited (${code}) before its banner:\n${out}\n${err}`)));
  });
  banner.catch(() => undefined); // awaited only by tests that expect a banner
  return { child, done, banner, stderr: () => err };
}

async function occupied(t: TestContext): Promise<number> {
  const server: Server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as { port: number }).port;
}

function sh(command: string): Promise<{ stdout: string; code: number }> {
  return new Promise((resolve) => {
    execFile(requireBinary('sh', 'dash'), ['-c', command], { timeout: 60_000 }, (error, stdout) => {
      resolve({ stdout, code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1 });
    });
  });
}

describe('smart-proxy demo', () => {
  it('puts the mock cloud on a free port, prints commands that work as pasted, and exits quickly on Ctrl-C', async (t) => {
    requireBinary('curl', 'curl');
    const demo = startDemo(t, []);
    const banner = await demo.banner;
    const cloud = /mock cloud: (http:\/\/127\.0\.0\.1:(\d+))/.exec(banner);
    assert.ok(cloud, banner);
    assert.notEqual(cloud[2], '5000', 'not the fixed port of old');
    assert.equal((await fetch(`${cloud[1]}/`).catch(() => undefined)) !== undefined, true, 'the printed mock cloud answers');
    const commands = banner.split('\n').filter((l) => l.trimStart().startsWith('curl ')).map((l) => l.trim().replace(/\s+#.*$/, ''));
    assert.equal(commands.length, 8, banner);
    for (const c of commands) assert.match(c, / 'http:\/\/[^']+'$/, `URL quoted for every shell: ${c}`);
    // The first two as printed, through a real shell: a public wake (the query survives) and a
    // protected one with alice's token.
    const pub = await sh(`${commands[0]} -sS --max-time 60`);
    assert.match(pub.stdout, /^HTTP\/1\.1 200/, pub.stdout);
    assert.match(pub.stdout, /\/hi\?x=1/);
    const alice = await sh(`${commands[1]} -sS --max-time 60`);
    assert.match(alice.stdout, /^HTTP\/1\.1 200/, alice.stdout);
    assert.match(alice.stdout, /"x-forwarded-user":"alice"/);
    // Graceful exit, the demo's VMs stopped on the way (stopInstances): a few hundred ms on an
    // idle machine, bounded loosely here because the test machine is shared.
    const t0 = performance.now();
    demo.child.kill('SIGINT');
    const { code } = await demo.done;
    const exitMs = performance.now() - t0;
    assert.equal(code, 0, demo.stderr());
    t.diagnostic(`graceful exit after SIGINT: ${Math.round(exitMs)} ms`);
    assert.ok(exitMs < 5_000, `exit took ${Math.round(exitMs)} ms`);
  });

  it('a taken --mock-port fails at once, naming the port and the flag', async (t) => {
    const port = await occupied(t);
    const demo = startDemo(t, ['--mock-port', String(port)]);
    const { code } = await demo.done;
    assert.equal(code, 1);
    assert.match(demo.stderr(), new RegExp(`port 127\\.0\\.0\\.1:${port} is already in use \\(the embedded mock cloud, mockCloud\\.port\\): pick another with --mock-port N`));
  });

  it('a taken --port fails at once, naming the port and the flag', async (t) => {
    const port = await occupied(t);
    const child = spawn(process.execPath, [cli, 'demo', '--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const { code } = await exitOf(child);
    assert.equal(code, 1);
    assert.match(err, new RegExp(`port 127\\.0\\.0\\.1:${port} is already in use \\(the proxy, listen\\.port\\): pick another with --port N`));
  });

  it('a bad --mock-port is a config error', async (t) => {
    const demo = startDemo(t, ['--mock-port', 'x']);
    assert.equal((await demo.done).code, 1);
    assert.match(demo.stderr(), /--mock-port.*mockCloud\.port: expected an integer 0-65535, got "x"/s);
  });
});
