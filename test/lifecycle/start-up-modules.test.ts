/**
 * A start-up loads the code its configuration needs, and not the rest: with a plain config the
 * CLI never loads the admin listener, OIDC sign-in, the mock cloud, front mode, Redis, the
 * docker and qemu providers, the full YAML parser, or jose (each is ~20-150 ms of start-up); a config
 * that uses some of them
 * gets them, and starts. Runs the real CLI with a module-logging hook.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../../src/config/load.ts';
import { startApp } from '../../src/main.ts';
import { exitOf } from '../helpers/system.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));
const hook = fileURLToPath(new URL('../fixtures/module-log-hook.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sp-start-modules-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** The code loaded only on demand, by the part of src/ or the package it is in. */
const optional = {
  admin: '/src/admin/admin-server.ts',
  oidc: '/src/access/oidc/',
  mockCloud: '/src/mock-cloud/',
  front: '/src/front/front-mode.ts',
  redis: '/node_modules/ioredis/',
  docker: '/node_modules/dockerode/',
  qemu: '/src/providers/qemu/',
  // The full YAML parser: a plain text is read by the fast path (src/config/plain-yaml.ts).
  yaml: '/node_modules/yaml/dist/',
  // JWT verification: only with a JWT identity (src/access/jwt-verifier.ts).
  jose: '/node_modules/jose/',
};

/**
 * Starts the CLI on `yaml` until it logs `until` (the last start-up step its config has),
 * stops it; the modules it loaded. SIGTERM may come a moment before the CLI handles it (a
 * plain kill then): the log is written as modules load, so it is complete either way.
 */
async function modulesOfStart(name: string, yaml: string, until: string): Promise<string[]> {
  const config = join(root, `${name}.yaml`);
  const log = join(root, `${name}.modules`);
  writeFileSync(config, yaml);
  const child = spawn(process.execPath, ['--import', hook, cli, 'start', '--config', config], {
    env: { ...process.env, MODULE_LOG: log, SMART_PROXY_COMPILE_CACHE: 'off', SMART_PROXY_CONFIG_CACHE: 'off' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = exitOf(child);
  let out = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "${until}" within 30 s:\n${out}`)), 30_000);
      const onData = (d: Buffer): void => {
        out += d.toString();
        if (out.includes(`"${until}"`)) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`the CLI exited (${code ?? signal}) before listening:\n${out}`));
      });
    });
    child.kill('SIGTERM');
    const end = await exited;
    assert.ok(end.code === 0 || end.signal === 'SIGTERM', out);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  }
  return readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' ')[0]!);
}

function loadedParts(urls: readonly string[]): string[] {
  return Object.entries(optional).filter(([, part]) => urls.some((u) => u.includes(part))).map(([name]) => name);
}

const base = 'listen: { host: 127.0.0.1, port: 0 }\nlog: { level: info }\nstate: { kind: memory }\nresourceDefaults: { access: { public: true } }\n';

void describe('start-up modules', () => {
  void it('a plain config loads none of the optional parts', async () => {
    const urls = await modulesOfStart('plain', `${base}resources:\n  a:\n    provider: { kind: static, endpoint: "http://127.0.0.1:9" }\n`, 'proxy listening');
    assert.ok(urls.some((u) => u.endsWith('/src/main.ts')), 'the app itself was loaded');
    assert.deepEqual(loadedParts(urls), []);
    // undici and prom-client by the parts the proxy uses (src/proxy/undici-parts.ts,
    // src/metrics/prom-parts.ts), never by their index, which loads ~200M instructions more each.
    assert.ok(urls.some((u) => u.endsWith('/node_modules/undici/lib/dispatcher/pool.js')), 'the pool was loaded');
    assert.ok(urls.some((u) => u.endsWith('/node_modules/prom-client/lib/registry.js')), 'the registry was loaded');
    assert.deepEqual(urls.filter((u) => /\/node_modules\/(undici|prom-client)\/index\.js$/.test(u)), []);
  });

  void it('the parts of undici and prom-client loaded by their own files are the very ones their index exports', async () => {
    const undici = await import('undici');
    const promClient = await import('prom-client');
    const undiciParts = await import('../../src/proxy/undici-parts.ts');
    const promParts = await import('../../src/metrics/prom-parts.ts');
    assert.equal(undiciParts.Pool, undici.Pool);
    assert.equal(undiciParts.undiciErrors, undici.errors);
    assert.deepEqual([promParts.Registry, promParts.Counter, promParts.Gauge, promParts.Histogram], [promClient.Registry, promClient.Counter, promClient.Gauge, promClient.Histogram]);
  });

  void it('loading the app\'s code does not load Node\'s bundled undici (fetch, WebSocket): no ESM import of node:http\'s values', () => {
    // An ESM import of node:http reads every export, WebSocket's lazy getter included
    // (src/proxy/http-modules.ts); the module log cannot see Node's internal modules, this can.
    const script = `await import(${JSON.stringify(new URL('../../src/main.ts', import.meta.url).href)}); process.stdout.write(JSON.stringify(process.moduleLoadList.filter((m) => m.includes('deps/undici'))));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.deepEqual(JSON.parse(out), []);
  });

  void it('a config with an admin listener, the mock cloud, a docker provider, an anchor and a JWT identity loads those, and starts', async () => {
    // The anchor (&d) takes the file off the plain-YAML fast path: the full parser is loaded.
    const urls = await modulesOfStart('some', `${base.replace('resourceDefaults:', 'resourceDefaults: &d')}admin: { listen: { host: 127.0.0.1, port: 0 }, anonymousFromLoopback: true }\nmockCloud: { enabled: true, port: 0 }\nidentities: [{ kind: jwt, secret: "a-secret-of-at-least-32-characters!!", issuer: "https://issuer.example", audience: proxy, algorithms: [HS256] }]\nresources:\n  c:\n    provider: { kind: docker, socketPath: ${join(root, 'no-engine.sock')}, containerPort: 80, existing: { name: c } }\n`, 'admin listening');
    assert.deepEqual(loadedParts(urls), ['admin', 'mockCloud', 'docker', 'yaml', 'jose']);
  });

  void it('a reload that adds a docker resource loads the docker provider then', async () => {
    const plain = `${base}resources:\n  a:\n    provider: { kind: static, endpoint: "http://127.0.0.1:9" }\n`;
    const withDocker = `${plain}  c:\n    provider: { kind: docker, socketPath: ${join(root, 'no-engine.sock')}, containerPort: 80, existing: { name: c } }\n`;
    let next = plain;
    const app = await startApp(parseConfig(plain.replace('level: info', 'level: warn')), { loadConfig: async () => parseConfig(next.replace('level: info', 'level: warn')) });
    try {
      next = withDocker;
      const result = await app.reload();
      assert.ok(result.ok, result.ok ? '' : result.errors);
      assert.deepEqual(result.summary.added, ['c']);
    } finally {
      await app.close();
    }
  });
});
