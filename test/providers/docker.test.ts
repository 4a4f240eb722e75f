/**
 * The docker provider against a real Podman Docker-API service that this file starts (see
 * docker-engine.ts): the shared contract suite, then what is particular to containers:
 * healthchecks, existing containers by name and by labels, crashes, re-adoption, races.
 * Each test uses its own owner label and removes its containers at the end.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { parseConfig } from '../../src/config/load.ts';
import { ProviderError } from '../../src/core/errors.ts';
import { startApp } from '../../src/main.ts';
import type { InspectResult, InstanceRef, Provider } from '../../src/core/ports.ts';
import { createDockerProvider, labelKeys, type ContainerSelection, type DockerProviderOptions } from '../../src/providers/docker/docker-provider.ts';
import { providerContract } from './contract.ts';
import { startHarness } from '../helpers/proxy-harness.ts';
import { freshOwner, startPodmanService, testImage, type PodmanService } from './docker-engine.ts';

let engine: PodmanService | undefined;
before(async () => { engine = await startPodmanService(); });
after(async () => { await engine?.close(); });

const podman = (): PodmanService => {
  assert.ok(engine, 'the Podman service did not start (see the first failure)');
  return engine;
};

/** slirp4netns: the container's network stays in its own namespace; nothing changes on the host. */
const createMode = (extra: Partial<Extract<ContainerSelection, { mode: 'create' }>> = {}): ContainerSelection => ({
  mode: 'create', image: testImage, networkMode: 'slirp4netns', removeOnStop: false, namePrefix: 'sp-', ...extra,
});

function options(owner: string, over: Partial<DockerProviderOptions> = {}): DockerProviderOptions {
  return {
    socketPath: podman().socketPath,
    requestTimeoutMs: 15_000,
    owner,
    container: createMode(),
    endpoint: { mode: 'published', containerPort: 80, hostIp: '127.0.0.1', scheme: 'http' },
    health: { use: true, unhealthyAs: 'failed' },
    stopTimeoutS: 1,
    ...over,
  };
}

const sig = (): AbortSignal => AbortSignal.timeout(30_000);
const ref = (resourceId: string, instanceKey = '*'): InstanceRef => ({ resourceId, instanceKey, groups: [] });

/** Polls inspect, awaiting each call, until one of the states (the engine's own work runs meanwhile). */
async function until(provider: Provider, r: InstanceRef, states: readonly string[]): Promise<InspectResult> {
  const deadline = performance.now() + 20_000;
  let last: InspectResult | undefined;
  while (performance.now() < deadline) {
    last = await provider.inspect(r, sig());
    if (states.includes(last.state)) return last;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`did not reach ${states.join('|')}; last ${JSON.stringify(last)}`);
}

async function get(url: string): Promise<{ status: number; body: string }> {
  const res = await request(url, { signal: AbortSignal.timeout(10_000) });
  return { status: res.statusCode, body: await res.body.text() };
}

/** Per test: a fresh owner, and its containers removed at the end. */
function scoped(t: { after(fn: () => Promise<void>): void }): string {
  const owner = freshOwner();
  t.after(() => podman().removeAll(owner));
  return owner;
}

const live = (states: readonly string[]) => states.filter((s) => s !== 'exited' && s !== 'stopped' && s !== 'dead').length;

/**
 * The contract, with a healthcheck on every container so that a boot can be held: the
 * container stays `starting` until its check passes. Podman without systemd never runs
 * checks by itself, so the subject plays the engine's health timer: each inspect that sees
 * `starting` runs the check once, unless boots are held. (The test below checks the same gate
 * with no stand-in at all.)
 */
providerContract('docker (Podman API, create mode)', async () => {
  const owner = freshOwner();
  const real = createDockerProvider(options(owner, {
    container: createMode({ healthcheck: { test: ['CMD', 'test', '-f', '/www/health'], intervalMs: 60_000, timeoutMs: 5_000, retries: 1, startPeriodMs: 0 } }),
  }));
  let held = false;
  const provider: Provider = {
    kind: real.kind,
    start: (r, s) => real.start(r, s),
    stop: (r, s) => real.stop(r, s),
    list: (s) => real.list(s),
    close: () => real.close(),
    async inspect(r, s) {
      const seen = await real.inspect(r, s);
      if (seen.state !== 'starting' || held || seen.handle === undefined) return seen;
      const status = await podman().runHealthcheck(seen.handle).catch(() => undefined);
      return status === undefined ? seen : real.inspect(r, s);
    },
  };
  return {
    provider,
    makeRef: (i) => ({ resourceId: `res${i}`, instanceKey: `g${i}`, groups: [`g${i}`] }),
    countInstances: async () => live((await podman().containersOf(owner)).map((c) => c.State)),
    holdBoots: () => {
      held = true;
      return () => { held = false; };
    },
    teardown: async () => {
      await provider.close?.();
      await podman().removeAll(owner);
    },
    readyTimeoutMs: 20_000,
  };
});

void describe('docker provider on Podman', () => {
  void it('a container with a healthcheck is starting until healthy, then running; the endpoint answers', async (t) => {
    const owner = scoped(t);
    const provider = createDockerProvider(options(owner, {
      container: createMode({ healthcheck: { test: ['CMD', 'test', '-f', '/www/health'], intervalMs: 60_000, timeoutMs: 5_000, retries: 1, startPeriodMs: 0 } }),
    }));
    const r = ref('health');
    const { handle } = await provider.start(r, sig());
    assert.ok(handle);
    // Podman without systemd never runs the check by itself: the container stays "starting"
    // however long we look, which makes the gate deterministic here.
    const before = await until(provider, r, ['starting', 'running', 'failed']);
    assert.equal(before.state, 'starting');
    assert.equal(await podman().runHealthcheck(handle), 'healthy');
    const after = await provider.inspect(r, sig());
    assert.equal(after.state, 'running');
    assert.match(after.endpoint ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await get(`${after.endpoint}/`);
    assert.deepEqual(res, { status: 200, body: 'hello from busybox httpd\n' });
  });

  void it('an unhealthy container fails the start, or keeps starting when configured so', async (t) => {
    const owner = scoped(t);
    const sick = createMode({ healthcheck: { test: ['CMD', 'test', '-f', '/nonexistent'], intervalMs: 60_000, timeoutMs: 5_000, retries: 1, startPeriodMs: 0 } });
    const failing = createDockerProvider(options(owner, { container: sick }));
    const patient = createDockerProvider(options(owner, { container: sick, health: { use: true, unhealthyAs: 'starting' } }));
    const r = ref('sick');
    const { handle } = await failing.start(r, sig());
    await until(failing, r, ['starting']);
    assert.equal(await podman().runHealthcheck(handle!), 'unhealthy');
    const seen = await failing.inspect(r, sig());
    assert.equal(seen.state, 'failed');
    assert.match(seen.reason ?? '', /is unhealthy/);
    assert.equal((await patient.inspect(r, sig())).state, 'starting');
  });

  void it('existing mode by name: starts and stops a container it did not create, and never removes it', async (t) => {
    const owner = scoped(t);
    const name = `${owner}-app`;
    // An operator's container: published port, owner label only so the test can clean it up.
    const created = await podman().api('POST', `/containers/create?name=${name}`, {
      Image: testImage, Labels: { [labelKeys.owner]: owner }, ExposedPorts: { '80/tcp': {} },
      HostConfig: { NetworkMode: 'slirp4netns', PortBindings: { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] } },
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const provider = createDockerProvider(options(owner, { container: { mode: 'existing', name: '{resourceId}-app' } }));
    const r = ref(owner);
    assert.equal((await provider.inspect(r, sig())).state, 'stopped', 'created but never started');
    await provider.start(r, sig());
    const running = await until(provider, r, ['running', 'failed']);
    assert.equal(running.state, 'running', running.reason);
    assert.equal((await get(`${running.endpoint}/health`)).body, 'ok\n');
    await provider.stop(r, sig());
    await provider.stop(r, sig());
    assert.equal((await provider.inspect(r, sig())).state, 'stopped');
    assert.deepEqual((await podman().containersOf(owner)).map((c) => c.State), ['exited'], 'still there, stopped');
    // A name that matches nothing: start says so and is not retried; inspect/stop are calm.
    const missing = ref(`${owner}-nothing`);
    const err = await provider.start(missing, sig()).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError);
    assert.equal(err.retryable, false);
    assert.match(err.message, /container ".*-nothing-app" does not exist/);
    assert.equal((await provider.inspect(missing, sig())).state, 'stopped');
    await provider.stop(missing, sig());
  });

  void it('existing mode by labels: exactly one container must match', async (t) => {
    const owner = scoped(t);
    const make = async (name: string, app: string) => {
      const res = await podman().api('POST', `/containers/create?name=${owner}-${name}`, {
        Image: testImage, Labels: { [labelKeys.owner]: owner, app }, ExposedPorts: { '80/tcp': {} },
        HostConfig: { NetworkMode: 'slirp4netns', PortBindings: { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] } },
      });
      assert.equal(res.status, 201, JSON.stringify(res.json));
    };
    await make('one', `${owner}-solo`);
    await make('two', `${owner}-twin`);
    await make('three', `${owner}-twin`);
    const provider = createDockerProvider(options(owner, { container: { mode: 'existing', labels: { app: `${owner}-{resourceId}` } } }));
    await provider.start(ref('solo'), sig());
    assert.equal((await until(provider, ref('solo'), ['running', 'failed'])).state, 'running');
    const err = await provider.start(ref('twin'), sig()).catch((e: unknown) => e);
    assert.ok(err instanceof ProviderError);
    assert.equal(err.retryable, false);
    assert.match(err.message, /match 2 containers/);
    assert.equal((await provider.inspect(ref('none'), sig())).state, 'stopped');
  });

  void it('a container that exits after our start is failed, with its exit code', async (t) => {
    const owner = scoped(t);
    const provider = createDockerProvider(options(owner, { container: createMode({ cmd: ['sh', '-c', 'exit 3'] }) }));
    const r = ref('crashy');
    await provider.start(r, sig());
    const seen = await until(provider, r, ['failed', 'stopped']);
    assert.deepEqual([seen.state, seen.reason?.replace(/sp-crashy-\w+/, 'X')], ['failed', 'container X exited with code 3']);
    await provider.stop(r, sig());
    assert.equal((await provider.inspect(r, sig())).state, 'stopped', 'after our stop it is just stopped');
  });

  void it('concurrent starts of one instance create one container', async (t) => {
    const owner = scoped(t);
    const provider = createDockerProvider(options(owner));
    const results = await Promise.all(Array.from({ length: 4 }, () => provider.start(ref('race'), sig())));
    assert.equal(new Set(results.map((r) => r.handle)).size, 1);
    assert.equal((await podman().containersOf(owner)).length, 1);
  });

  void it('list re-adopts running containers of its owner after a restart, not others', async (t) => {
    const owner = scoped(t);
    const stranger = scoped(t);
    const first = createDockerProvider(options(owner));
    const r = ref('kept', 'g1');
    await first.start(r, sig());
    const up = await until(first, r, ['running', 'failed']);
    await first.start(ref('stopped-one'), sig());
    await first.stop(ref('stopped-one'), sig());
    await createDockerProvider(options(stranger)).start(ref('kept', 'g1'), sig());
    await first.close();
    // A restarted proxy: a new provider with the same owner and nothing in memory.
    const second = createDockerProvider(options(owner));
    const listed = await second.list(sig());
    assert.deepEqual(listed.map((l) => [l.resourceId, l.instanceKey, l.state, l.endpoint]), [['kept', 'g1', 'running', up.endpoint]]);
  });

  void it('removeOnStop removes the container; the next start makes a fresh one', async (t) => {
    const owner = scoped(t);
    const provider = createDockerProvider(options(owner, { container: createMode({ removeOnStop: true }) }));
    const r = ref('ephemeral');
    const first = await provider.start(r, sig());
    await provider.stop(r, sig());
    assert.equal((await podman().containersOf(owner)).length, 0);
    const second = await provider.start(r, sig());
    assert.notEqual(second.handle, first.handle);
    assert.equal((await until(provider, r, ['running', 'failed'])).state, 'running');
  });
});

void describe('docker resources through the proxy', () => {
  /** Counts inspect answers by state, so a test can await "the core has looked N more times". */
  function counting(inner: Provider) {
    const seen: string[] = [];
    const waiters: Array<() => void> = [];
    const provider: Provider = {
      kind: inner.kind,
      start: (r, s) => inner.start(r, s),
      stop: (r, s) => inner.stop(r, s),
      close: () => inner.close?.() ?? Promise.resolve(),
      async inspect(r, s) {
        const result = await inner.inspect(r, s);
        seen.push(result.state);
        for (const w of waiters.splice(0)) w();
        return result;
      },
    };
    const moreInspects = async (n: number): Promise<void> => {
      const target = seen.length + n;
      while (seen.length < target) await new Promise<void>((resolve) => waiters.push(resolve));
    };
    return { provider, seen, moreInspects };
  }

  void it('a cold request wakes a stopped container, is held until it answers, then forwarded; wakes it again after a stop', async (t) => {
    const owner = scoped(t);
    // An operator's container, created and never started: the proxy manages it by name.
    const created = await podman().api('POST', `/containers/create?name=${owner}-site`, {
      Image: testImage, Labels: { [labelKeys.owner]: owner }, ExposedPorts: { '80/tcp': {} },
      HostConfig: { NetworkMode: 'slirp4netns', PortBindings: { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] } },
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const provider = createDockerProvider(options(owner, { container: { mode: 'existing', name: `${owner}-{resourceId}` } }));
    const h = await startHarness({ resources: [{ id: 'site', provider, bootTimeoutMs: 30_000, probe: { kind: 'http', path: '/health', expectStatus: [200], timeoutMs: 1000 } }] });
    t.after(() => h.close());

    const t0 = performance.now();
    const cold = await fetch(`${h.url}/smart_proxy/site/g1/index.html?x=1`, { signal: AbortSignal.timeout(30_000) });
    const coldMs = performance.now() - t0;
    assert.equal(cold.status, 200);
    assert.equal(await cold.text(), 'hello from busybox httpd\n');
    t.diagnostic(`cold request to a stopped container answered in ${coldMs.toFixed(0)} ms`);
    assert.deepEqual((await podman().containersOf(owner)).map((c) => c.State), ['running']);

    const warm = await fetch(`${h.url}/smart_proxy/site/g1/health`);
    assert.deepEqual([warm.status, await warm.text()], [200, 'ok\n']);

    // Stop it through the control plane (as the idle reaper would); the next request wakes it.
    for (const inst of [...h.manager.allInstances()]) await h.manager.stop(inst, 'test');
    assert.deepEqual((await podman().containersOf(owner)).map((c) => c.State), ['exited']);
    const again = await fetch(`${h.url}/smart_proxy/site/g1/`, { signal: AbortSignal.timeout(30_000) });
    assert.deepEqual([again.status, await again.text()], [200, 'hello from busybox httpd\n']);
    assert.equal((await podman().containersOf(owner)).length, 1, 'the same container, started again');
  });

  void it('create mode: the held request waits for the healthcheck even when the port already answers', async (t) => {
    const owner = scoped(t);
    const { provider, seen, moreInspects } = counting(createDockerProvider(options(owner, {
      container: createMode({ healthcheck: { test: ['CMD', 'test', '-f', '/www/health'], intervalMs: 60_000, timeoutMs: 5_000, retries: 1, startPeriodMs: 0 } }),
    })));
    const h = await startHarness({ resources: [{ id: 'app', provider, bootTimeoutMs: 30_000 }] });
    t.after(() => h.close());

    let answered = false;
    const pending = fetch(`${h.url}/smart_proxy/app/g1/index.html`, { signal: AbortSignal.timeout(30_000) })
      .then(async (res) => { answered = true; return { status: res.status, body: await res.text() }; });
    // Wait for the container to exist and for httpd to answer on its published port directly.
    await moreInspects(1);
    const [container] = await podman().containersOf(owner);
    assert.ok(container);
    const direct = await createDockerProvider(options(owner, { health: { use: false, unhealthyAs: 'failed' } })).inspect(ref('app'), sig());
    assert.equal(direct.state, 'running');
    for (;;) {
      const ok = await get(`${direct.endpoint}/`).then((r) => r.status === 200, () => false);
      if (ok) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
    // The service answers, but the healthcheck has not passed: the core keeps holding.
    await moreInspects(3);
    assert.equal(answered, false, 'held while the container is not healthy');
    assert.equal(seen.at(-1), 'starting');
    assert.equal(await podman().runHealthcheck(container.Id), 'healthy');
    assert.deepEqual(await pending, { status: 200, body: 'hello from busybox httpd\n' });
    assert.equal((await podman().containersOf(owner)).length, 1);
  });
});

void describe('examples/docker.yaml through startApp', () => {
  void it('wakes a created container and an existing one, and stops them on shutdown', async (t) => {
    const owner = scoped(t);
    const text = await readFile(fileURLToPath(new URL('../../examples/docker.yaml', import.meta.url)), 'utf8');
    const config = parseConfig(text, 'examples/docker.yaml');
    // Point the example at this test's engine, with its own owner and names, on a free port.
    for (const p of Object.values(config.providers)) {
      assert.equal(p.kind, 'docker');
      if (p.kind !== 'docker') continue;
      p.socketPath = podman().socketPath;
      p.owner = owner;
      if (p.existing !== undefined) p.existing.name = `${owner}-{resourceId}`;
    }
    config.listen.port = 0;
    config.log.level = 'silent';
    // In memory: tests must not share (and re-adopt from) the default SQLite file.
    config.state = { kind: 'memory', flushIntervalMs: 1_000 };
    const made = await podman().api('POST', `/containers/create?name=${owner}-legacy`, {
      Image: testImage, Labels: { [labelKeys.owner]: owner }, ExposedPorts: { '80/tcp': {} },
      HostConfig: { NetworkMode: 'slirp4netns', PortBindings: { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] } },
    });
    assert.equal(made.status, 201, JSON.stringify(made.json));
    const app = await startApp(config);
    let closed = false;
    t.after(async () => { if (!closed) await app.close(); });

    for (const path of ['site/-/index.html', 'legacy/-/index.html']) {
      const res = await fetch(`${app.proxyUrl}/smart_proxy/${path}`, { signal: AbortSignal.timeout(30_000) });
      assert.deepEqual([res.status, await res.text()], [200, 'hello from busybox httpd\n'], path);
    }
    assert.deepEqual((await podman().containersOf(owner)).map((c) => c.State), ['running', 'running']);
    closed = true;
    await app.close();
    // shutdown.stopInstances: true in the example.
    assert.deepEqual((await podman().containersOf(owner)).map((c) => c.State), ['exited', 'exited']);
  });
});
