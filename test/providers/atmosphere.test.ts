import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { ProviderError } from '../../src/core/errors.ts';
import type { InstanceRef, Logger, Provider } from '../../src/core/ports.ts';
import { startMockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import type { MockCloud, MockCloudOptions } from '../../src/mock-cloud/mock-cloud.ts';
import { createAtmosphereProvider, instanceKeyOfGroups } from '../../src/providers/atmosphere/atmosphere-provider.ts';
import type { AtmosphereProviderOptions } from '../../src/providers/atmosphere/atmosphere-provider.ts';
import { providerContract } from './contract.ts';

const fastCloud: MockCloudOptions = {
  host: '127.0.0.1',
  port: 0,
  bootTimeMinMs: 5,
  bootTimeMaxMs: 20,
  seed: 3,
  failureRate: 0,
  hangRate: 0,
  seedData: false,
};

providerContract('atmosphere (embedded mock cloud)', async () => {
  const cloud = await startMockCloud(fastCloud);
  const provider = createAtmosphereProvider({ baseUrl: cloud.url, requestTimeoutMs: 2000 });
  return {
    provider,
    makeRef: (i) => ({ resourceId: `res${i}`, instanceKey: `g${i}`, groups: [`g${i}`] }),
    countInstances: async () => cloud.vms().filter((v) => v.state === 'booting' || v.state === 'running').length,
    holdBoots: () => cloud.holdBoots(),
    teardown: async () => {
      await provider.close?.();
      await cloud.close();
    },
  };
});

// ------------------------------------------------------------------ helpers

interface Setup {
  cloud: MockCloud;
  provider: Provider;
  logs: { level: string; msg: string | undefined; obj: object }[];
}

function collectingLogger(logs: Setup['logs']): Logger {
  const at = (level: string) => (obj: object, msg?: string): void => {
    logs.push({ level, msg, obj });
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

async function setup(
  t: { after(fn: () => Promise<void>): void },
  cloudOptions: Partial<MockCloudOptions> = {},
  providerOptions: Partial<AtmosphereProviderOptions> = {},
): Promise<Setup> {
  const cloud = await startMockCloud({ ...fastCloud, ...cloudOptions });
  const logs: Setup['logs'] = [];
  const provider = createAtmosphereProvider({ baseUrl: cloud.url, requestTimeoutMs: 2000, logger: collectingLogger(logs), ...providerOptions });
  t.after(async () => {
    await provider.close?.();
    await cloud.close();
  });
  return { cloud, provider, logs };
}

const ref = (resourceId: string, groups: string[], handle?: string): InstanceRef => ({
  resourceId,
  instanceKey: instanceKeyOfGroups(groups),
  groups: [...groups].sort(),
  handle,
});

const signal = (): AbortSignal => AbortSignal.timeout(5000);

async function until(provider: Provider, r: InstanceRef, state: string): Promise<Awaited<ReturnType<Provider['inspect']>>> {
  for (let i = 0; i < 100_000; i++) {
    const result = await provider.inspect(r, signal());
    if (result.state === state) return result;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  assert.fail(`never reached ${state}`);
}

async function rejectsWith(promise: Promise<unknown>, retryable: boolean, message?: RegExp): Promise<ProviderError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ProviderError, `a ProviderError, got ${String(err)}`);
    assert.equal(err.code, 'SP_PROVIDER_ERROR');
    assert.equal(err.retryable, retryable, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail('expected a rejection');
}

/**
 * A stand-in for the 2012 Flask mock itself: no /vms, no Location, VM URLs that are paths on
 * the mock (`/vm/<id>`), and the VM registered only after the 202 went out (its race).
 * VMs boot only when the test calls boot(): nothing here depends on timing.
 */
async function startOriginal2012(prefix = ''): Promise<{ url: string; spans: () => number; boot: () => void; close: () => Promise<void> }> {
  const vms: { id: number; asId: string; groups: string[]; url: string | undefined }[] = [];
  let spans = 0;
  let base = '';
  const flask404 = '<!doctype html>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n';
  const server: Server = createServer((req, res) => {
    req.resume();
    const path = (req.url ?? '').startsWith(prefix) ? (req.url ?? '').slice(prefix.length) : '';
    const m = /^\/(get_vm|span_as)\/([^/]+)\/for_user_with_groups\/([^/]+)$/.exec(path);
    const html = { 'content-type': 'text/html; charset=utf-8' };
    if (m && m[1] === 'get_vm' && req.method === 'GET') {
      const groups = new Set(decodeURIComponent(m[3]!).split(','));
      const found = vms.filter((v) => v.asId === m[2] && v.groups.every((g) => groups.has(g))).map((v) => v.url ?? 'booting');
      if (found.length === 0) res.writeHead(404, html).end(flask404);
      else res.writeHead(200, html).end(JSON.stringify(found));
      return;
    }
    if (m && m[1] === 'span_as' && req.method === 'POST') {
      spans++;
      res.writeHead(202, html).end('booting');
      // The original's race: the VM appears only after the answer went out.
      setImmediate(() => vms.push({ id: vms.length + 1, asId: m[2]!, groups: decodeURIComponent(m[3]!).split(','), url: undefined }));
      return;
    }
    const vm = /^\/vm\/(\d+)$/.exec(path);
    if (vm && vms.find((v) => String(v.id) === vm[1])?.url !== undefined) {
      res.writeHead(200, html).end(`Hello from ${vm[1]} vm`);
      return;
    }
    res.writeHead(404, html).end(flask404);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: base + prefix,
    spans: () => spans,
    boot: () => {
      for (const v of vms) v.url ??= `${base}${prefix}/vm/${v.id}`;
    },
    close: () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      return closed;
    },
  };
}

// ------------------------------------------------------------------ extended API (embedded mock)

void describe('atmosphere provider against the embedded mock cloud', () => {
  void it('returns the VM id from Location and maps booting → starting → running with the VM URL', async (t) => {
    const { cloud, provider } = await setup(t);
    const release = cloud.holdBoots();
    const r = ref('as1', ['g1']);
    const started = await provider.start(r, signal());
    assert.equal(started.handle, '1');
    const withHandle = { ...r, handle: started.handle };
    assert.deepEqual(await provider.inspect(withHandle, signal()), { state: 'starting', handle: '1' });
    release();
    const vm = await cloud.waitForVm((v) => v.state === 'running');
    assert.deepEqual(await provider.inspect(withHandle, signal()), { state: 'running', endpoint: vm.url, handle: '1' });
    // Without a handle (another replica, or after a restart) it finds the VM through the list.
    const fresh = createAtmosphereProvider({ baseUrl: cloud.url, requestTimeoutMs: 2000 });
    t.after(() => fresh.close!());
    assert.deepEqual(await fresh.inspect(r, signal()), { state: 'running', endpoint: vm.url, handle: '1' });
  });

  void it('joins concurrent starts of one instance: one span', async (t) => {
    const { cloud, provider } = await setup(t);
    const r = ref('as1', ['g1', 'g2']);
    const results = await Promise.all([provider.start(r, signal()), provider.start(r, signal()), provider.start(r, signal())]);
    assert.deepEqual(results.map((x) => x.handle), ['1', '1', '1']);
    assert.equal(cloud.stats.spans, 1);
  });

  void it('a caller that aborts does not take a joined start down with it', async (t) => {
    const { cloud, provider } = await setup(t);
    const r = ref('as1', ['g1']);
    cloud.failNextApiCalls(1, { kind: 'hang' });
    const arrived = cloud.nextApiRequest();
    const first = new AbortController();
    const a = provider.start(r, first.signal);
    const b = provider.start(r, signal());
    // Abort only once the hung call reached the cloud, or the fault would hit b's retry.
    assert.equal(await arrived, 'GET /vms');
    first.abort();
    await assert.rejects(a, { name: 'AbortError' });
    assert.equal((await b).handle, '1');
    assert.equal(cloud.stats.spans, 1);
  });

  void it('reuses a VM whose groups are a subset (the original model), never stops a borrowed one', async (t) => {
    const { cloud, provider, logs } = await setup(t, { seedData: true });
    // VM 2 (g2) serves a caller holding g2 and g3; VM 1 (g1,g2) serves g1,g2 exactly.
    const borrower = ref('as1', ['g2', 'g3']);
    assert.equal((await provider.start(borrower, signal())).handle, '2');
    assert.equal((await provider.start(ref('as1', ['g1', 'g2']), signal())).handle, '1', 'exact match preferred');
    assert.equal(cloud.stats.spans, 0);
    assert.equal((await provider.inspect(borrower, signal())).state, 'running');

    await provider.stop({ ...borrower, handle: '2' }, signal());
    assert.equal(cloud.vm('2')!.state, 'running', 'the owner (g2) still uses it');
    assert.ok(logs.some((l) => /borrowed/.test(l.msg ?? '')));
    assert.deepEqual(await provider.inspect({ ...borrower, handle: '2' }, signal()), { state: 'stopped' }, 'released for this instance');

    // The owner, even known to a fresh provider only by its groups, does stop it.
    const fresh = createAtmosphereProvider({ baseUrl: cloud.url, requestTimeoutMs: 2000 });
    t.after(() => fresh.close!());
    await fresh.stop(ref('as1', ['g2']), signal());
    assert.equal(cloud.vm('2')!.state, 'stopped');
  });

  void it('maps a failed boot to failed with the cloud\'s reason', async (t) => {
    const { cloud, provider } = await setup(t, { failureRate: 1 });
    const r = ref('as1', ['g1']);
    const { handle } = await provider.start(r, signal());
    await cloud.waitForVm((v) => v.state === 'failed');
    const result = await provider.inspect({ ...r, handle }, signal());
    assert.equal(result.state, 'failed');
    assert.match(result.reason ?? '', /boot failed/);
    // A new start after a failure spans a new VM instead of clinging to the dead one.
    assert.equal((await provider.start({ ...r, handle }, signal())).handle, '2');
  });

  void it('list re-adopts running and booting VMs keyed by sorted groups, * for none, via resourceIdOf', async (t) => {
    const { cloud, provider } = await setup(t, { seedData: true }, { serviceId: (id) => `svc-${id}`, resourceIdOf: (s) => (s.startsWith('svc-') ? s.slice(4) : undefined) });
    const release = cloud.holdBoots();
    await provider.start(ref('web', ['b', 'a']), signal());
    await provider.start(ref('shared', []), signal());
    assert.deepEqual(cloud.vms().slice(3).map((v) => v.asId), ['svc-web', 'svc-shared']);
    const listed = await provider.list!(signal());
    assert.deepEqual(listed, [
      { resourceId: 'web', instanceKey: 'a,b', state: 'starting', handle: '4' },
      { resourceId: 'shared', instanceKey: '*', state: 'starting', handle: '5' },
    ]);
    release();
  });

  void it('turns 5xx, 429, timeouts and refused connections into retryable ProviderErrors', async (t) => {
    // Generous for the calls that must answer (a loaded CI machine is slow); the hang case
    // below gets its own short-timeout provider.
    const { cloud, provider } = await setup(t, {}, { requestTimeoutMs: 10_000 });
    const r = ref('as1', ['g1']);
    cloud.failNextApiCalls(1, { kind: 'status', status: 503 });
    await rejectsWith(provider.inspect(r, signal()), true, /HTTP 503/);
    cloud.failNextApiCalls(1, { kind: 'status', status: 429, retryAfterS: 3 });
    const limited = await rejectsWith(provider.start(r, signal()), true, /HTTP 429/);
    assert.equal(limited.retryAfterS, 3);
    const impatient = createAtmosphereProvider({ baseUrl: cloud.url, requestTimeoutMs: 150, api: 'extended' });
    t.after(() => impatient.close!());
    cloud.failNextApiCalls(1, { kind: 'hang' });
    await rejectsWith(impatient.inspect(r, signal()), true, /timed out after 150 ms/);
    cloud.failNextApiCalls(1, { kind: 'status', status: 400 });
    await rejectsWith(provider.inspect(r, signal()), false, /HTTP 400/);

    const port = cloud.port;
    await cloud.close();
    const dead = createAtmosphereProvider({ baseUrl: `http://127.0.0.1:${port}`, requestTimeoutMs: 1000 });
    t.after(() => dead.close!());
    await rejectsWith(dead.inspect(r, signal()), true, /ECONNREFUSED/);
  });

  void it('turns malformed answers into non-retryable ProviderErrors, never a crash', async (t) => {
    const { cloud, provider } = await setup(t);
    const r = ref('as1', ['g1']);
    await provider.list!(signal()); // detect the API first: the faults below hit the real calls
    for (const body of ['not json', '{}', '[{"id": 1}]', '[{"id":"1","asId":"as1","groups":["g"],"state":"melting"}]', '[{"id":"1","asId":"as1","groups":[],"state":"running"}]']) {
      cloud.failNextApiCalls(1, { kind: 'garbage', body });
      await rejectsWith(provider.inspect(r, signal()), false, /malformed answer/);
    }
    // A VM of another service that does not parse says nothing about this one: left out.
    cloud.failNextApiCalls(1, { kind: 'garbage', body: '[{"id":"1","asId":"a","groups":["g"],"state":"melting"}]' });
    assert.equal((await provider.inspect(r, signal())).state, 'stopped');
  });

  void it('rejects promptly with the abort reason when the signal aborts mid-call', async (t) => {
    const { cloud, provider } = await setup(t, {}, { requestTimeoutMs: 60_000 });
    await provider.list!(signal());
    cloud.failNextApiCalls(1, { kind: 'hang' });
    const arrived = cloud.nextApiRequest();
    const controller = new AbortController();
    const call = provider.inspect(ref('as1', ['g1']), controller.signal);
    await arrived;
    const started = performance.now();
    controller.abort();
    await assert.rejects(call, { name: 'AbortError' });
    assert.ok(performance.now() - started < 500);
  });

  void it('close is idempotent', async (t) => {
    const { provider } = await setup(t);
    await provider.inspect(ref('as1', ['g1']), signal());
    await provider.close!();
    await provider.close!();
  });

  void it('refuses a group name the API cannot express', async (t) => {
    const { provider } = await setup(t, {}, { api: 'original' });
    await rejectsWith(provider.start({ resourceId: 'as1', instanceKey: 'a,b', groups: ['a,b'] }, signal()), false, /comma/);
  });
});

// ------------------------------------------------------------------ original 2012 API

void describe('atmosphere provider against the original 2012 API', () => {
  void it('detects it, starts without a handle, and returns the path-prefixed VM URL as the endpoint', async (t) => {
    const original = await startOriginal2012('/atmo');
    const logs: Setup['logs'] = [];
    const provider = createAtmosphereProvider({ baseUrl: original.url, requestTimeoutMs: 2000, logger: collectingLogger(logs) });
    t.after(async () => {
      await provider.close?.();
      await original.close();
    });
    const r = ref('as1', ['g1', 'g2']);
    assert.deepEqual(await provider.inspect(r, signal()), { state: 'stopped' });
    assert.deepEqual(await provider.start(r, signal()), { handle: undefined });
    // The VM is not registered yet (the original's race): the grace window says starting.
    assert.equal((await provider.inspect(r, signal())).state, 'starting');
    await provider.start(r, signal());
    assert.equal(original.spans(), 1, 'idempotent without a handle');
    const booting = await until(provider, r, 'starting');
    assert.equal(booting.state, 'starting');
    original.boot();
    const running = await provider.inspect(r, signal());
    assert.deepEqual(running, { state: 'running', endpoint: `${original.url}/vm/1` });
    assert.deepEqual(await provider.list!(signal()), []);

    // No stop in this API: it resolves, says so once, and the instance counts as stopped.
    await provider.stop(r, signal());
    await provider.stop(r, signal());
    assert.equal(logs.filter((l) => l.level === 'warn' && /no stop/.test(l.msg ?? '')).length, 1);
    assert.equal((await provider.inspect(r, signal())).state, 'stopped');
    // The VM still runs, so the next start re-adopts it instead of spanning again.
    await provider.start(r, signal());
    assert.equal(original.spans(), 1);
    assert.equal((await provider.inspect(r, signal())).state, 'running');
  });

  void it('parses get_vm as JSON despite text/html, and rejects garbage as a non-retryable error', async (t) => {
    const { cloud, provider } = await setup(t, { seedData: true }, { api: 'original' });
    const result = await provider.inspect(ref('as1', ['g2']), signal());
    assert.deepEqual(result, { state: 'running', endpoint: cloud.vm('2')!.url });
    for (const body of ['<html>oops</html>', '[]', '[42]', '["ftp://x"]', '{"a":1}']) {
      cloud.failNextApiCalls(1, { kind: 'garbage', body });
      await rejectsWith(provider.inspect(ref('as1', ['g2']), signal()), false, /malformed answer/);
    }
  });
});
