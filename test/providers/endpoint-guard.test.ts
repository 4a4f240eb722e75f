/**
 * Endpoints a provider reports are checked before the proxy sends anything (identity headers
 * included) to them: link-local and cloud metadata addresses, and the proxy's own ports, are
 * refused with a clear error and an audit entry; the policy is configurable.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { InspectResult, InstanceRef, Provider, StartResult } from '../../src/core/ports.ts';
import { networkInterfaces } from 'node:os';
import { DEFAULT_DENIED_ENDPOINTS, EndpointPolicy, reaches, unmapped, type OwnListener } from '../../src/providers/endpoint-guard.ts';
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
    const p = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS, '127.0.0.0/8'], allow: ['127.0.0.5/32'], ownListeners: () => ports.map((port) => ({ port })) });
    assert.equal((await p.check('http://127.0.0.5:81/')).ok, true);
    assert.equal((await p.check('http://127.0.0.6:81/')).ok, false);
    assert.equal((await p.check('http://localhost:81/')).ok, false, 'localhost resolves into the denied range');
    assert.equal((await p.check('ftp://10.0.0.1/')).ok, false);
    const open = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS], allow: [], ownListeners: () => ports.map((port) => ({ port })) });
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
    const open = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS], allow: [], ownListeners: () => ports.map((port) => ({ port })) });
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

  it('exact by binding: a listener is reached only at the addresses it is bound to (a table)', async () => {
    const own = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)?.address;
    const own6 = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && a.family === 'IPv6' && !a.internal && !a.address.startsWith('fe80'))?.address;
    // [destination, listener's bound address (undefined: not known), ipv6Only, reached?]
    const table: [string, string | undefined, boolean, boolean][] = [
      ['127.0.0.1', '127.0.0.1', false, true],
      ['127.0.0.2', '127.0.0.1', false, false], // another loopback address: another socket
      ['127.1.2.3', '127.0.0.1', false, false],
      ['::ffff:127.0.0.1', '127.0.0.1', false, true], // IPv4-mapped, both spellings
      ['::ffff:7f00:1', '127.0.0.1', false, true],
      ['::ffff:7f00:2', '127.0.0.1', false, false],
      ['::1', '127.0.0.1', false, false],
      ['0.0.0.0', '127.0.0.1', false, true], // the unspecified destination is this host
      ['::', '127.0.0.1', false, true],
      ['::ffff:0.0.0.0', '127.0.0.1', false, true],
      ['127.0.0.2', '127.0.0.2', false, true],
      ['127.0.0.1', '127.0.0.2', false, false],
      ['127.0.0.1', '::ffff:127.0.0.1', false, true], // a listener bound to a mapped address takes IPv4
      ['127.1.2.3', '0.0.0.0', false, true], // a wildcard: all of 127/8, ::1, mapped forms
      ['127.255.255.254', '0.0.0.0', false, true],
      ['::1', '0.0.0.0', false, true],
      ['::ffff:127.9.9.9', '0.0.0.0', false, true],
      ['10.255.255.1', '0.0.0.0', false, own === '10.255.255.1'],
      ['127.1.2.3', '::', false, true], // dual-stack takes IPv4
      ['::1', '::', false, true],
      ['127.1.2.3', '::', true, false], // IPv6-only does not
      ['::ffff:127.0.0.1', '::', true, false],
      ['::1', '::', true, true],
      ['0:0:0:0:0:0:0:1', '::1', false, true], // one address, two spellings
      ['::1', '::1', false, true],
      ['127.0.0.1', '::1', false, false],
      ['127.0.0.3', undefined, false, true], // binding not known (Redis): every address of this host
      ['::1', undefined, false, true],
      ['10.255.255.1', undefined, false, own === '10.255.255.1'],
      ['127.0.0.3', 'localhost', false, true], // a name as binding: not known which address
    ];
    if (own !== undefined) {
      table.push([own, '0.0.0.0', false, true], [own, '::', false, true], [own, '::', true, false], [own, '127.0.0.1', false, false], [own, own, false, true], ['127.0.0.1', own, false, false], [`::ffff:${own}`, own, false, true]);
    }
    if (own6 !== undefined) table.push([own6, '::', true, true], [own6, '0.0.0.0', false, true], [own6, '::1', false, false]);
    for (const [dest, host, ipv6Only, expected] of table) {
      assert.equal(reaches(dest, { port: 7000, host, ipv6Only }), expected, `${dest} → listener on ${host ?? '(not known)'}${ipv6Only ? ' (ipv6Only)' : ''}`);
    }

    // Through the policy: only the listener's port counts; literals exactly, names on the safe side.
    const listeners: OwnListener[] = [{ port: 7000, host: '127.0.0.1' }, { port: 7001, host: '::' }, { port: 7002, host: '::', ipv6Only: true }, { port: 6379 }];
    const p = new EndpointPolicy({ deny: [...DEFAULT_DENIED_ENDPOINTS], allow: [], ownListeners: () => listeners });
    const cases: [string, boolean][] = [
      ['http://127.0.0.2:7000/', true],
      ['http://127.1.2.3:7000/', true],
      ['http://[::1]:7000/', true],
      ['http://127.0.0.1:7000/', false],
      ['http://[::ffff:127.0.0.1]:7000/', false],
      ['http://0.0.0.0:7000/', false],
      ['http://[::]:7000/', false],
      ['http://127.0.0.1:7003/', true],
      ['http://127.1.2.3:7001/', false],
      ['http://[::1]:7001/', false],
      ['http://127.1.2.3:7002/', true],
      ['http://[::1]:7002/', false],
      ['http://127.1.2.3:6379/', false],
      ['http://localhost:7000/', false], // a name: refused on any address of this host
      ['http://LOCALHOST.:7000/', false],
      ['http://a.localhost:7000/', false], // RFC 6761: this host, whatever a resolver says
      ['http://localhost:7003/', true],
    ];
    for (const [url, ok] of cases) {
      const v = await p.check(url);
      assert.equal(v.ok, ok, `${url}: ${v.ok ? 'accepted' : v.reason}`);
      if (!v.ok) assert.match(v.reason, /the proxy's own ports/, url);
    }
  });

  it('end to end: a backend on 127.0.0.2 with the proxy\'s port number is served; the proxy\'s own address on it is still refused', async () => {
    const cloud2 = new ReportingProvider();
    const b = await startAccessApp({ resources: { other: { provider: 'cloud2' }, self: { provider: 'cloud2' }, mapped: { provider: 'cloud2' }, any: { provider: 'cloud2' } } }, { cloud2 });
    const port = Number(new URL(b.url).port);
    // A real server on another loopback address and the very port the proxy listens on.
    const twin = await startEchoServer({ host: '127.0.0.2', port });
    try {
      assert.equal(new URL(b.url).hostname, '127.0.0.1');
      cloud2.endpoints.set('other', twin.url);
      cloud2.endpoints.set('self', `http://127.0.0.1:${port}/`);
      cloud2.endpoints.set('mapped', `http://[::ffff:127.0.0.1]:${port}/`);
      cloud2.endpoints.set('any', `http://0.0.0.0:${port}/`);
      const ok = await fetch(`${b.url}/smart_proxy/other/-/x`, { headers: ALICE });
      const echo = await ok.json() as { url: string; headers: Record<string, string> };
      assert.equal(ok.status, 200, JSON.stringify(echo));
      assert.equal(echo.url, '/x');
      assert.equal(echo.headers['x-forwarded-user'], 'alice');
      assert.ok(twin.requests >= 1);
      for (const id of ['self', 'mapped', 'any']) {
        const res = await fetch(`${b.url}/smart_proxy/${id}/-/x`, { headers: ALICE });
        const body = await res.json() as { detail: string };
        assert.equal(res.status, 502, `${id}: ${JSON.stringify(body)}`);
        assert.match(body.detail, /the proxy's own ports \(a listener bound to 127\.0\.0\.1\)/, id);
      }
      assert.equal(b.audit.events.filter((e) => e.type === 'endpoint-refused').length, 3);
    } finally {
      await b.close();
      await twin.close();
    }
  });
});
