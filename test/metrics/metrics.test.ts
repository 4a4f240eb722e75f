import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ManualClock } from '../../src/core/clock.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { parseScrape } from '../helpers/prometheus.ts';
import { startTestApp, testConfig, until } from './metrics-app.ts';
import { ProviderError } from '../../src/core/errors.ts';
import { makeReady, setup } from '../core/scripted.ts';
import { RawClient } from '../helpers/raw-client.ts';

test('after known traffic the metrics say exactly what happened (parsed as Prometheus text)', async () => {
  const pa = new MimicProvider({ manual: true });
  const pb = new MimicProvider({ bootFails: true });
  const t = await startTestApp(testConfig({
    resources: {
      app: { provider: 'pa' },
      broken: { provider: 'pb', failureCooldownMs: 600_000 },
    },
  }, ['pa', 'pb']), { pa, pb });
  try {
    const { app } = t;
    assert.ok(app.metrics !== undefined);
    const url = (res: string, path = '/x'): string => `${app.proxyUrl}/smart_proxy/${res}/-${path}`;

    // 5 cold requests join one start; the boot finishes only when the test says so.
    const cold = Array.from({ length: 5 }, (_, i) => fetch(url('app', `/cold/${i}`)));
    await until('5 held requests', () => app.manager.heldTotal === 5);
    const during = parseScrape((await app.metrics.render()).body);
    assert.equal(during.value('smart_proxy_held_requests', { resource: 'app' }), 5);
    assert.equal(during.value('smart_proxy_instances', { resource: 'app', state: 'starting' }), 1);
    await pa.release('*');
    const coldRes = await Promise.all(cold);
    for (const r of coldRes) {
      assert.equal(r.status, 200);
      await r.text();
      const woke = r.headers.get('x-smart-proxy-cold-start');
      assert.ok(woke !== null && /^\d+$/.test(woke), `cold-start header on a held request: ${String(woke)}`);
    }
    // 3 warm requests: no cold-start header.
    for (let i = 0; i < 3; i++) {
      const r = await fetch(url('app', `/warm/${i}`));
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('x-smart-proxy-cold-start'), null);
      await r.text();
    }
    // An unknown resource and a resource whose boot fails.
    assert.equal((await fetch(url('nope'))).status, 404);
    const failed = await fetch(url('broken'));
    assert.equal(failed.status >= 500, true);
    await failed.text();
    // The cool-down answers at once, without a second start.
    const coolingDown = await fetch(url('broken'));
    assert.equal(coolingDown.status, 503);
    await coolingDown.text();
    // An operator stop.
    const inst = [...app.manager.instancesOf('app')][0];
    assert.ok(inst !== undefined);
    await app.manager.stop(inst, 'operator request');

    const rendered = await app.metrics.render();
    assert.match(rendered.contentType, /^text\/plain; version=0\.0\.4/);
    const s = parseScrape(rendered.body);
    assert.equal(s.type('smart_proxy_boot_duration_seconds'), 'HISTOGRAM');
    assert.equal(s.value('smart_proxy_instance_starts_total', { resource: 'app' }), 1);
    assert.equal(s.value('smart_proxy_instance_starts_total', { resource: 'broken' }), 1);
    assert.equal(s.value('smart_proxy_boot_duration_seconds_count', { resource: 'app', provider: 'pa' }), 1);
    assert.equal(s.value('smart_proxy_boot_duration_seconds_bucket', { resource: 'app', provider: 'pa', le: '600' }), 1);
    assert.equal(s.value('smart_proxy_boot_duration_seconds_count', { resource: 'broken', provider: 'pb' }), undefined, 'a failed boot is not a boot duration');
    assert.equal(s.value('smart_proxy_hold_duration_seconds_count', { resource: 'app', outcome: 'ready' }), 5);
    assert.equal(s.value('smart_proxy_hold_duration_seconds_count', { resource: 'broken', outcome: 'failed' }), 2);
    assert.equal(s.value('smart_proxy_requests_total', { resource: 'app', status_class: '2xx' }), 8);
    assert.equal(s.value('smart_proxy_requests_total', { resource: '_unrouted', status_class: '4xx' }), 1);
    assert.equal(s.value('smart_proxy_requests_total', { resource: 'broken', status_class: '5xx' }), 2);
    assert.equal(s.value('smart_proxy_warm_forward_duration_seconds_count', { resource: 'app' }), 3);
    assert.equal(s.value('smart_proxy_instance_failures_total', { resource: 'broken', cause: 'SP_START_FAILED' }), 1);
    assert.equal(s.value('smart_proxy_circuit_open', { resource: 'broken' }), 1);
    assert.equal(s.value('smart_proxy_circuit_open', { resource: 'app' }), 0);
    assert.equal(s.value('smart_proxy_instance_stops_total', { resource: 'app', cause: 'operator' }), 1);
    assert.equal(s.value('smart_proxy_instances', { resource: 'app', state: 'stopped' }), 1);
    assert.equal(s.value('smart_proxy_instances', { resource: 'app', state: 'ready' }), 0);
    assert.equal(s.value('smart_proxy_instances', { resource: 'broken', state: 'failed' }), 1);
    assert.equal(s.value('smart_proxy_held_requests', { resource: 'app' }), 0);
    // Provider calls: exactly one start of each, timed; the stop too.
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'pa', operation: 'start', outcome: 'ok' }), 1);
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'pa', operation: 'stop', outcome: 'ok' }), 1);
    assert.equal(pa.calls.start, 1);
    const inspects = s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'pa', operation: 'inspect', outcome: 'ok' });
    assert.equal(inspects, pa.calls.inspect);
    // Event-loop delay and process metrics are there.
    assert.ok((s.value('smart_proxy_event_loop_delay_seconds', { quantile: '0.99' }) ?? -1) >= 0);
    assert.ok((s.value('process_resident_memory_bytes') ?? 0) > 0);
    // Bounded labels: no path, user or group ever appears as a label value.
    for (const f of s.families) {
      for (const m of f.metrics) {
        for (const v of Object.values(m.labels ?? {})) assert.ok(!/cold|warm|g1|\//.test(v), `label value ${v} of ${f.name}`);
      }
    }
  } finally {
    await t.close();
  }
});

test('provider errors are counted by kind, and resources past maxResourceLabels share "_other"', async () => {
  const flaky = new MimicProvider({ failStarts: 1 });
  const t = await startTestApp(testConfig({
    metrics: { maxResourceLabels: 1 },
    resources: { first: { provider: 'p' }, second: { provider: 'p' } },
  }, ['p']), { p: flaky });
  try {
    const { app } = t;
    assert.ok(app.metrics !== undefined);
    const r = await fetch(`${app.proxyUrl}/smart_proxy/second/-/x`);
    assert.equal(r.status, 200);
    await r.text();
    const s = parseScrape((await app.metrics.render()).body);
    assert.equal(s.value('smart_proxy_provider_errors_total', { provider: 'p', operation: 'start', kind: 'retryable' }), 1);
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'p', operation: 'start', outcome: 'error' }), 1);
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'p', operation: 'start', outcome: 'ok' }), 1);
    assert.equal(s.value('smart_proxy_instance_starts_total', { resource: '_other' }), 1);
    assert.equal(s.value('smart_proxy_instance_starts_total', { resource: 'second' }), undefined);
    assert.deepEqual(s.samples('smart_proxy_instances').map(([l]) => l.resource).filter((v, i, a) => a.indexOf(v) === i).sort(), ['_other', 'first']);
  } finally {
    await t.close();
  }
});

test('an inline provider is labelled by its kind, not by its resource: the provider label stays bounded with thousands of resources', async () => {
  const t = await startTestApp(testConfig({
    resources: {
      a: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:9' } },
      b: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:9' } },
      c: { provider: 'p' },
    },
  }, ['p']), { 'a:inline': new MimicProvider(), 'b:inline': new MimicProvider(), p: new MimicProvider() });
  try {
    const { app } = t;
    assert.ok(app.metrics !== undefined);
    for (const id of ['a', 'b', 'c']) {
      const r = await fetch(`${app.proxyUrl}/smart_proxy/${id}/-/x`);
      assert.equal(r.status, 200);
      await r.text();
    }
    const s = parseScrape((await app.metrics.render()).body);
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'static:inline', operation: 'start', outcome: 'ok' }), 2);
    assert.equal(s.value('smart_proxy_provider_call_duration_seconds_count', { provider: 'p', operation: 'start', outcome: 'ok' }), 1);
    assert.equal(s.value('smart_proxy_boot_duration_seconds_count', { resource: 'a', provider: 'static:inline' }), 1);
    assert.equal(s.value('smart_proxy_boot_duration_seconds_count', { resource: 'c', provider: 'p' }), 1);
    const providers = new Set([...s.samples('smart_proxy_provider_call_duration_seconds_count'), ...s.samples('smart_proxy_boot_duration_seconds_count')].map(([l]) => l.provider));
    assert.deepEqual([...providers].sort(), ['p', 'static:inline']);
  } finally {
    await t.close();
  }
});

test('metrics and the cold-start header can be turned off; the header can be renamed', async () => {
  const p = new MimicProvider();
  const off = await startTestApp(testConfig({ metrics: { enabled: false }, coldStartHeader: { enabled: false }, resources: { app: { provider: 'p' } } }, ['p']), { p });
  try {
    assert.equal(off.app.metrics, undefined);
    const r = await fetch(`${off.app.proxyUrl}/smart_proxy/app/-/x`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-smart-proxy-cold-start'), null);
    await r.text();
  } finally {
    await off.close();
  }
  const p2 = new MimicProvider();
  const renamed = await startTestApp(testConfig({ coldStartHeader: { name: 'X-Cold-Start-Ms' }, resources: { app: { provider: 'p' } } }, ['p']), { p: p2 });
  try {
    const r = await fetch(`${renamed.app.proxyUrl}/smart_proxy/app/-/x`);
    assert.match(r.headers.get('x-cold-start-ms') ?? '', /^\d+$/);
    await r.text();
  } finally {
    await renamed.close();
  }
});

test('the event-loop sampler runs while there is work and stops when the proxy is idle (no wake-ups at idle)', async () => {
  const p = new MimicProvider();
  const t = await startTestApp(testConfig({ resources: { app: { provider: 'p' } } }, ['p']), { p });
  // A second Metrics on the same manager, its quiet period (400 ms) on a clock the test drives.
  const clock = new ManualClock();
  const m = new Metrics({ manager: t.app.manager, clock, resources: [{ id: 'app', provider: 'p' }], maxResourceLabels: 10, loopSampleAfterWorkMs: 400 });
  const block = (ms: number): void => {
    const end = performance.now() + ms;
    while (performance.now() < end) { /* the event loop is blocked: the stimulus, not a wait */ }
  };
  // Enough turns of the loop for an overdue timer (the sampler's 20 ms tick) to have run
  // (timers run once per turn, before setImmediate callbacks).
  const turns = async (): Promise<void> => { for (let i = 0; i < 3; i++) await nextTurn(); };
  try {
    const maxDelay = async (): Promise<number> => parseScrape((await m.render()).body).value('smart_proxy_event_loop_delay_seconds', { quantile: '1' }) ?? -1;
    assert.equal(m.sampling, true, 'on at start (start-up is work)');
    await clock.advance(399);
    assert.equal(m.sampling, true, 'on through the quiet period');
    await clock.advance(1);
    assert.equal(m.sampling, false, 'off once a quiet period passed with no work');
    await maxDelay(); // resets the window
    // Work: a request (a start, then the response) turns it on again.
    const r = await fetch(`${t.app.proxyUrl}/smart_proxy/app/-/x`);
    assert.equal(r.status, 200);
    await r.text();
    assert.equal(m.sampling, true, 'on again with traffic');
    // A blocked loop while there is work is seen (the point of the metric). Node's sampler
    // records from its second tick on (it measures between ticks): await its first sample.
    await until('the sampler has taken a sample', () => m.loopSampleCount > 0);
    const before = m.loopSampleCount;
    block(150);
    await until('the sampler ran again after the block', () => m.loopSampleCount > before);
    const seen = await maxDelay();
    assert.ok(seen >= 0.1, `a 150 ms block shows as at least 0.1 s: ${seen}`);
    // The scrape restarted the window: a sample after it, so that a running sampler would see
    // the next block.
    await until('a sample after the scrape', () => m.loopSampleCount > 0);
    await clock.advance(400);
    assert.equal(m.sampling, false, 'off again a quiet period after the work');
    // The same block at idle is not sampled: the sampler is off.
    const samples = m.loopSampleCount;
    block(150);
    await turns();
    assert.equal(m.loopSampleCount, samples, 'no sample while off');
    const idle = await maxDelay();
    assert.ok(idle < 0.1, `the block at idle is not seen: ${idle}`);
  } finally {
    m.close();
    await t.close();
  }
});

test('a stop that fails counts as a failure (stop_failed), not as a stop', async () => {
  const s = setup();
  const metrics = new Metrics({ manager: s.manager, clock: s.clock, resources: [{ id: 'r', provider: 'scripted' }], maxResourceLabels: 10 });
  try {
    const inst = await makeReady(s);
    s.provider.stopErrors = [new ProviderError('DELETE refused', { retryable: false })];
    await s.manager.stop(inst, 'idle for 60000 ms');
    const m = parseScrape((await metrics.render()).body);
    assert.equal(m.value('smart_proxy_instance_failures_total', { resource: 'r', cause: 'stop_failed' }), 1);
    assert.equal(m.value('smart_proxy_instance_stops_total', { resource: 'r', cause: 'idle' }), undefined);
    assert.equal(m.value('smart_proxy_instance_stops_total', { resource: 'r', cause: 'other' }), undefined);
  } finally {
    metrics.close();
    s.manager.close();
  }
});

test('a refused body drained after its answer is counted: outcome and discarded bytes', async () => {
  const pa = new MimicProvider();
  const t = await startTestApp(testConfig({ resources: { app: { provider: 'pa' } } }, ['pa']), { pa });
  try {
    const { app } = t;
    assert.ok(app.metrics !== undefined);
    const c = await RawClient.open(app.proxyUrl);
    const closed = new Promise<void>((resolve) => c.socket.once('close', () => resolve()));
    // TRACE is refused (405) before anything reads its body; the client sends it all the same.
    c.write(`TRACE /smart_proxy/app/-/x HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n`);
    c.write(Buffer.alloc(100_000, 0x61));
    assert.equal((await c.response()).status, 405);
    await closed;
    await until('the drain to end', () => app.proxy.lingering.active === 0);
    const m = parseScrape((await app.metrics.render()).body);
    assert.equal(m.value('smart_proxy_refused_body_drains_total', { outcome: 'drained' }), 1);
    assert.equal(m.value('smart_proxy_refused_body_discarded_bytes_total', {}), 100_000);
  } finally {
    await t.close();
  }
});
