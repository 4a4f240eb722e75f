/**
 * What the qemu provider does beyond the shared contract, on real VMs (TCG): clear failures
 * (missing kernel, QEMU refusing its command line), the boot gate, re-adoption by a new
 * provider after a "proxy restart", a graceful powerdown through QMP, inspect waiting for a
 * booting VM's change, and suspend with the guest's RAM kept in a file.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { request } from 'undici';
import { ProviderError } from '../../src/core/errors.ts';
import type { InspectResult, InstanceRef, Provider } from '../../src/core/ports.ts';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { vmNameOf } from '../../src/providers/qemu/qemu-provider.ts';
import { qemuPidsUnder, qemuSubject } from './qemu-fixture.ts';

const signal = (): AbortSignal => AbortSignal.timeout(15_000);
const ref = (resourceId: string): InstanceRef => ({ resourceId, instanceKey: '*', groups: [] });

/** Polls inspect (each call awaited, yielding between calls) until one of `states`. */
async function waitFor(p: Provider, r: InstanceRef, states: readonly string[], timeoutMs = 60_000): Promise<InspectResult> {
  const deadline = Date.now() + timeoutMs;
  let last: InspectResult | undefined;
  while (Date.now() < deadline) {
    last = await p.inspect(r, signal());
    if (states.includes(last.state)) return last;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  assert.fail(`${r.resourceId} did not reach ${states.join('|')}; last ${JSON.stringify(last)}`);
}

void describe('qemu provider', () => {
  void it('rejects start with a clear, non-retryable error when the kernel is missing', async () => {
    const s = await qemuSubject({ kernelPath: '/nonexistent/vmlinux' });
    try {
      await assert.rejects(s.provider.start(ref('nokernel'), signal()), (err: unknown) => {
        assert.ok(err instanceof ProviderError);
        assert.equal(err.retryable, false);
        assert.match(err.message, /kernel \/nonexistent\/vmlinux is missing.*build-test-vm\.sh/);
        return true;
      });
      assert.deepEqual(await qemuPidsUnder(s.stateDir), []);
    } finally {
      await s.teardown();
    }
  });

  void it('reports failed with QEMU\'s own message when QEMU refuses to start', async () => {
    const s = await qemuSubject({ extraArgs: ['-device', 'no-such-device-model'] });
    try {
      await s.provider.start(ref('bad'), signal());
      const r = await waitFor(s.provider, ref('bad'), ['failed', 'running']);
      assert.equal(r.state, 'failed');
      assert.match(r.reason ?? '', /no-such-device-model/);
      // The core stops a failed instance; after that the provider forgets it.
      await s.provider.stop(ref('bad'), signal());
      assert.equal((await s.provider.inspect(ref('bad'), signal())).state, 'stopped');
    } finally {
      await s.teardown();
    }
  });

  void it('queues boots past maxConcurrentBoots, is re-adopted after a restart, and powers down cleanly', async () => {
    // Only the marker frees the slot here (not the bootSlotMaxMs fallback, which a loaded host can reach).
    const s = await qemuSubject({ maxConcurrentBoots: 1, bootSlotMaxMs: 120_000 });
    try {
      await s.provider.start(ref('a'), signal());
      await s.provider.start(ref('b'), signal());
      assert.equal(s.provider.queuedBoots, 1, 'the second boot waits for the first');
      assert.equal((await s.provider.inspect(ref('b'), signal())).state, 'starting');
      // The second VM launches only once the first has printed its console marker.
      const markerA = await s.nextEvent('console-marker');
      const launchB = await s.nextEvent('launched', (e) => e.vm !== markerA.vm);
      assert.ok(s.events.indexOf(markerA) < s.events.indexOf(launchB), 'b launched after a booted');
      const a = await waitFor(s.provider, ref('a'), ['running', 'failed']);
      const b = await waitFor(s.provider, ref('b'), ['running', 'failed']);
      assert.equal(a.state, 'running');
      assert.equal(b.state, 'running');
      assert.match(s.provider.consoleText(ref('a')) ?? '', /READY vmid=/);

      // "Proxy restart": the first provider lets go; a new one on the same state dir finds both.
      await s.provider.close();
      const again = s.reopen();
      const listed = await again.list(signal());
      assert.deepEqual(listed.map((l) => `${l.resourceId}:${l.state}`).sort(), ['a:running', 'b:running']);
      assert.equal(listed.find((l) => l.resourceId === 'a')?.endpoint, a.endpoint, 'same forwarded port');
      const res = await request(`${a.endpoint ?? ''}/health`, { signal: signal() });
      assert.equal(res.statusCode, 200);
      assert.equal((await res.body.text()).trim(), 'ok');

      // Stop through the adopting provider: QMP system_powerdown → guest powers off.
      await again.stop(ref('a'), signal());
      const stopLog = s.logs.find((l) => l.msg === 'qemu VM stopped' && l.obj['resource'] === 'a');
      assert.equal(stopLog?.obj['how'], 'powerdown', JSON.stringify(stopLog));
      assert.equal((await again.inspect(ref('a'), signal())).state, 'stopped');
      assert.equal((await qemuPidsUnder(s.stateDir)).length, 1, 'only b is left');
    } finally {
      await s.teardown();
    }
    assert.deepEqual(await qemuPidsUnder(s.stateDir), []);
  });

  void it('inspect waits for a booting VM\'s change (one call sees running); suspend keeps RAM in a file and saves KiB, and the restore is seen in one call too', async () => {
    const s = await qemuSubject({ suspendOnStop: true, inspectHoldMs: 120_000 });
    const r = ref('hold');
    const long = (): AbortSignal => AbortSignal.timeout(120_000);
    try {
      await s.provider.start(r, signal());
      await s.nextEvent('launched');
      // An abort ends the wait at once, with the contract's rejection.
      const ac = new AbortController();
      const held = s.provider.inspect(r, ac.signal);
      setImmediate(() => ac.abort(new Error('caller gone')));
      await assert.rejects(held, /aborted/);
      // One call: it waits through the boot and answers when READY appears.
      const first = await s.provider.inspect(r, long());
      assert.equal(first.state, 'running');
      assert.ok(s.events.some((e) => e.type === 'console-marker'), 'answered after the marker');

      await s.provider.stop(r, signal());
      const suspended = await s.nextEvent('suspended');
      assert.ok(suspended.stateBytes < 1024 * 1024, `device state only: ${suspended.stateBytes} bytes`);
      await access(join(s.stateDir, vmNameOf('hold', '*'), 'ram')); // the guest's memory stays in its file
      assert.deepEqual(await qemuPidsUnder(s.stateDir), [], 'no QEMU runs while suspended');

      const before = s.events.length;
      await s.provider.start(r, signal());
      const woken = await s.provider.inspect(r, long());
      assert.equal(woken.state, 'running');
      // inspect may read QEMU's "running" a moment before the provider's own restore watcher
      // does and reports it: wait for that report (bounded), already made or still coming.
      const restored = await Promise.race([
        s.nextEvent('restored', undefined, before),
        new Promise<never>((_, reject) => { setTimeout(() => reject(new Error('no "restored" event within 30 s')), 30_000).unref(); }),
      ]);
      assert.equal(restored.type, 'restored', 'restored, not booted');
      assert.ok(!s.events.slice(before).some((e) => e.type === 'console-marker'));
      const res = await request(`${woken.endpoint ?? ''}/health`, { signal: signal() });
      assert.equal(res.statusCode, 200);
      await res.body.dump();
    } finally {
      await s.teardown();
    }
    assert.deepEqual(await qemuPidsUnder(s.stateDir), []);
  });
});
