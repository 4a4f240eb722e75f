/**
 * The proxy as a real child process, a mock cloud in this process: real signals, real
 * kill -9, a real SQLite file shared by the process before and after the restart.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { startMockCloud, type MockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'sp-process-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function configFor(cloud: MockCloud, over: { state?: object; shutdown?: object; resources?: Record<string, object> } = {}): object {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    log: { level: 'warn' },
    state: over.state ?? { kind: 'memory' },
    providers: { cloud: { kind: 'atmosphere', baseUrl: cloud.url, requestTimeoutMs: 5_000 } },
    resourceDefaults: { bootTimeoutMs: 30_000, healthCheckIntervalMs: 0, pollIntervalMinMs: 10, pollIntervalMaxMs: 50 },
    resources: over.resources ?? { app: { provider: 'cloud' } },
    shutdown: over.shutdown ?? {},
  };
}

async function newCloud(): Promise<MockCloud> {
  return startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false });
}

function refused(url: string): Promise<boolean> {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(port), '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', () => resolve(true));
  });
}

describe('graceful shutdown (child process, real signals)', () => {
  let cloud: MockCloud;
  before(async () => { cloud = await newCloud(); });
  after(() => cloud.close());

  it('SIGTERM while 50 requests are held: it stops accepting, the boot finishes within the drain time, all get 200', async () => {
    const releaseBoots = cloud.holdBoots();
    const p = await startProxyProcess(configFor(cloud, { shutdown: { drainTimeoutMs: 30_000 } }));
    try {
      const pending = Array.from({ length: 50 }, (_, i) => fetch(`${p.url}/smart_proxy/app/-/held/${i}`)
        .then(async (r) => ({ status: r.status, body: await r.text() }), (err: unknown) => ({ status: 0, body: String(err) })));
      await p.waitFor((s) => s.held === 50);
      const signalled = p.next('signal');
      p.child.kill('SIGTERM');
      await signalled;
      // The listening socket closes within a turn of the child's event loop after the signal.
      while (!await refused(p.url)) await new Promise((r) => setImmediate(r));
      releaseBoots();
      const results = await Promise.all(pending);
      assert.deepEqual(results.map((r) => r.status), Array<number>(50).fill(200), `${JSON.stringify(results.find((r) => r.status !== 200))}\n${p.output()}`);
      assert.match(results[49]?.body ?? '', /held\/49/);
      const { code } = await p.exited;
      assert.equal(code, 0, `clean exit after draining\n${p.output()}`);
      assert.equal(cloud.vms().filter((v) => v.state === 'running').length, 1, 'instances keep running (shutdown.stopInstances: false)');
    } finally {
      releaseBoots();
      await p.dispose();
    }
  });

  it('past the drain time the held requests get 503, and the process still exits cleanly', async () => {
    const releaseBoots = cloud.holdBoots();
    const p = await startProxyProcess(configFor(cloud, { shutdown: { drainTimeoutMs: 200 }, resources: { slow: { provider: 'cloud' } } }));
    try {
      const pending = Array.from({ length: 10 }, () => fetch(`${p.url}/smart_proxy/slow/-/x`, { headers: { accept: 'application/json' } })
        .then(async (r) => ({ status: r.status, body: await r.json() as { code: string } })));
      await p.waitFor((s) => s.held === 10);
      p.child.kill('SIGTERM');
      const results = await Promise.all(pending);
      assert.deepEqual(new Set(results.map((r) => `${r.status} ${r.body.code}`)), new Set(['503 SP_SHUTTING_DOWN']));
      assert.equal((await p.exited).code, 0, p.output());
    } finally {
      releaseBoots();
      await p.dispose();
    }
  });
});

describe('kill -9 and restart on the same SQLite file', () => {
  it('re-adopts running instances without a second start, and their idle timers go on', async () => {
    const cloud = await newCloud();
    const path = join(dir, 'restart.sqlite');
    const state = { kind: 'sqlite', path, flushIntervalMs: 50 };
    const long = { provider: 'cloud', idleStopMs: 600_000 };
    let p1: ProxyProcess | undefined;
    let p2: ProxyProcess | undefined;
    try {
      p1 = await startProxyProcess(configFor(cloud, { state, resources: { a: long, b: long } }));
      const vmOf: Record<string, string> = {};
      for (const id of ['a', 'b']) {
        const r = await fetch(`${p1.url}/smart_proxy/${id}/-/first`);
        assert.equal(r.status, 200);
        await r.text();
        vmOf[id] = r.headers.get('x-mock-vm') ?? '';
      }
      assert.equal(cloud.stats.spans, 2);
      const s1 = await p1.status();
      const lastActivityOf = (id: string): number => s1.instances.find((i) => i.resourceId === id)?.lastActivityAt ?? -1;
      // Wait until the write-behind flush has put both instances, with their activity, on disk.
      const db = new DatabaseSync(path, { readOnly: true });
      const stored = (id: string) => db.prepare('SELECT status, last_activity_at FROM instances WHERE resource_id = ?').get(id);
      while (!['a', 'b'].every((id) => stored(id)?.status === 'ready' && stored(id)?.last_activity_at === lastActivityOf(id))) {
        await new Promise((r) => setImmediate(r));
      }
      db.close();

      p1.child.kill('SIGKILL');
      assert.equal((await p1.exited).signal, 'SIGKILL');

      // The same config, except that b now stops after 4 s idle.
      const idleMs = 4_000;
      p2 = await startProxyProcess(configFor(cloud, { state, resources: { a: long, b: { provider: 'cloud', idleStopMs: idleMs } } }));
      const listeningAt = Date.now();
      const s2 = await p2.waitFor((s) => ['a', 'b'].every((id) => s.instances.some((i) => i.resourceId === id && i.status !== 'starting')));
      assert.equal(s2.instances.find((i) => i.resourceId === 'b')?.lastActivityAt, lastActivityOf('b'), 'the activity mark survived the crash');
      assert.equal(s2.instances.find((i) => i.resourceId === 'a')?.status, 'ready');

      const r = await fetch(`${p2.url}/smart_proxy/a/-/after-restart`);
      assert.equal(r.status, 200);
      await r.text();
      assert.equal(r.headers.get('x-mock-vm'), vmOf.a, 'served by the machine started before the crash');
      assert.equal(cloud.stats.spans, 2, 'no second start');

      const stopped = await cloud.waitForVm((vm) => vm.id === vmOf.b && vm.state === 'stopped');
      const stoppedAt = Date.parse(stopped.stoppedAt ?? '');
      assert.ok(stoppedAt - lastActivityOf('b') >= idleMs - 50, `not before ${idleMs} ms idle (${stoppedAt - lastActivityOf('b')} ms)`);
      assert.ok(stoppedAt < listeningAt + idleMs, `the timer went on from the stored activity instead of starting over (${stoppedAt - listeningAt} ms after restart)`);
      assert.equal(cloud.stats.spans, 2);
    } finally {
      await p1?.dispose();
      await p2?.dispose();
      await cloud.close();
    }
  });
});
