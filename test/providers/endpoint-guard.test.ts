/**
 * Endpoints a provider reports are checked before the proxy sends anything (identity headers
 * included) to them: link-local and cloud metadata addresses, and the proxy's own ports, are
 * refused with a clear error and an audit entry; the policy is configurable.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { InspectResult, InstanceRef, Provider, StartResult } from '../../src/core/ports.ts';
import { networkInterfaces } from 'node:os';
import { DEFAULT_DENIED_ENDPOINTS, EndpointPolicy, unmapped } from '../../src/providers/endpoint-guard.ts';
import { startEchoServer, type EchoServer } from '../helpers/echo-server.ts';
import { ALICE, startAccessApp, type AccessApp } from '../access/helpers.ts';

/** A "cloud" that reports whatever endpoint the test wrote for each resource. */
class ReportingProvider implements Provider {
  readonly kind = 'reporting';
  readonly endpoints = new Map<string, string>();
  async start(): Promise<StartResult> {
    return {};
  }
  async inspect(ref: InstanceRef): Promise<InspectResult> {
    const endpoint = this.endpoints.get(ref.resourceId);
    return endpoint === undefined ? { state: 'starting' } : { state: 'running', endpoint };
  }
  async stop(): Promise<void> {}
}

describe('provider endpoints are checked before identity headers go to them', () => {
  const cloud = new ReportingProvider();
  let echo: EchoServer;
  let a: AccessApp;
  before(async () => {
    echo = await startEchoServer();
    a = await startAccessApp({
      resources: {
        meta: { provider: 'cloud' }, meta6: { provider: 'cloud' }, mapped: { provider: 'cloud' }, self: { provider: 'cloud' }, fine: { provider: 'cloud' },
      },
    }, { cloud });
    cloud.endpoints.set('meta', 'http://169.254.169.254/latest/meta-data/');
    cloud.endpoints.set('meta6', 'http://[fd00:ec2::254]/');
    cloud.endpoints.set('mapped', 'http://[::ffff:169.254.169.254]:80/');
    cloud.endpoints.set('self', `http://localhost:${new URL(a.url).port}/`);
    cloud.endpoints.set('fine', echo.url);
  });
  after(async () => {
    await a.close();
    await echo.close();
  });

  it('metadata, link-local and the proxy\'s own port: a clear error and an audit entry, nothing sent', async () => {
    for (const id of ['meta', 'meta6', 'mapped', 'self']) {
      const res = await fetch(`${a.url}/smart_proxy/${id}/-/x`, { headers: ALICE });
      const body = await res.json() as { code: string; detail: string };
      assert.equal(res.status, 502, `${id}: ${JSON.stringify(body)}`);
      assert.match(body.detail, /endpoint the provider reported was refused/);
      const entry = a.audit.events.find((e) => e.type === 'endpoint-refused' && e.resource === id);
      assert.ok(entry, `${id}: audited`);
    }
    const self = a.audit.events.find((e) => e.type === 'endpoint-refused' && e.resource === 'self') as { reason: string };
    assert.match(self.reason, /the proxy's own ports/);
    // An ordinary endpoint is served, with the identity headers.
    const ok = await fetch(`${a.url}/smart_proxy/fine/-/x`, { headers: ALICE });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json() as { headers: Record<string, string> }).headers['x-forwarded-user'], 'alice');
  });

  it('the policy is configurable: a denied range refuses an otherwise reachable backend, which never sees a request', async () => {
    const backend = await startEchoServer();
    const strict = new ReportingProvider();
    strict.endpoints.set('app', backend.url);
    const b = await startAccessApp({ backendEndpoints: { deny: ['127.0.0.0/8'] }, resources: { app: { provider: 'strict' } } }, { strict });
    try {
      const res = await fetch(`${b.url}/smart_proxy/app/-/x`, { headers: ALICE });
      assert.equal(res.status, 502);
      await res.body?.cancel();
      assert.equal(backend.requests, 0, 'nothing reached the refused backend (not even a probe)');
    } finally {
      await b.close();
      await backend.close();
    }
  });

  it('allow overrides deny; host names are resolved and every address checked', async () => {
    const ports = [7000];
    const p = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS, '127.0.0.0/8'], allow: ['127.0.0.5/32'], ownPorts: () => ports });
    assert.equal((await p.check('http://127.0.0.5:81/')).ok, true);
    assert.equal((await p.check('http://127.0.0.6:81/')).ok, false);
    assert.equal((await p.check('http://localhost:81/')).ok, false, 'localhost resolves into the denied range');
    assert.equal((await p.check('ftp://10.0.0.1/')).ok, false);
    const open = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS], allow: [], ownPorts: () => ports });
    assert.equal((await open.check('http://10.1.2.3:8080/')).ok, true);
    assert.equal((await open.check('http://127.0.0.1:7000/')).ok, false, 'own port');
    assert.equal((await open.check('http://0.0.0.0:7000/')).ok, false, 'own port on the unspecified address');
    assert.equal((await open.check('http://127.0.0.1:7001/')).ok, true);
  });

  it('the admin listener is one of the proxy\'s own ports: a cloud naming it gets no request through (no admin API by the back door)', async () => {
    const sneaky = new ReportingProvider();
    const b = await startAccessApp({ admin: { listen: { host: '127.0.0.1', port: 0 }, anonymousFromLoopback: true }, resources: { app: { provider: 'sneaky' } } }, { sneaky });
    try {
      sneaky.endpoints.set('app', `${b.app.adminUrl}/`);
      const res = await fetch(`${b.url}/smart_proxy/app/-/api/v1/resources`, { headers: ALICE });
      const body = await res.json() as { detail: string };
      assert.equal(res.status, 502, JSON.stringify(body));
      assert.match(body.detail, /the proxy's own ports/);
    } finally {
      await b.close();
    }
  });

  it('the proxy\'s own ports under every name of this host: IPv4-mapped forms, and its interfaces\' addresses', async () => {
    const ports = [7000];
    const open = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS], allow: [], ownPorts: () => ports });
    // The URL parser writes [::ffff:127.0.0.1] as [::ffff:7f00:1]: a loopback all the same.
    for (const self of ['http://[::ffff:127.0.0.1]:7000/', 'http://[::ffff:7f00:1]:7000/', 'http://[0:0:0:0:0:ffff:7f00:1]:7000/', 'http://[::ffff:0.0.0.0]:7000/']) {
      const v = await open.check(self);
      assert.equal(v.ok, false, self);
      assert.match(v.ok ? '' : v.reason, /the proxy's own ports/, self);
    }
    assert.equal((await open.check('http://[::ffff:a9fe:a9fe]/')).ok, false, 'metadata, IPv4-mapped in hex');
    assert.equal((await open.check('http://[::ffff:7f00:1]:7001/')).ok, true, 'another port of this host is an ordinary backend');
    // A proxy listening on 0.0.0.0 answers on every address of the host, not only loopback.
    const own = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && a.family === 'IPv4' && !a.internal);
    if (own !== undefined) {
      assert.equal((await open.check(`http://${own.address}:7000/`)).ok, false, `${own.address} is this host`);
      assert.equal((await open.check(`http://${own.address}:7001/`)).ok, true);
    }
    assert.equal(unmapped('::ffff:a9fe:a9fe'), '169.254.169.254');
    assert.equal(unmapped('::FFFF:169.254.169.254'), '169.254.169.254');
    assert.equal(unmapped('fe80::1'), 'fe80::1');
  });
});
