/**
 * The docker provider without an engine: the mapping from container inspect answers to the
 * core's states, the config schema, and how engine failures become ProviderErrors (against a
 * small HTTP server on a Unix socket that answers like a sick engine).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { configSchema } from '../../src/config/schema.ts';
import { ProviderError } from '../../src/core/errors.ts';
import type { InstanceRef } from '../../src/core/ports.ts';
import { endpointOf, readContainerFacts, toInspectResult, type EndpointRule, type HealthRule } from '../../src/providers/docker/container-state.ts';
import { containerNameFor, createDockerProvider, type DockerProviderOptions } from '../../src/providers/docker/docker-provider.ts';

const published: EndpointRule = { mode: 'published', containerPort: 80, hostIp: '127.0.0.1', scheme: 'http' };
const useHealth: HealthRule = { use: true, unhealthyAs: 'failed' };

/** A container inspect answer shaped like Docker's / Podman's, with overrides. */
function inspectAnswer(state: Record<string, unknown>, extra: { ports?: unknown; networks?: unknown } = {}): unknown {
  return {
    Id: 'abc123',
    Name: '/web',
    State: { Status: 'running', Running: true, ExitCode: 0, Error: '', OOMKilled: false, ...state },
    Config: { Labels: { 'io.smart-proxy.resource': 'web' } },
    NetworkSettings: {
      Ports: extra.ports ?? { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: '41000' }] },
      Networks: extra.networks ?? {},
      IPAddress: '',
    },
  };
}

const view = (raw: unknown, opts: { rule?: EndpointRule; health?: HealthRule; ours?: boolean } = {}) =>
  toInspectResult(readContainerFacts(raw), opts.rule ?? published, opts.health ?? useHealth, opts.ours ?? false);

void describe('docker container state → provider state', () => {
  void it('running without a healthcheck is running, at the published port', () => {
    assert.deepEqual(view(inspectAnswer({})), { state: 'running', endpoint: 'http://127.0.0.1:41000', handle: 'abc123' });
    // Docker reports "none" when the image has no healthcheck.
    assert.equal(view(inspectAnswer({ Health: { Status: 'none' } })).state, 'running');
  });

  void it('the healthcheck gates running: starting, healthy, unhealthy per rule, or ignored', () => {
    assert.equal(view(inspectAnswer({ Health: { Status: 'starting', Log: null } })).state, 'starting');
    assert.equal(view(inspectAnswer({ Health: { Status: 'healthy' } })).state, 'running');
    const sick = inspectAnswer({ Health: { Status: 'unhealthy', Log: [{ ExitCode: 1, Output: 'connection refused\n' }] } });
    const failed = view(sick);
    assert.equal(failed.state, 'failed');
    assert.match(failed.reason ?? '', /unhealthy: connection refused$/);
    assert.equal(view(sick, { health: { use: true, unhealthyAs: 'starting' } }).state, 'starting');
    assert.equal(view(sick, { health: { use: false, unhealthyAs: 'failed' } }).state, 'running');
  });

  void it('an exited container is stopped, unless we started it (a crash) or the engine recorded an error', () => {
    const exited = inspectAnswer({ Status: 'exited', Running: false, ExitCode: 137 });
    assert.equal(view(exited).state, 'stopped');
    const crashed = view(inspectAnswer({ Status: 'exited', Running: false, ExitCode: 3 }), { ours: true });
    assert.deepEqual([crashed.state, crashed.reason], ['failed', 'container web exited with code 3']);
    const oom = view(inspectAnswer({ Status: 'exited', ExitCode: 137, OOMKilled: true }), { ours: true });
    assert.match(oom.reason ?? '', /out of memory/);
    const badCmd = view(inspectAnswer({ Status: 'created', Error: 'executable file `nope` not found' }));
    assert.deepEqual([badCmd.state, badCmd.reason], ['failed', 'container web: executable file `nope` not found']);
    assert.equal(view(inspectAnswer({ Status: 'created' }), { ours: true }).state, 'stopped');
    assert.equal(view(inspectAnswer({ Status: 'configured' })).state, 'stopped');
    assert.equal(view(inspectAnswer({ Status: 'dead' })).state, 'failed');
  });

  void it('other engine states', () => {
    assert.equal(view(inspectAnswer({ Status: 'restarting' })).state, 'starting');
    assert.equal(view(inspectAnswer({ Status: 'paused' })).state, 'stopped');
    assert.equal(view(inspectAnswer({ Status: 'removing' })).state, 'stopping');
    const odd = view(inspectAnswer({ Status: 'levitating' }));
    assert.deepEqual([odd.state, odd.reason], ['failed', 'container web is in an unknown state "levitating"']);
  });

  void it('endpoint: wildcard bindings are reached through hostIp; IPv6 is bracketed; unpublished is a clear failure', () => {
    const facts = (ports: unknown) => readContainerFacts(inspectAnswer({}, { ports }));
    assert.deepEqual(endpointOf(facts({ '80/tcp': [{ HostIp: '0.0.0.0', HostPort: '8081' }, { HostIp: '::', HostPort: '8081' }] }), published), { url: 'http://127.0.0.1:8081' });
    assert.deepEqual(endpointOf(facts({ '80/tcp': [{ HostIp: '', HostPort: '8082' }] }), published), { url: 'http://127.0.0.1:8082' });
    assert.deepEqual(endpointOf(facts({ '80/tcp': [{ HostIp: '::1', HostPort: '8083' }] }), published), { url: 'http://[::1]:8083' });
    assert.deepEqual(endpointOf(facts({ '80/tcp': [{ HostIp: '0.0.0.0', HostPort: '8084' }] }), { ...published, hostIp: '::1', scheme: 'https' }), { url: 'https://[::1]:8084' });
    // Docker writes null for a port that is exposed but not published.
    const unpublished = view(inspectAnswer({}, { ports: { '80/tcp': null, '443/tcp': [{ HostIp: '0.0.0.0', HostPort: '9443' }] } }));
    assert.deepEqual([unpublished.state, unpublished.reason], ['failed', 'container web: container port 80/tcp is not published on the host']);
  });

  void it('endpoint: network mode uses the named network, else the first address', () => {
    const networks = { front: { IPAddress: '' }, back: { IPAddress: '172.30.0.5' }, other: { IPAddress: '172.31.0.9' } };
    const rule: EndpointRule = { mode: 'network', containerPort: 8080, hostIp: '127.0.0.1', scheme: 'http' };
    const facts = readContainerFacts(inspectAnswer({}, { networks }));
    assert.deepEqual(endpointOf(facts, rule), { url: 'http://172.30.0.5:8080' });
    assert.deepEqual(endpointOf(facts, { ...rule, network: 'other' }), { url: 'http://172.31.0.9:8080' });
    assert.deepEqual(endpointOf(facts, { ...rule, network: 'front' }), { missing: 'the container has no address on network "front"' });
  });

  void it('a malformed inspect answer is a clear error, not a crash', () => {
    assert.throws(() => readContainerFacts(null), /no Id/);
    assert.throws(() => readContainerFacts('<html>'), /no Id/);
    // Odd field types degrade to empty values.
    const facts = readContainerFacts({ Id: 'x', State: 'weird', Config: { Labels: [1] }, NetworkSettings: { Ports: { '80/tcp': 'no' } } });
    assert.equal(facts.status, '');
    assert.equal(view({ Id: 'x', State: 'weird' }).state, 'failed');
  });
});

void describe('docker container names', () => {
  const ref = (resourceId: string, instanceKey: string) => ({ resourceId, instanceKey });
  void it('are deterministic, valid, and distinct per owner, resource and instance key', () => {
    const a = containerNameFor('sp-', 'me', ref('web', '*'));
    assert.equal(a, containerNameFor('sp-', 'me', ref('web', '*')));
    assert.match(a, /^sp-web-[0-9a-f]{12}$/);
    const others = [ref('web', 'g1'), ref('web~', '*'), ref('web_', '*')].map((r) => containerNameFor('sp-', 'me', r));
    assert.equal(new Set([a, ...others]).size, 4);
    assert.notEqual(containerNameFor('sp-', 'you', ref('web', '*')), a);
    for (const n of others) assert.match(n, /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/);
  });
});

void describe('docker provider config', () => {
  const base = { resources: { web: { provider: 'box' } } };
  const parse = (provider: Record<string, unknown>) => configSchema.safeParse({ ...base, providers: { box: { kind: 'docker', containerPort: 80, ...provider } } });

  void it('create mode with defaults', () => {
    const r = parse({ create: { image: 'localhost/app' } });
    assert.ok(r.success, JSON.stringify(r.error?.issues));
    const p = r.data.providers.box;
    assert.equal(p?.kind, 'docker');
    if (p?.kind !== 'docker') return;
    assert.equal(p.socketPath, '/var/run/docker.sock');
    assert.equal(p.endpoint, 'published');
    assert.equal(p.hostIp, '127.0.0.1');
    assert.equal(p.unhealthy, 'failed');
    assert.equal(p.create?.removeOnStop, false);
    assert.equal(p.create?.namePrefix, 'sp-');
  });

  void it('existing mode by name or labels', () => {
    assert.ok(parse({ existing: { name: '{resourceId}' } }).success);
    assert.ok(parse({ existing: { labels: { app: '{resourceId}' } } }).success);
  });

  void it('rejects: neither or both modes, both name and labels, a bad port or owner, unknown fields', () => {
    const messages = (p: Record<string, unknown>) => {
      const r = parse(p);
      assert.equal(r.success, false, JSON.stringify(p));
      return r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n');
    };
    assert.match(messages({}), /exactly one of existing or create/);
    assert.match(messages({ existing: { name: 'a' }, create: { image: 'x' } }), /exactly one of existing or create/);
    assert.match(messages({ existing: { name: 'a', labels: { a: 'b' } } }), /exactly one of name or labels/);
    assert.match(messages({ containerPort: 0, create: { image: 'x' } }), /containerPort/);
    assert.match(messages({ owner: 'bad owner', create: { image: 'x' } }), /owner/);
    assert.match(messages({ create: { image: 'x', pull: true } }), /pull/);
  });
});

void describe('docker provider against a sick engine', () => {
  const ref: InstanceRef = { resourceId: 'web', instanceKey: '*', groups: [] };
  // Generous by default (a loaded CI machine is slow); the no-answer test sets its own.
  const options = (socketPath: string, requestTimeoutMs = 5_000): DockerProviderOptions => ({
    socketPath, requestTimeoutMs, owner: 'unit',
    container: { mode: 'create', image: 'img', removeOnStop: false, namePrefix: 'sp-' },
    endpoint: published, health: useHealth, stopTimeoutS: 1,
  });

  /** An HTTP server on a Unix socket; `answer` decides each response (or never answers). */
  async function sickEngine(answer: (res: ServerResponse, path: string) => void) {
    const dir = await mkdtemp(join(tmpdir(), 'sp-sick-'));
    const socketPath = join(dir, 'engine.sock');
    const server = createServer((req, res) => answer(res, req.url ?? ''));
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    return {
      socketPath,
      async close() {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
        await rm(dir, { recursive: true, force: true });
      },
    };
  }

  const json = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };

  void it('no engine at the socket: retryable, and says where it looked', async () => {
    const provider = createDockerProvider(options('/nonexistent/docker.sock'));
    const err = await provider.inspect(ref, AbortSignal.timeout(5000)).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError, String(err));
    assert.equal(err.retryable, true);
    assert.match(err.message, /cannot reach the engine: ENOENT \(is the engine running at \/nonexistent\/docker.sock\?\)/);
  });

  void it('the configured socket wins over DOCKER_HOST and DOCKER_TLS_VERIFY', async (t) => {
    const engine = await sickEngine((res) => json(res, 404, { message: 'no such container' }));
    t.after(() => engine.close());
    const saved = { host: process.env.DOCKER_HOST, tls: process.env.DOCKER_TLS_VERIFY };
    process.env.DOCKER_HOST = 'tcp://127.0.0.1:1';
    process.env.DOCKER_TLS_VERIFY = '1';
    t.after(() => {
      for (const [k, v] of [['DOCKER_HOST', saved.host], ['DOCKER_TLS_VERIFY', saved.tls]] as const) {
        if (v === undefined) delete process.env[k]; else process.env[k] = v;
      }
    });
    const provider = createDockerProvider(options(engine.socketPath));
    assert.deepEqual(await provider.inspect(ref, AbortSignal.timeout(5000)), { state: 'stopped' });
  });

  void it('5xx and 429 are retryable; other 4xx are not; the engine\'s message is kept', async (t) => {
    let status = 500;
    const engine = await sickEngine((res) => json(res, status, { message: `engine says ${status}` }));
    t.after(() => engine.close());
    const provider = createDockerProvider(options(engine.socketPath));
    for (const [s, retryable] of [[500, true], [503, true], [429, true], [400, false], [403, false]] as const) {
      status = s;
      const err = await provider.inspect(ref, AbortSignal.timeout(5000)).catch((e: unknown) => e);
      assert.ok(err instanceof ProviderError, `${s}: ${String(err)}`);
      assert.equal(err.retryable, retryable, `${s}`);
      assert.match(err.message, new RegExp(`docker inspect: engine answered ${s}: engine says ${s}`));
    }
  });

  void it('an engine that does not answer: retryable timeout after requestTimeoutMs', async (t) => {
    const engine = await sickEngine(() => { /* never answers */ });
    t.after(() => engine.close());
    const provider = createDockerProvider(options(engine.socketPath, 300));
    const err = await provider.stop(ref, AbortSignal.timeout(5000)).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError, String(err));
    assert.equal(err.retryable, true);
    assert.match(err.message, /did not answer within 300 ms/);
  });

  void it('the caller aborting mid-call rejects at once with the signal\'s reason', async (t) => {
    const engine = await sickEngine(() => { /* never answers */ });
    t.after(() => engine.close());
    const provider = createDockerProvider({ ...options(engine.socketPath), requestTimeoutMs: 60_000 });
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    const call = provider.inspect(ref, controller.signal);
    setImmediate(() => controller.abort(reason));
    await assert.rejects(call, (err) => err === reason);
  });

  void it('a 404 on inspect is "stopped"; a garbage 200 is a retryable error', async (t) => {
    let mode: 'missing' | 'garbage' = 'missing';
    const engine = await sickEngine((res) => (mode === 'missing' ? json(res, 404, { message: 'no such container' }) : json(res, 200, { hello: 1 })));
    t.after(() => engine.close());
    const provider = createDockerProvider(options(engine.socketPath));
    assert.deepEqual(await provider.inspect(ref, AbortSignal.timeout(5000)), { state: 'stopped' });
    await provider.stop(ref, AbortSignal.timeout(5000));
    mode = 'garbage';
    const err = await provider.inspect(ref, AbortSignal.timeout(5000)).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError);
    assert.equal(err.retryable, true);
    assert.match(err.message, /unexpected inspect answer .*no Id/);
  });

  void it('create with a missing image: not retryable, says it never pulls', async (t) => {
    const engine = await sickEngine((res, path) => (path.includes('/create')
      ? json(res, 404, { message: 'No such image: img:latest' })
      : json(res, 404, { message: 'no such container' })));
    t.after(() => engine.close());
    const provider = createDockerProvider(options(engine.socketPath));
    const err = await provider.start(ref, AbortSignal.timeout(5000)).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError, String(err));
    assert.equal(err.retryable, false);
    assert.match(err.message, /image "img" is not present on the engine \(this provider never pulls\): No such image/);
  });
});
