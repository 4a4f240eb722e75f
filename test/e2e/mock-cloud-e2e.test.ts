/**
 * The demo's system end to end: the YAML config, the composition root, the embedded mock
 * cloud whose VMs are real HTTP servers, the atmosphere provider and the data plane.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startApp, type App } from '../../src/main.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';

interface VmEcho { vm: string; groups: string[]; method: string; url: string; body: string; headers: Record<string, string> }

describe('embedded mock cloud through the proxy', () => {
  let app: App;
  before(async () => {
    app = await startApp(parseConfig(`
listen: { host: 127.0.0.1, port: 0 }
state: { kind: memory }
mockCloud: { enabled: true, port: 0, bootTimeMinMs: 200, bootTimeMaxMs: 400, seed: 7 }
providers: { cloud: { kind: atmosphere, baseUrl: embedded } }
resources:
  notebook: { provider: cloud, sharing: groups, bootTimeoutMs: 20000 }
  as1: { provider: cloud, sharing: groups }
shutdown: { stopInstances: true, drainTimeoutMs: 1000 }
`), { logger: collectingLogger([]) });
  });
  after(async () => { await app.close(); });

  const get = async (path: string, init?: RequestInit): Promise<{ status: number; echo: VmEcho }> => {
    const res = await fetch(`${app.proxyUrl}${path}`, init);
    return { status: res.status, echo: await res.json() as VmEcho };
  };

  it('wakes a VM for a cold request and forwards path, query, method and body', async () => {
    const spansBefore = app.mockCloud!.stats.spans;
    const { status, echo } = await get('/smart_proxy/notebook/g1/api/items?x=1', { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    assert.equal(status, 200);
    assert.equal(echo.url, '/api/items?x=1');
    assert.equal(echo.method, 'POST');
    assert.equal(echo.body, '{"a":1}');
    assert.deepEqual(echo.groups, ['g1']);
    assert.equal(app.mockCloud!.stats.spans, spansBefore + 1);
  });

  it('reuses a VM started for a subset of the groups, and starts a new one otherwise', async () => {
    const first = await get('/smart_proxy/notebook/g1/');
    const superset = await get('/smart_proxy/notebook/g1,g2/');
    assert.equal(superset.echo.vm, first.echo.vm, 'g1,g2 includes g1: same VM');
    const spans = app.mockCloud!.stats.spans;
    const other = await get('/smart_proxy/notebook/g2/');
    assert.notEqual(other.echo.vm, first.echo.vm, 'g2 does not include g1: a new VM');
    assert.deepEqual(other.echo.groups, ['g2']);
    assert.equal(app.mockCloud!.stats.spans, spans + 1);
  });

  it('forwards to the original seed VMs without starting anything', async () => {
    const spans = app.mockCloud!.stats.spans;
    const { status, echo } = await get('/smart_proxy/as1/g1,g2/x');
    assert.equal(status, 200);
    assert.ok(echo.vm === '1' || echo.vm === '2', `seed VM, got ${echo.vm}`);
    assert.equal(app.mockCloud!.stats.spans, spans);
  });

  it('50 concurrent cold requests for a new group set start one VM', async () => {
    const spans = app.mockCloud!.stats.spans;
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => get(`/smart_proxy/notebook/g7/r${i}`)));
    assert.deepEqual(new Set(all.map((r) => r.status)), new Set([200]));
    assert.equal(new Set(all.map((r) => r.echo.vm)).size, 1);
    assert.equal(app.mockCloud!.stats.spans, spans + 1);
  });
});
