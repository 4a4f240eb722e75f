/**
 * Stops owed for instances out of service, over the admin API of a real app: listed with their
 * tries, next try and last error; a stop whose tries ran out stays listed (and audited) as
 * given up; an operator retries now or lets it go (audited with the actor); the gauges count
 * them. Real clock: the operator's "retry now" makes each try, so nothing waits 30 s.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { actionResultSchema, auditPageSchema, instanceViewSchema, problemSchema, stopRetryListSchema, type InstanceView } from '../../src/admin/schemas.ts';
import { LEFTOVER_MAX_ATTEMPTS } from '../../src/core/leftover-stops.ts';
import { StubbornProvider } from '../helpers/mimic-provider.ts';
import { OPS, readSse, startAdminApp, type AdminApp } from './admin-kit.ts';

describe('admin API: stops owed for instances out of service', () => {
  let a: AdminApp;
  const cloud = new StubbornProvider({ bootMs: 10 });
  const api = (path: string, init: RequestInit = {}): Promise<Response> => fetch(`${a.admin}${path}`, { ...init, headers: { ...OPS, ...(init.headers as Record<string, string> | undefined) } });
  const post = (path: string): Promise<Response> => api(path, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
  const base = '/api/v1/resources/app/instances/%2A';
  /** Follows the live stream until the instance view satisfies `until` (the stream is opened before `act`). */
  const instanceUntil = async (act: () => Promise<void>, until: (i: InstanceView) => boolean): Promise<InstanceView> => {
    const stream = await api('/api/v1/events');
    await act();
    const seen = await readSse(stream, (event, data) => event === 'instance' && until(instanceViewSchema.parse(data)));
    return instanceViewSchema.parse(seen.at(-1)?.data);
  };
  const metric = async (name: string): Promise<number | undefined> => {
    const text = await (await api('/metrics')).text();
    const m = new RegExp(`^${name}\\{resource="app"\\} (\\d+)$`, 'm').exec(text);
    return m === null ? undefined : Number(m[1]);
  };

  before(async () => {
    a = await startAdminApp({ app: { provider: 'cloud', sharing: 'shared', idleStopMs: 600_000 } }, { cloud });
  });
  after(async () => { await a?.close(); });

  it('a failed stop is listed with its tries, next try and last error, and counted; retry now makes a try at once', async () => {
    assert.equal((await post('/api/v1/resources/app/start')).status, 202);
    await readSse(await api(`${base}/events`), (e) => e === 'ready' || e === 'failed');
    cloud.refuse = true;
    const owed = await instanceUntil(async () => {
      assert.equal((await post(`${base}/stop`)).status, 202);
    }, (i) => i.stopRetry !== null);
    assert.equal(owed.state, 'stopped');
    assert.equal(owed.stopRetry?.state, 'scheduled');
    assert.equal(owed.stopRetry?.attempts, 1);
    assert.equal(owed.stopRetry?.maxAttempts, LEFTOVER_MAX_ATTEMPTS);
    assert.equal(owed.stopRetry?.lastError, 'DELETE refused (#1)');
    const next = Date.parse(owed.stopRetry?.nextAttemptAt ?? '');
    assert.ok(next - Date.now() > 20_000 && next - Date.now() <= 30_000, `next try in about 30 s: ${owed.stopRetry?.nextAttemptAt}`);

    const list = stopRetryListSchema.parse(await (await api('/api/v1/stop-retries')).json());
    assert.deepEqual({ pending: list.pending, givenUp: list.givenUp, n: list.items.length }, { pending: 1, givenUp: 0, n: 1 });
    assert.deepEqual({ r: list.items[0]?.resource, k: list.items[0]?.instanceKey, s: list.items[0]?.instanceState }, { r: 'app', k: '*', s: 'stopped' });
    assert.equal(await metric('smart_proxy_stops_pending_retry'), 1);
    assert.equal(await metric('smart_proxy_stops_given_up'), 0);

    const tried = await instanceUntil(async () => {
      const res = await post(`${base}/retry-stop`);
      assert.equal(res.status, 202);
      assert.equal(actionResultSchema.parse(await res.json()).instance.stopRetry?.state, 'running', 'the try is in flight');
    }, (i) => i.stopRetry?.attempts === 2);
    assert.equal(tried.stopRetry?.lastError, 'DELETE refused (#2)');
    assert.equal(cloud.refusals, 2);
  });

  it('tries that ran out stay listed as given up and audited; a retry now that succeeds clears it; nothing left to let go is a 409', async () => {
    let view: InstanceView | undefined;
    for (let attempt = 3; attempt <= LEFTOVER_MAX_ATTEMPTS; attempt++) {
      view = await instanceUntil(async () => {
        assert.equal((await post(`${base}/retry-stop`)).status, 202);
      }, (i) => i.stopRetry?.attempts === attempt);
    }
    assert.equal(view?.stopRetry?.state, 'given-up');
    assert.equal(view?.stopRetry?.nextAttemptAt, null);
    assert.ok(view?.stopRetry?.gaveUpAt !== null);
    const list = stopRetryListSchema.parse(await (await api('/api/v1/stop-retries')).json());
    assert.deepEqual({ pending: list.pending, givenUp: list.givenUp }, { pending: 0, givenUp: 1 });
    assert.equal(await metric('smart_proxy_stops_given_up'), 1);
    assert.equal(await metric('smart_proxy_stops_pending_retry'), 0);
    await a.app.state.flush();
    const gaveUp = auditPageSchema.parse(await (await api('/api/v1/audit?type=stop-retry-given-up')).json());
    assert.match(gaveUp.items[0]?.reason ?? '', /gave up after 6 tries \(DELETE refused \(#6\)\); the machine may still be running/);
    const retried = auditPageSchema.parse(await (await api('/api/v1/audit?type=admin-retry-stop')).json());
    assert.equal(retried.items.length, LEFTOVER_MAX_ATTEMPTS - 1);
    assert.equal(retried.items[0]?.actor, 'admin:ops');

    cloud.refuse = false;
    const done = await instanceUntil(async () => {
      assert.equal((await post(`${base}/retry-stop`)).status, 202);
    }, (i) => i.stopRetry === null);
    assert.equal(done.state, 'stopped');
    const none = await post(`${base}/abandon-stop`);
    assert.equal(none.status, 409);
    assert.equal(problemSchema.parse(await none.json()).code, 'SP_ADMIN_CONFLICT');
    assert.equal(stopRetryListSchema.parse(await (await api('/api/v1/stop-retries')).json()).items.length, 0);
  });

  it('let go: the operator takes the machine over; audited with what was owed', async () => {
    assert.equal((await post('/api/v1/resources/app/start')).status, 202);
    await readSse(await api(`${base}/events`), (e) => e === 'ready' || e === 'failed');
    cloud.refuse = true;
    await instanceUntil(async () => {
      assert.equal((await post(`${base}/stop`)).status, 202);
    }, (i) => i.stopRetry !== null);
    const res = await post(`${base}/abandon-stop`);
    assert.equal(res.status, 202);
    assert.equal(actionResultSchema.parse(await res.json()).instance.stopRetry, null);
    await a.app.state.flush();
    const page = auditPageSchema.parse(await (await api('/api/v1/audit?type=admin-abandon-stop')).json());
    assert.match(page.items[0]?.reason ?? '', /owed stop let go \(scheduled, 1 of 6 tries, last error: DELETE refused \(#\d+\)\); the machine may still be running/);
    assert.equal(page.items[0]?.actor, 'admin:ops');
    cloud.refuse = false;
  });
});
