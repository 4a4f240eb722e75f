/**
 * End to end through the real proxy with a real VM (TCG): a cold request is held until the
 * guest's HTTP service answers, although QEMU's forwarder accepted TCP long before; then the
 * idle VM is suspended to a state file and the next request wakes it by restoring. The wake
 * time is recorded in the test output (t.diagnostic).
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { it } from 'node:test';
import { request } from 'undici';
import { startHarness } from '../helpers/proxy-harness.ts';
import { qemuPidsUnder, qemuSubject, type QemuSubject } from './qemu-fixture.ts';

/** Outcome of one raw TCP connect: resolves with the time it connected, or the error. */
function tcpConnect(port: number): Promise<{ at: number } | { error: string }> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve({ at: Date.now() });
    });
    s.once('error', (err) => resolve({ error: err.message }));
  });
}

/** One HTTP attempt straight at the VM's forwarded port, as a probe would make it. */
async function httpAttempt(port: number, timeoutMs: number): Promise<string> {
  try {
    const res = await request(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(timeoutMs), reset: true });
    await res.body.dump();
    return `status ${res.statusCode}`;
  } catch (err) {
    return `failed: ${(err as Error).message}`;
  }
}

/** Sends a cold request through the proxy while checking the forwarder straight on. */
async function coldRequest(s: QemuSubject, proxyUrl: string): Promise<{ coldMs: number; tcpAfterMs: number }> {
  // While the request is held: as soon as QEMU runs, its forwarded port accepts TCP, but an
  // HTTP request on it gets no answer, because the guest is still booting.
  const early = s.nextEvent('launched').then(async (launched) => {
    const tcp = await tcpConnect(launched.hostPort);
    const http = await httpAttempt(launched.hostPort, 300);
    return { tcp, http, markerSeenBefore: s.events.some((e) => e.type === 'console-marker') };
  });
  const t0 = Date.now();
  const cold = await request(`${proxyUrl}/smart_proxy/vm/-/index.html`, { signal: AbortSignal.timeout(90_000) });
  const coldMs = Date.now() - t0;
  const body = await cold.body.text();
  assert.equal(cold.statusCode, 200, body);
  assert.match(body, /Hello from the test VM/);
  const seen = await early;
  assert.ok('at' in seen.tcp, `the forwarder accepted TCP early: ${JSON.stringify(seen.tcp)}`);
  assert.match(seen.http, /^failed/, 'HTTP did not answer then');
  assert.equal(seen.markerSeenBefore, false, 'that was before the guest printed READY');
  return { coldMs, tcpAfterMs: seen.tcp.at - t0 };
}

const probe = { kind: 'http', path: '/health', expectStatus: [200], timeoutMs: 1_000 } as const;

void it('without a console marker, the core\'s HTTP probe alone holds a cold request until the guest answers', async (t) => {
  const s = await qemuSubject({ consoleReadyMarker: undefined });
  const h = await startHarness({ resources: [{ id: 'vm', provider: s.provider, bootTimeoutMs: 60_000, probe }] });
  try {
    const { coldMs, tcpAfterMs } = await coldRequest(s, h.url);
    // The provider said running at once (QMP), so the probe had to fail before it passed.
    const probeMisses = h.logs.filter((l) => l.msg === 'probe not yet passing').length;
    assert.ok(probeMisses > 0, 'the probe failed while the guest booted');
    t.diagnostic(`cold boot through the proxy (probe only): ${coldMs} ms; TCP accepted ${tcpAfterMs} ms after the request; ${probeMisses} probe misses`);
  } finally {
    await s.teardown();
    await h.close();
  }
});

void it('with the READY marker, a cold request is served after boot; an idle VM is suspended and woken by restore', async (t) => {
  const s = await qemuSubject({ suspendOnStop: true });
  const h = await startHarness({ resources: [{ id: 'vm', provider: s.provider, bootTimeoutMs: 60_000, idleStopMs: 1_500, probe }] });
  try {
    const { coldMs, tcpAfterMs } = await coldRequest(s, h.url);
    const marker = await s.nextEvent('console-marker');
    t.diagnostic(`cold boot through the proxy: ${coldMs} ms (console READY ${marker.afterMs} ms after launch); TCP accepted ${tcpAfterMs} ms after the request`);
    // Idle for idleStopMs: the core stops the instance, the provider saves it to a file.
    const suspended = await s.nextEvent('suspended');
    t.diagnostic(`suspend: ${suspended.suspendMs} ms, state file ${(suspended.stateBytes / 1048576).toFixed(1)} MiB`);
    const inst = [...h.manager.instancesOf('vm')][0];
    assert.ok(inst);
    while (inst.status !== 'stopped') await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(await qemuPidsUnder(s.stateDir), [], 'no QEMU runs while suspended');

    // The next request wakes it from the state file: no second cold boot.
    const markersBefore = s.events.filter((e) => e.type === 'console-marker').length;
    const eventsBefore = s.events.length;
    const t1 = Date.now();
    const warm = await request(`${h.url}/smart_proxy/vm/-/health`, { signal: AbortSignal.timeout(60_000) });
    const wakeMs = Date.now() - t1;
    assert.equal(warm.statusCode, 200);
    assert.equal((await warm.body.text()).trim(), 'ok');
    const restored = await s.nextEvent('restored', undefined, eventsBefore);
    const launch = s.events.slice(eventsBefore).find((e) => e.type === 'launched');
    assert.equal(launch?.type === 'launched' && launch.restore, true, 'the second launch was a restore');
    assert.equal(s.events.filter((e) => e.type === 'console-marker').length, markersBefore, 'the guest did not boot again');
    t.diagnostic(`wake from suspend through the proxy: ${wakeMs} ms (QEMU restore to running: ${restored.wakeMs} ms); cold was ${coldMs} ms`);
  } finally {
    await s.teardown();
    await h.close();
  }
});
