/**
 * The Containerfile, built with Podman and run as people run it: read-only root filesystem,
 * a state volume, the demo in one `podman run`, answering its health check as a non-root
 * user. No registry is reachable here, so the base image is a local stand-in for the public
 * Node 24 image (scripts/podman/podman.sh node-base) and the production dependencies come
 * from the build context (DEPS=context), pruned from this work tree's node_modules offline.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from '../helpers/free-port.ts';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));
const podmanSh = join(root, 'scripts/podman/podman.sh');
const NODE_IMAGE = 'localhost/smart-proxy/node24-base:latest';
const IMAGE = 'localhost/smart-proxy/app-under-test:latest';


async function podman(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run('bash', [podmanSh, 'podman', ...args], { maxBuffer: 64 * 1024 * 1024, timeout: 540_000 });
}

test('the image builds with Podman, runs the demo read-only as non-root, and answers its health check', { timeout: 900_000 }, async () => {
  // Fails fast, naming the Debian packages, when podman, runc, slirp4netns or busybox-static is missing.
  await run('bash', [podmanSh, 'node-base'], { env: { ...process.env, SMART_PROXY_NODE: process.execPath }, timeout: 300_000 })
    .catch((err: { stderr?: string; message: string }) => assert.fail(`podman.sh node-base failed: ${err.stderr ?? err.message}`));

  const context = await mkdtemp(join(tmpdir(), 'sp-image-'));
  const name = `sp-test-${process.pid}`;
  const volume = `${name}-state`;
  try {
    for (const p of ['package.json', 'package-lock.json', 'Containerfile', 'bin', 'src', 'examples']) await cp(join(root, p), join(context, p), { recursive: true });
    await cp(join(root, 'node_modules'), join(context, 'node_modules'), { recursive: true });
    await run('npm', ['prune', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--offline'], { cwd: context });

    await podman('build', '--format', 'docker', '--build-arg', `NODE_IMAGE=${NODE_IMAGE}`, '--build-arg', 'DEPS=context', '-t', IMAGE, '-f', join(context, 'Containerfile'), context);
    type Health = { Test?: string[] } | undefined;
    const inspect = JSON.parse((await podman('image', 'inspect', IMAGE)).stdout) as Array<{ Healthcheck?: Health; Config: { User?: string; Healthcheck?: Health; Volumes?: Record<string, unknown> } }>;
    const cfg = inspect[0]?.Config;
    assert.equal(cfg?.User, '1000:1000');
    // Podman shows the health check beside Config (Docker: inside it).
    assert.deepEqual((inspect[0]?.Healthcheck ?? cfg?.Healthcheck)?.Test, ['CMD', 'node', 'src/healthcheck.js']);
    assert.ok(cfg?.Volumes !== undefined && '/var/lib/smart-proxy' in cfg.Volumes);

    // The demo in one command: read-only root, state in a volume.
    const port = await freePort();
    await podman('run', '-d', '--name', name, '--read-only', '-v', `${volume}:/var/lib/smart-proxy`, '-p', `127.0.0.1:${port}:8080`, IMAGE);
    // Wait for the proxy's own "listening" log line (an event), bounded; then the image's
    // health check must pass at its first run.
    const follow = spawn('bash', [podmanSh, 'podman', 'logs', '-f', name], { stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = '';
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no "proxy listening" within 180 s:\n${seen}`)), 180_000);
        const onData = (d: Buffer): void => {
          seen += d.toString();
          if (seen.includes('proxy listening')) {
            clearTimeout(timer);
            resolve();
          }
        };
        follow.stdout.on('data', onData);
        follow.stderr.on('data', onData);
        follow.once('exit', () => { clearTimeout(timer); reject(new Error(`the container stopped:\n${seen}`)); });
      });
    } finally {
      follow.kill();
    }
    await podman('healthcheck', 'run', name).catch((err: { stderr?: string; message: string }) => assert.fail(`health check failed: ${err.stderr ?? err.message}\n${seen}`));
    const logs = { stdout: seen, stderr: '' };
    assert.equal((await podman('exec', name, 'id', '-u')).stdout.trim(), '1000');
    // Reachable from the host through the published port (it listens on 0.0.0.0 inside).
    // The demo has identities, so an anonymous caller of an unknown resource is challenged.
    const res = await fetch(`http://127.0.0.1:${port}/smart_proxy/nope/-/`);
    assert.equal(res.status, 401);
    await res.text();
    // State is written to the volume (SQLite), not the read-only root.
    const files = (await podman('exec', name, 'ls', '/var/lib/smart-proxy')).stdout;
    assert.match(files, /smart-proxy\.sqlite/);
    // SIGTERM drains and exits 0.
    await podman('stop', '--time', '30', name);
    const code = (await podman('inspect', '--format', '{{.State.ExitCode}}', name)).stdout.trim();
    assert.equal(code, '0', `${logs.stdout}\n${logs.stderr}`);
  } finally {
    await podman('rm', '-f', name).catch(() => undefined);
    await podman('volume', 'rm', '-f', volume).catch(() => undefined);
    await rm(context, { recursive: true, force: true });
  }
});
