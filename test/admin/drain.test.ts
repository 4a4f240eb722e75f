/**
 * Draining an instance through the admin API: what is in flight finishes, nothing new is
 * forwarded to the drained instance (new requests are held and served by a fresh start after
 * its stop), and the drain's time bound stops it even when a request never ends.
 * Real app, real HTTP on both listeners, backends that are real servers.
 */
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, describe, it } from 'node:test';
import type { Instance } from '../../src/core/resource-manager.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { OPS, startAdminApp, type AdminApp } from './admin-kit.ts';

describe('admin drain', () => {
  let a: AdminApp | undefined;
  afterEach(async () => { await a?.close(); a = undefined; });

  /** A backend that answers with the boot it belongs to, and holds `/slow` until released. */
  function slowBackend(): { mimic: MimicProvider; slow: ServerResponse[]; slowArrived: Promise<void> } {
    const slow: ServerResponse[] = [];
    let arrived!: () => void;
    const slowArrived = new Promise<void>((resolve) => { arrived = resolve; });
    const mimic: MimicProvider = new MimicProvider({
      bootMs: 10,
      handler: (req, res) => {
        if (req.url?.startsWith('/slow') === true) {
          slow.push(res);
          arrived();
          return;
        }
        res.end(`boot ${mimic.calls.start}`);
      },
    });
    return { mimic, slow, slowArrived };
  }

  /** Awaits a condition the test cannot get an event for (a request reaching the hold queue); bounded. */
  async function until(what: string, cond: () => boolean): Promise<void> {
    const end = Date.now() + 5_000;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`not within 5 s: ${what}`);
      await tick();
    }
  }

  const statusOf = (app: AdminApp): Instance['status'][] => [...app.app.manager.instancesOf('app')].map((i) => i.status);

  it('lets the request in flight finish, holds new ones for a fresh start, loses none', async () => {
    const { mimic, slow, slowArrived } = slowBackend();
    a = await startAdminApp({ app: { provider: 'mimic', sharing: 'shared' } }, { mimic });
    const app = a;
    const url = `${app.app.proxyUrl}/smart_proxy/app/g1`;
    const first = await fetch(`${url}/x`, { headers: OPS });
    assert.equal(await first.text(), 'boot 1');
    const inFlight = fetch(`${url}/slow`, { headers: OPS });
    await slowArrived;

    const drained = await fetch(`${app.admin}/api/v1/resources/app/instances/*/drain`, { method: 'POST', headers: OPS, body: '{"timeoutMs": 30000}' });
    assert.equal(drained.status, 202);
    await drained.body?.cancel();
    const inst = [...app.app.manager.instancesOf('app')][0];
    assert.equal(inst?.draining, true);

    // A new request is not forwarded to the draining instance: it is held.
    const later = fetch(`${url}/later`, { headers: OPS });
    await until('the new request is held', () => app.app.manager.heldTotal === 1);
    assert.deepEqual(statusOf(app), ['ready']);
    assert.equal(mimic.calls.stop, 0, 'the drain waits for the request in flight');

    // The request in flight finishes; then the instance stops and starts again for the held one.
    slow[0]?.end('slow done');
    const done = await inFlight;
    assert.equal(done.status, 200);
    assert.equal(await done.text(), 'slow done');
    const served = await later;
    assert.equal(served.status, 200);
    assert.equal(await served.text(), 'boot 2', 'served by a fresh start, not by the drained instance');
    assert.equal(mimic.calls.stop, 1);
    assert.equal(inst?.draining, false, 'the drain ended with the stop');
  });

  it('stops once the drain time is over, even with a request that never ends', async () => {
    const { mimic, slowArrived } = slowBackend();
    a = await startAdminApp({ app: { provider: 'mimic', sharing: 'shared' } }, { mimic });
    const app = a;
    const url = `${app.app.proxyUrl}/smart_proxy/app/g1`;
    assert.equal((await fetch(`${url}/x`, { headers: OPS })).status, 200);
    const stuck = fetch(`${url}/slow`, { headers: OPS }).then((r) => r.text()).catch(() => 'cut');
    await slowArrived;
    const stopped = new Promise<void>((resolve) => {
      const off = app.app.manager.onEvent((e) => {
        if (e.type === 'instance-changed' && e.instance.status === 'stopped') { off(); resolve(); }
      });
    });
    const drained = await fetch(`${app.admin}/api/v1/resources/app/instances/*/drain`, { method: 'POST', headers: OPS, body: '{"timeoutMs": 100}' });
    assert.equal(drained.status, 202);
    await drained.body?.cancel();
    await stopped;
    assert.equal(mimic.calls.stop, 1);
    await stuck;
    // The stop that ends the drain is the operator's, in the audit too.
    await app.app.state.flush();
    const res = await fetch(`${app.admin}/api/v1/audit?resource=app&type=instance-changed`, { headers: OPS });
    const moves = (await res.json() as { items: Array<{ status: string | null; actor: string | null }> }).items;
    assert.deepEqual(moves.filter((e) => e.status === 'stopping' || e.status === 'stopped').map((e) => e.actor), ['admin:ops', 'admin:ops']);
  });

  it('answers 202 and drains nothing for a stopped instance', async () => {
    const { mimic } = slowBackend();
    a = await startAdminApp({ app: { provider: 'mimic', sharing: 'shared' } }, { mimic });
    const app = a;
    assert.equal((await fetch(`${app.app.proxyUrl}/smart_proxy/app/g1/x`, { headers: OPS })).status, 200);
    await app.app.manager.stop([...app.app.manager.instancesOf('app')][0] as Instance, 'test');
    const res = await fetch(`${app.admin}/api/v1/resources/app/instances/*/drain`, { method: 'POST', headers: OPS, body: '{}' });
    assert.equal(res.status, 202);
    await res.body?.cancel();
    assert.equal([...app.app.manager.instancesOf('app')][0]?.draining, false);
    assert.equal(mimic.calls.start, 1);
  });
});
