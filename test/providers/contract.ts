/**
 * The provider contract suite: one node:test test per rule written on `Provider` in
 * src/core/ports.ts. Every provider (atmosphere, process, qemu, docker, http…) runs it:
 *
 * ```ts
 * import { providerContract } from './contract.ts';
 * providerContract('process', async () => {
 *   const provider = createProcessProvider({ ... });
 *   return {
 *     provider,
 *     makeRef: (i) => ({ resourceId: `r${i}`, instanceKey: '*', groups: [] }),
 *     countInstances: async () => countChildren(),
 *     teardown: async () => { await provider.close?.(); },
 *   };
 * });
 * ```
 *
 * `setup` runs once per test, so that every test starts from an empty backend; `teardown`
 * must stop whatever the test left running and release every handle. The suite never sleeps:
 * it polls `inspect`, awaiting each call, within a bounded deadline.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as pause } from 'node:timers/promises';
import { request } from 'undici';
import type { InspectResult, InstanceRef, Provider } from '../../src/core/ports.ts';

export interface ContractSubject {
  provider: Provider;
  /** Distinct `i` give distinct instances (different resource or instance key). */
  makeRef: (i: number) => InstanceRef;
  /** How many instances the backend holds that are starting or running (machines, processes…). */
  countInstances: () => Promise<number>;
  /** Stops what the test left running and releases every handle (the provider's close included). */
  teardown: () => Promise<void>;
  /**
   * Optional: holds every boot from now on before the backend answers, until the returned
   * function is called. With it the suite checks deterministically that `start` resolves
   * before the backend is healthy; without it that check is skipped.
   */
  holdBoots?: (() => () => void) | undefined;
  /** Bound on reaching `running` (default 10 000 ms). */
  readyTimeoutMs?: number;
  /**
   * Set (with the reason) by a provider that fronts one backend for every instance by design
   * (`static`): per-user isolation is then the backend's own job, and that test is skipped.
   */
  oneBackendForAll?: string | undefined;
}

/** Registers the contract tests for one provider under `describe('<name> provider contract')`. */
export function providerContract(name: string, setup: () => Promise<ContractSubject>): void {
  void describe(`${name} provider contract`, () => {
    void it('inspect says stopped (not an error) for an instance it does not know', async () => {
      await withSubject(setup, async ({ provider, makeRef }) => {
        const result = await provider.inspect(makeRef(900), fresh());
        assert.equal(result.state, 'stopped');
      });
    });

    void it('start resolves once accepted, before the backend is healthy', async (t) => {
      await withSubject(setup, async (s) => {
        if (s.holdBoots === undefined) {
          t.skip('subject has no holdBoots()');
          return;
        }
        const release = s.holdBoots();
        let ref = s.makeRef(1);
        try {
          ref = withHandle(ref, await s.provider.start(ref, fresh()));
          const seen = await s.provider.inspect(ref, fresh());
          assert.equal(seen.state, 'starting', 'a held boot is not running yet');
        } finally {
          release();
        }
        const running = await waitForRunning(s, ref);
        assert.ok(running.endpoint);
      });
    });

    void it('start is idempotent for the same instanceKey: one instance', async () => {
      await withSubject(setup, async (s) => {
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        assert.equal(await s.countInstances(), 1, 'second start while starting');
        ref = withHandle(ref, await waitForRunning(s, ref));
        await s.provider.start(ref, fresh());
        assert.equal(await s.countInstances(), 1, 'third start while running');
        // The core may also call without the handle (e.g. before it recorded it).
        await s.provider.start(s.makeRef(1), fresh());
        assert.equal(await s.countInstances(), 1, 'start without the handle');
      });
    });

    void it('distinct instance refs get distinct instances', async () => {
      await withSubject(setup, async (s) => {
        await s.provider.start(s.makeRef(1), fresh());
        await s.provider.start(s.makeRef(2), fresh());
        assert.equal(await s.countInstances(), 2);
      });
    });

    void it('reaches running with an endpoint that answers HTTP (after probing, as the core does)', async () => {
      await withSubject(setup, async (s) => {
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        const running = await waitForRunning(s, ref);
        assert.ok(running.endpoint, 'running carries an endpoint');
        const url = new URL(running.endpoint);
        assert.ok(url.protocol === 'http:' || url.protocol === 'https:', `endpoint ${running.endpoint} is http(s)`);
        // Running is not ready: a process or a VM forwarder may say running before its
        // service listens. Probe the endpoint on fresh connections, as the core does.
        const deadline = Date.now() + (s.readyTimeoutMs ?? 10_000);
        let last: unknown;
        for (;;) {
          try {
            const res = await request(url, { signal: AbortSignal.timeout(1000), reset: true });
            await res.body.dump();
            assert.ok(res.statusCode >= 100 && res.statusCode < 600);
            return;
          } catch (err) {
            last = err;
          }
          if (Date.now() > deadline) assert.fail(`endpoint never answered HTTP: ${String(last)}`);
          await pause(20);
        }
      });
    });

    void it('stop is idempotent: stops a running instance, twice, and an unknown one', async () => {
      await withSubject(setup, async (s) => {
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        ref = withHandle(ref, await waitForRunning(s, ref));
        await s.provider.stop(ref, fresh());
        await s.provider.stop(ref, fresh());
        assert.equal(await s.countInstances(), 0, 'nothing left running');
        const after = await waitForState(s, ref, ['stopped']);
        assert.equal(after.state, 'stopped');
        await s.provider.stop(s.makeRef(901), fresh());
      });
    });

    void it('stop while starting resolves and leaves nothing running', async () => {
      await withSubject(setup, async (s) => {
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        await s.provider.stop(ref, fresh());
        assert.equal((await waitForState(s, ref, ['stopped'])).state, 'stopped');
        assert.equal(await s.countInstances(), 0);
      });
    });

    void it('start after stop starts it again', async () => {
      await withSubject(setup, async (s) => {
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        ref = withHandle(ref, await waitForRunning(s, ref));
        await s.provider.stop(ref, fresh());
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        await waitForRunning(s, ref);
        assert.equal(await s.countInstances(), 1);
      });
    });

    void it('every call rejects promptly on an aborted signal, and does nothing', async () => {
      await withSubject(setup, async (s) => {
        const ref = s.makeRef(1);
        const calls: [string, (signal: AbortSignal) => Promise<unknown>][] = [
          ['start', (signal) => s.provider.start(ref, signal)],
          ['inspect', (signal) => s.provider.inspect(ref, signal)],
          ['stop', (signal) => s.provider.stop(ref, signal)],
        ];
        const list = s.provider.list?.bind(s.provider);
        if (list) calls.push(['list', (signal) => list(signal)]);
        for (const [what, call] of calls) {
          const controller = new AbortController();
          controller.abort();
          const started = performance.now();
          await assert.rejects(call(controller.signal), `${what} rejects`);
          assert.ok(performance.now() - started < 1000, `${what} rejected promptly`);
        }
        assert.equal(await s.countInstances(), 0, 'an aborted start started nothing');
      });
    });

    void it('sharing: user: alice is never handed carol\'s instance, even when carol\'s groups are a subset of hers', async (t) => {
      await withSubject(setup, async (s) => {
        if (s.oneBackendForAll !== undefined) {
          t.skip(s.oneBackendForAll);
          return;
        }
        const base = s.makeRef(1);
        const userRef = (user: string, groups: string[]): InstanceRef => ({ resourceId: base.resourceId, instanceKey: `user:${user}`, groups, user });
        let carol = userRef('carol', base.groups.length > 0 ? [...base.groups] : ['g1']);
        let alice = userRef('alice', [...carol.groups, 'zz-more'].sort());
        let carolStarted: boolean;
        try {
          carol = withHandle(carol, await s.provider.start(carol, fresh()));
          carolStarted = true;
        } catch (err) {
          // A provider that cannot keep users apart must refuse clearly, never share.
          assert.equal((err as { retryable?: unknown }).retryable, false, `refused with a non-retryable error: ${String(err)}`);
          carolStarted = false;
        }
        if (!carolStarted) {
          const seen = await s.provider.inspect(alice, fresh());
          assert.notEqual(seen.state, 'running', 'a provider that refuses user instances reports none running');
          await assert.rejects(s.provider.start(alice, fresh()));
          return;
        }
        const carolRunning = await waitForRunning(s, carol);
        carol = withHandle(carol, carolRunning);
        // Before alice starts: her instance is not carol's running one.
        const before = await s.provider.inspect(alice, fresh());
        assert.notEqual(before.state, 'running', `alice's unstarted instance reported running (at ${before.endpoint ?? '?'}): carol's?`);
        alice = withHandle(alice, await s.provider.start(alice, fresh()));
        const aliceRunning = await waitForRunning(s, alice);
        assert.notEqual(aliceRunning.endpoint, carolRunning.endpoint, 'alice got carol\'s endpoint');
        if (aliceRunning.handle !== undefined && carolRunning.handle !== undefined) assert.notEqual(aliceRunning.handle, carolRunning.handle);
        assert.equal(await s.countInstances(), 2, 'one instance each');
        // Stopping alice's leaves carol's running.
        await s.provider.stop(withHandle(alice, aliceRunning), fresh());
        assert.equal((await s.provider.inspect(carol, fresh())).state, 'running');
      });
    });

    void it('list (when implemented) includes a running instance under its resource and key', async (t) => {
      await withSubject(setup, async (s) => {
        if (s.provider.list === undefined) {
          t.skip('provider has no list()');
          return;
        }
        let ref = s.makeRef(1);
        ref = withHandle(ref, await s.provider.start(ref, fresh()));
        await waitForRunning(s, ref);
        const listed = await s.provider.list(fresh());
        const mine = listed.find((l) => l.resourceId === ref.resourceId && l.instanceKey === ref.instanceKey);
        assert.ok(mine, `listed: ${JSON.stringify(listed)}`);
        assert.equal(mine.state, 'running');
        assert.ok(mine.endpoint);
        assert.ok(!listed.some((l) => l.resourceId === s.makeRef(902).resourceId && l.instanceKey === s.makeRef(902).instanceKey));
      });
    });
  });
}

async function withSubject(setup: () => Promise<ContractSubject>, body: (s: ContractSubject) => Promise<void>): Promise<void> {
  const subject = await setup();
  try {
    await body(subject);
  } finally {
    await subject.teardown();
  }
}

/** A signal for a call the test does not mean to abort, bounded so that a hung call fails the test. */
function fresh(): AbortSignal {
  return AbortSignal.timeout(10_000);
}

/** What the core does: carry the handle a provider returned into later calls. */
function withHandle(ref: InstanceRef, result: { readonly handle?: string | undefined }): InstanceRef {
  return result.handle === undefined ? ref : { ...ref, handle: result.handle };
}

/** Polls inspect (awaiting each call) until running; fails on failed or past the deadline. */
async function waitForRunning(s: ContractSubject, ref: InstanceRef): Promise<InspectResult & { endpoint: string }> {
  const result = await waitForState(s, ref, ['running', 'failed']);
  assert.equal(result.state, 'running', `instance failed: ${result.reason ?? ''}`);
  assert.ok(result.endpoint, 'running carries an endpoint');
  return { ...result, endpoint: result.endpoint };
}

async function waitForState(s: ContractSubject, ref: InstanceRef, states: readonly string[]): Promise<InspectResult> {
  const deadline = performance.now() + (s.readyTimeoutMs ?? 10_000);
  let last: InspectResult | undefined;
  while (performance.now() < deadline) {
    last = await s.provider.inspect(ref, fresh());
    if (states.includes(last.state)) return last;
    // Yield to timers between polls so the backend's own work (boot timers) can run.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  assert.fail(`instance ${ref.resourceId}/${ref.instanceKey} did not reach ${states.join('|')} in time; last: ${JSON.stringify(last)}`);
}
