/**
 * A cloud that answers, but badly: the whole proxy (startApp) with the atmosphere provider on
 * the embedded mock cloud, whose API is told to rate-limit or to list a VM in a state nobody
 * knows. What a held client gets, how soon, and how hard the cloud is pressed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startApp, type App } from '../../src/main.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';

interface Answer { status: number; retryAfter: string | null; body: Record<string, unknown>; ms: number }

async function request(url: string): Promise<Answer> {
  const t0 = performance.now();
  const r = await fetch(url, { headers: { accept: 'application/json' } });
  const text = await r.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { text };
  }
  return { status: r.status, retryAfter: r.headers.get('retry-after'), body, ms: performance.now() - t0 };
}

describe('a cloud that answers badly', () => {
  let app: App;
  const logs: Harness['logs'] = [];
  before(async () => {
    app = await startApp(parseConfig(JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      state: { kind: 'memory' },
      mockCloud: { enabled: true, port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 50, seed: 3 },
      providers: { cloud: { kind: 'atmosphere', baseUrl: 'embedded', requestTimeoutMs: 2_000 } },
      resourceDefaults: { bootTimeoutMs: 20_000, failureCooldownMs: 1_000, pollIntervalMinMs: 10, pollIntervalMaxMs: 50, probeIntervalMs: 10, access: { public: true } },
      resources: { limited: { provider: 'cloud' }, fine: { provider: 'cloud' }, warm: { provider: 'cloud' } },
    })), { logger: collectingLogger(logs) });
    // One boot first: the provider has asked which API the cloud speaks (and the start-up
    // check its own question), so each test below counts only its own calls.
    assert.equal((await request(`${app.proxyUrl}/smart_proxy/warm/-/`)).status, 200);
  });
  after(async () => { await app.close(); });

  it('429 with Retry-After longer than the boot: 503 SP_PROVIDER_THROTTLED at once with that Retry-After, one API call, none during the wait', async () => {
    const cloud = app.mockCloud!;
    cloud.failNextApiCalls(1_000, { kind: 'status', status: 429, retryAfterS: 120 });
    const callsBefore = cloud.stats.apiRequests;
    const held = await request(`${app.proxyUrl}/smart_proxy/limited/-/x`);
    assert.equal(held.status, 503, JSON.stringify(held.body));
    assert.equal(held.body.code, 'SP_PROVIDER_THROTTLED');
    assert.equal(held.retryAfter, '120');
    // Before: retried on the proxy's own backoff (≤ 2 s) until the 20 s boot deadline, then 504.
    assert.ok(held.ms < 5_000, `answered in ${Math.round(held.ms)} ms, not at the boot deadline`);
    assert.equal(cloud.stats.apiRequests - callsBefore, 1, 'the cloud was asked once');
    const again = await request(`${app.proxyUrl}/smart_proxy/limited/-/x`);
    assert.equal(again.status, 503);
    assert.equal(again.body.code, 'SP_RESOURCE_FAILED');
    assert.equal(again.body.causeCode, 'SP_PROVIDER_THROTTLED');
    assert.ok(Number(again.retryAfter) > 100 && Number(again.retryAfter) <= 120, `Retry-After ${again.retryAfter}`);
    assert.equal(cloud.stats.apiRequests - callsBefore, 1, 'nothing asked of the cloud during its wait');
    assert.ok(logs.some((l) => l.level === 'warn' && l.msg === 'start failed' && (l.obj as { code?: string; resource?: string }).code === 'SP_PROVIDER_THROTTLED'
      && (l.obj as { resource?: string }).resource === 'limited'), 'the operator sees the resource and the cause');
    cloud.failNextApiCalls(0, { kind: 'hang' });
  });

  it('a VM of another service in a state nobody knows does not fail this resource\'s start', async () => {
    const cloud = app.mockCloud!;
    // The provider lists the cloud's VMs before spanning one (its next call): that list names a
    // VM of another service in a state the API never had.
    const alien = [{ id: '9001', asId: 'someone-else', groups: [], state: 'hibernating', createdAt: new Date().toISOString() }];
    cloud.failNextApiCalls(1, { kind: 'garbage', body: JSON.stringify(alien) });
    const r = await request(`${app.proxyUrl}/smart_proxy/fine/-/x`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(logs.some((l) => l.level === 'warn' && /do not parse; ignored/.test(l.msg ?? '')), 'logged');
  });
});
