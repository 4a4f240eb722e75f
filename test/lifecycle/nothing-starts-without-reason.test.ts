/**
 * Issue 11 item 8: nothing starts without a reason. The whole proxy (startApp) on the mock
 * cloud over real sockets, ManualClock for the health-check timer. A VM removed behind the
 * proxy's back is marked stopped by the health check and not started again, unless a request
 * waits or a keep-warm floor asks; such a start is audited as the system's, not as the last
 * user's.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Agent } from 'undici';
import { MemoryAuditSink, type AuditEvent } from '../../src/access/audit.ts';
import { parseConfig } from '../../src/config/load.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { startApp, type App } from '../../src/main.ts';
import { startMockCloud, type MockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';

async function drive<T>(clock: ManualClock, p: Promise<T>, maxMs = 35_000): Promise<T> {
  let done = false;
  const settled = p.finally(() => { done = true; });
  for (let advanced = 0; !done && advanced < maxMs; advanced += 25) await clock.advance(25);
  return settled;
}

async function setup(resource: object): Promise<{ app: App; cloud: MockCloud; clock: ManualClock; audit: MemoryAuditSink; logs: Harness['logs'] }> {
  const cloud = await startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false, maxLiveVms: 100 });
  const clock = new ManualClock(Date.now());
  const audit = new MemoryAuditSink();
  const logs: Harness['logs'] = [];
  const config = parseConfig(JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    state: { kind: 'memory', flushIntervalMs: 1_000 },
    providers: { cloud: { kind: 'atmosphere', baseUrl: cloud.url, requestTimeoutMs: 2_000 } },
    resourceDefaults: { bootTimeoutMs: 30_000, pollIntervalMinMs: 10, pollIntervalMaxMs: 50, probeIntervalMs: 10, access: { public: true } },
    resources: { app: { provider: 'cloud', healthCheckIntervalMs: 1_000, idleStopMs: 0, ...resource } },
  }));
  const app = await startApp(config, { clock, logger: collectingLogger(logs), audit });
  return { app, cloud, clock, audit, logs };
}

const starts = (audit: MemoryAuditSink): Array<Extract<AuditEvent, { type: 'start' }>> =>
  audit.events.filter((e): e is Extract<AuditEvent, { type: 'start' }> => e.type === 'start');

describe('nothing starts without a reason', () => {
  it('a health check that finds the VM gone marks it stopped and starts nothing; the next request starts it', async () => {
    const { app, cloud, clock, audit } = await setup({});
    const agent = new Agent();
    try {
      const first = await drive(clock, fetch(`${app.proxyUrl}/smart_proxy/app/-/a`, { dispatcher: agent }));
      assert.equal(first.status, 200);
      await first.text();
      const vm = cloud.vms().find((v) => v.state === 'running');
      assert.ok(vm !== undefined);
      await cloud.stopVm(vm.id, 'removed behind the proxy\'s back');
      await drive(clock, waitForStatus(app, 'stopped'), 5_000);
      // Time goes on: health checks are not scheduled for a stopped instance; nothing starts.
      await clock.advance(10_000);
      assert.equal(cloud.stats.spans, 1, 'no second start');
      assert.equal(starts(audit).length, 1);
      const again = await drive(clock, fetch(`${app.proxyUrl}/smart_proxy/app/-/b`, { dispatcher: agent }));
      assert.equal(again.status, 200, 'a request starts it again');
      await again.text();
      assert.equal(cloud.stats.spans, 2);
      assert.notEqual(starts(audit)[1]?.actor?.via, 'system', 'that start is the request\'s');
    } finally {
      await app.close();
      await agent.close();
      await cloud.close();
    }
  });

  it('with a keep-warm floor it is started again, and the audit names the system as the actor', async () => {
    const { app, cloud, clock, audit } = await setup({ keepWarm: { minInstances: 1 } });
    const agent = new Agent();
    try {
      const first = await drive(clock, fetch(`${app.proxyUrl}/smart_proxy/app/-/a`, { dispatcher: agent }));
      assert.equal(first.status, 200);
      await first.text();
      assert.equal(starts(audit).length, 1);
      assert.equal(starts(audit)[0]?.actor?.via, 'system', 'keep-warm started it at start-up');
      const vm = cloud.vms().find((v) => v.state === 'running');
      assert.ok(vm !== undefined);
      await cloud.stopVm(vm.id, 'removed behind the proxy\'s back');
      await drive(clock, waitFor(() => cloud.stats.spans === 2), 5_000);
      await drive(clock, waitForStatus(app, 'ready'), 5_000);
      const second = starts(audit)[1];
      assert.equal(second?.actor?.via, 'system', `restart audited as the system's: ${JSON.stringify(second)}`);
      assert.equal(second.actor.user, undefined);
    } finally {
      await app.close();
      await agent.close();
      await cloud.close();
    }
  });
});

async function waitFor(cond: () => boolean): Promise<void> {
  for (let turns = 0; !cond(); turns++) {
    if (turns > 20_000) throw new Error('condition never held');
    await new Promise((r) => setImmediate(r));
  }
}

function waitForStatus(app: App, status: string): Promise<void> {
  return waitFor(() => [...app.manager.instancesOf('app')].some((i) => i.status === status));
}
