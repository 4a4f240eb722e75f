/**
 * Issue 11 item 7: a cloud API that cannot be reached is not a slow boot. The whole proxy
 * (startApp) with the atmosphere provider pointed at a real port where nothing listens, then
 * at the mock cloud started on that very port. Time is a ManualClock: "at once" means with no
 * clock advance at all, while the boot timeout is 30 s.
 */
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { Agent } from 'undici';
import { parseConfig } from '../../src/config/load.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { startApp, type App } from '../../src/main.ts';
import { startMockCloud, type MockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { MemoryAuditSink } from '../../src/access/audit.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
import { freePort } from '../helpers/free-port.ts';


interface Answer { status: number; retryAfter: string | null; body: Record<string, unknown> }

async function request(agent: Agent, url: string, accept = 'application/json'): Promise<Answer> {
  const r = await fetch(url, { dispatcher: agent, headers: { accept } });
  const text = await r.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { text };
  }
  return { status: r.status, retryAfter: r.headers.get('retry-after'), body };
}

/** Advances the clock in small steps until `p` settles; returns its value and the virtual time spent. */
async function drive<T>(clock: ManualClock, p: Promise<T>, maxMs: number): Promise<{ value: T; advancedMs: number }> {
  let done = false;
  const settled = p.finally(() => { done = true; });
  let advancedMs = 0;
  while (!done && advancedMs < maxMs) {
    await clock.advance(25);
    advancedMs += 25;
  }
  return { value: await settled, advancedMs };
}

async function app(cloudPort: number, clock: ManualClock, logs: Harness['logs'], audit: MemoryAuditSink, resources: Record<string, object>): Promise<App> {
  const config = parseConfig(JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    state: { kind: 'memory', flushIntervalMs: 1_000 },
    providers: { cloud: { kind: 'atmosphere', baseUrl: `http://127.0.0.1:${cloudPort}`, requestTimeoutMs: 2_000 } },
    providerCircuit: { failureThreshold: 3, openMs: 5_000, maxOpenMs: 60_000 },
    resourceDefaults: { bootTimeoutMs: 30_000, pollIntervalMinMs: 10, pollIntervalMaxMs: 50, probeIntervalMs: 10, idleStopMs: 0, access: { public: true } },
    resources,
  }));
  return startApp(config, { clock, logger: collectingLogger(logs), audit });
}

describe('a cloud API that cannot be reached', () => {
  it('opens the circuit: held requests get 503 SP_PROVIDER_UNREACHABLE at once, status says so, half-open on the clock, closes once the cloud answers', async () => {
    const port = await freePort(); // nothing listens here: connections are refused
    const clock = new ManualClock(Date.now());
    const logs: Harness['logs'] = [];
    const audit = new MemoryAuditSink();
    const resources = Object.fromEntries([0, 1, 2, 3].map((i) => [`app${i}`, { provider: 'cloud' }]));
    const a = await app(port, clock, logs, audit, resources);
    const agent = new Agent({ connections: 16 });
    let cloud: MockCloud | undefined;
    try {
      // Four requests for four resources on the one provider, all held for a start.
      const held = [0, 1, 2, 3].map((i) => request(agent, `${a.proxyUrl}/smart_proxy/app${i}/-/x`));
      const { value: answers, advancedMs } = await drive(clock, Promise.all(held), 35_000);
      for (const r of answers) {
        assert.equal(r.status, 503, JSON.stringify(r.body));
        assert.equal(r.body.code, 'SP_PROVIDER_UNREACHABLE');
        assert.ok(Number(r.retryAfter) >= 1 && Number(r.retryAfter) <= 5, `Retry-After ${r.retryAfter}`);
      }
      assert.ok(advancedMs < 3_000, `answered after ${advancedMs} ms of a 30 s boot timeout`);
      assert.ok(logs.some((l) => l.level === 'warn' && /circuit open/.test(l.msg ?? '')), 'the opening is logged at warn');
      assert.ok(!logs.some((l) => /machine may be left running/.test(l.msg ?? '')), 'a start that created nothing warns of no machine left running');

      // While open: answered at once, with no clock advance at all; a browser is told the cause.
      const now = await request(agent, `${a.proxyUrl}/smart_proxy/app0/-/again`);
      assert.equal(now.status, 503);
      assert.equal(now.body.code, 'SP_PROVIDER_UNREACHABLE');
      const page = await request(agent, `${a.proxyUrl}/smart_proxy/app1/-/`, 'text/html');
      assert.equal(page.status, 503);
      assert.match(String(page.body.text), /cannot be reached/);
      const status = await request(agent, `${a.proxyUrl}/_smart_proxy/status/app2/-`);
      assert.equal(status.body.code, 'SP_PROVIDER_UNREACHABLE');
      assert.match(String(status.body.reason), /cannot be reached/);
      assert.equal(status.body.state, 'failed');

      // Half-open after openMs: one trial call; the cloud is still down, so open again, twice as long.
      await clock.advance(5_000);
      const trial = await drive(clock, request(agent, `${a.proxyUrl}/smart_proxy/app3/-/trial`), 35_000);
      assert.equal(trial.value.status, 503);
      assert.equal(trial.value.body.code, 'SP_PROVIDER_UNREACHABLE');
      assert.ok(Number(trial.value.retryAfter) > 5, `reopened for longer: Retry-After ${trial.value.retryAfter}`);

      // The cloud comes back on that port: after the open time, the trial gets through and closes it.
      cloud = await startMockCloud({ host: '127.0.0.1', port, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false, maxLiveVms: 100 });
      await clock.advance(10_000);
      const ok = await drive(clock, request(agent, `${a.proxyUrl}/smart_proxy/app0/-/back`), 35_000);
      assert.equal(ok.value.status, 200, JSON.stringify(ok.value.body));
      const others = await drive(clock, Promise.all([1, 2, 3].map((i) => request(agent, `${a.proxyUrl}/smart_proxy/app${i}/-/back`))), 35_000);
      assert.deepEqual(others.value.map((r) => r.status), [200, 200, 200]);
    } finally {
      await a.close();
      await agent.close();
      await cloud?.close();
    }
  });

  it('a ready resource keeps working while the cloud is down; failed health checks are logged at warn and open the circuit', async () => {
    const port = await freePort();
    const clock = new ManualClock(Date.now());
    const logs: Harness['logs'] = [];
    const audit = new MemoryAuditSink();
    // The API is reached through a TCP relay on `port`; closing the relay takes the API down
    // while the VMs (their own ports) keep running.
    const cloud = await startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false, maxLiveVms: 100 });
    const relay = await tcpRelay(port, Number(new URL(cloud.url).port));
    const a = await app(port, clock, logs, audit, { warm: { provider: 'cloud', healthCheckIntervalMs: 1_000 }, cold: { provider: 'cloud' } });
    const agent = new Agent({ connections: 16 });
    try {
      assert.equal((await drive(clock, request(agent, `${a.proxyUrl}/smart_proxy/warm/-/x`), 35_000)).value.status, 200);
      await relay.close();
      // Three health checks that cannot connect: each logged at warn; the third opens the circuit.
      for (let i = 0; i < 3; i++) {
        const before = logs.length;
        await clock.advance(1_000);
        await drive(clock, waitForLog(logs, before, /health check: provider did not answer/), 5_000);
      }
      assert.ok(logs.some((l) => l.level === 'warn' && /circuit open/.test(l.msg ?? '')));
      const cold = await request(agent, `${a.proxyUrl}/smart_proxy/cold/-/x`);
      assert.equal(cold.status, 503);
      assert.equal(cold.body.code, 'SP_PROVIDER_UNREACHABLE');
      const warm = await request(agent, `${a.proxyUrl}/smart_proxy/warm/-/still`);
      assert.equal(warm.status, 200, 'the ready backend is still forwarded to');
    } finally {
      await a.close();
      await agent.close();
      await relay.close();
      await cloud.close();
    }
  });
});

/** Relays TCP from 127.0.0.1:`port` to `target`; `close()` refuses new connections and cuts open ones. */
async function tcpRelay(port: number, target: number): Promise<{ close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  let closed: Promise<void> | undefined;
  return {
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return closed;
    },
  };
}

/** Resolves once a log line after index `from` matches (checked on every clock step). */
async function waitForLog(logs: Harness['logs'], from: number, re: RegExp): Promise<void> {
  for (let turns = 0; !logs.slice(from).some((l) => l.level === 'warn' && re.test(l.msg ?? '')); turns++) {
    if (turns > 20_000) throw new Error(`no warn log matching ${re}`);
    await new Promise((r) => setImmediate(r));
  }
}
