/**
 * A real Podman API service for the docker provider's tests, started by the test as a child
 * process (scripts/podman/podman.sh serve) on a socket in a fresh temp dir, with the private
 * storage and the local busybox-httpd image the script sets up. Never skipped: without podman
 * the start rejects with what to install.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, watch } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { labelKeys } from '../../src/providers/docker/docker-provider.ts';
import { requireBinary } from '../helpers/system.ts';

export const testImage = 'localhost/smart-proxy/busybox-httpd:latest';
const script = fileURLToPath(new URL('../../scripts/podman/podman.sh', import.meta.url));

export interface PodmanService {
  readonly socketPath: string;
  /** A raw call to the engine API (Docker-compatible or libpod paths). */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }>;
  /** Containers (any state) carrying the owner label. */
  containersOf(owner: string): Promise<Array<{ Id: string; Names: string[]; State: string; Labels: Record<string, string> }>>;
  /** Force-removes every container carrying the owner label. */
  removeAll(owner: string): Promise<void>;
  /** Runs a container's healthcheck once, as Podman's timer would (there is none without systemd). */
  runHealthcheck(idOrName: string): Promise<string>;
  close(): Promise<void>;
}

/** A fresh owner label value, so each test sees and cleans only its own containers. */
export function freshOwner(): string {
  return `sp-test-${randomUUID().slice(0, 8)}`;
}

export async function startPodmanService(): Promise<PodmanService> {
  requireBinary('podman', 'podman');
  const dir = await mkdtemp(join(tmpdir(), 'sp-podman-'));
  const socketPath = join(dir, 'podman.sock');
  const child = spawn('bash', [script, 'serve', socketPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-4000); });

  const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request({
        socketPath, method, path,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        signal: AbortSignal.timeout(30_000),
      }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => { text += d; }).on('end', () => {
          let json: unknown = text;
          try { json = text === '' ? undefined : JSON.parse(text); } catch { /* keep the text */ }
          resolve({ status: res.statusCode ?? 0, json });
        });
      });
      req.on('error', reject);
      req.end(payload);
    });

  try {
    await untilListening(child, dir, socketPath, api, () => stderr);
  } catch (err) {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const containersOf = async (owner: string) => {
    const filters = encodeURIComponent(JSON.stringify({ label: [`${labelKeys.owner}=${owner}`] }));
    const { status, json } = await api('GET', `/containers/json?all=true&filters=${filters}`);
    if (status !== 200) throw new Error(`list containers: ${status} ${JSON.stringify(json)}`);
    return json as Array<{ Id: string; Names: string[]; State: string; Labels: Record<string, string> }>;
  };

  return {
    socketPath,
    api,
    containersOf,
    async removeAll(owner) {
      for (const c of await containersOf(owner)) {
        const { status } = await api('DELETE', `/containers/${c.Id}?force=true`);
        if (status !== 204 && status !== 404) throw new Error(`remove ${c.Id}: ${status}`);
      }
    },
    async runHealthcheck(idOrName) {
      const { status, json } = await api('GET', `/v4.0.0/libpod/containers/${idOrName}/healthcheck`);
      if (status !== 200) throw new Error(`healthcheck ${idOrName}: ${status} ${JSON.stringify(json)}`);
      return (json as { Status: string }).Status;
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Awaits the socket file (fs.watch, no polling loop), then a `_ping`; fails with stderr if the child exits. */
async function untilListening(
  child: ChildProcess, dir: string, socketPath: string,
  api: PodmanService['api'], stderr: () => string,
): Promise<void> {
  const exited = new Promise<never>((_resolve, reject) => {
    child.once('exit', (code) => reject(new Error(
      code === 2
        ? `podman is not usable here: ${stderr().trim()}`
        : `podman service exited with ${code}: ${stderr().trim()}\nIt needs the Debian packages podman runc slirp4netns busybox-static (scripts/install-system-deps.sh).`,
    )));
    child.once('error', (err) => reject(new Error(`cannot run bash ${script}: ${err.message}`)));
  });
  const watcher = watch(dir);
  try {
    const created = new Promise<void>((resolve) => {
      watcher.on('change', (_event, name) => { if (name === 'podman.sock') resolve(); });
      if (existsSync(socketPath)) resolve();
    });
    const deadline = AbortSignal.timeout(60_000);
    const timedOut = new Promise<never>((_resolve, reject) => deadline.addEventListener('abort', () => reject(new Error(`podman service did not listen within 60 s: ${stderr().trim()}`)), { once: true }));
    await Promise.race([created, exited, timedOut]);
    // The socket file exists; the service may still be a moment from accepting.
    for (;;) {
      const ok = await api('GET', '/_ping').then((r) => r.status === 200, () => false);
      if (ok) return;
      await Promise.race([new Promise((r) => setImmediate(r)), exited, timedOut]);
    }
  } finally {
    watcher.close();
    void exited.catch(() => undefined);
  }
}
