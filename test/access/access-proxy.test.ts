import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import type { Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { ALICE, BOB, CAROL, identities, startAccessApp, type AccessApp } from './helpers.ts';

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json<T = Record<string, unknown>>(): T;
}

async function get(url: string, headers: Record<string, string> = {}, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(url, { ...init, headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: <T>() => JSON.parse(text) as T };
}

const JWT_SECRET = 'jwt-test-secret-that-is-long-enough-0123456789';

describe('access through the proxy', () => {
  let mimic: MimicProvider;
  let a: AccessApp;
  before(async () => {
    mimic = new MimicProvider({ bootMs: 0 });
    a = await startAccessApp({
      identities: [
        ...identities(),
        { kind: 'jwt', issuer: 'https://idp.test', audience: 'sp', algorithms: ['HS256'], secret: JWT_SECRET },
      ],
      resources: {
        open: { provider: 'mimic', access: { public: true } },
        grp: { provider: 'mimic', sharing: 'groups', access: { anyOf: ['g1', 'g2'] } },
        staff: { provider: 'mimic', access: { allOf: ['g2', 'staff'] } },
        shown: { provider: 'mimic', access: { allOf: ['staff'], revealExistence: true } },
        creds: { provider: 'mimic', access: { passCredentials: true } },
      },
    }, { mimic });
  });
  after(async () => { await a.close(); });

  const p = (path: string): string => `${a.url}/smart_proxy/${path}`;

  it('401 with a challenge per identity kind for an anonymous caller; no provider call', async () => {
    const r = await get(p('grp/g1/'));
    assert.equal(r.status, 401);
    assert.equal(r.headers.get('www-authenticate'), 'Basic realm="smart-proxy", charset="UTF-8", Bearer realm="smart-proxy"', 'Basic first: the one a browser can answer');
    assert.equal(r.json().code, 'SP_ACCESS_UNAUTHENTICATED');
    assert.equal(r.json().challenges, undefined, 'challenges go in the header, not the body');
    assert.equal(mimic.calls.start + mimic.calls.inspect, 0);
  });

  it('401 with error="invalid_token" for a refused bearer token (expired JWT)', async () => {
    const expired = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('erin').setIssuer('https://idp.test').setAudience('sp')
      .setExpirationTime(Math.floor(Date.now() / 1000) - 3600).sign(new TextEncoder().encode(JWT_SECRET));
    const r = await get(p('grp/-/'), { Authorization: `Bearer ${expired}` });
    assert.equal(r.status, 401);
    assert.match(r.headers.get('www-authenticate') ?? '', /^Basic realm="smart-proxy", charset="UTF-8", Bearer realm="smart-proxy", error="invalid_token", error_description="token expired"$/);
    assert.match(r.json<{ detail: string }>().detail, /token expired/);
    const unknown = await get(p('grp/-/'), { Authorization: 'Bearer not-a-known-token' });
    assert.equal(unknown.status, 401);
    assert.match(unknown.json<{ detail: string }>().detail, /not recognised/);
  });

  it('a hidden resource answers exactly like a nonexistent one (404 signed in, 401 anonymous)', async () => {
    const hidden = await get(p('staff/-/x'), BOB);
    const missing = await get(p('nosuch/-/x'), BOB);
    assert.equal(hidden.status, 404);
    assert.deepEqual({ ...hidden.json<Record<string, unknown>>(), instance: 0, detail: 0, resource: 0 }, { ...missing.json<Record<string, unknown>>(), instance: 0, detail: 0, resource: 0 });
    assert.equal(hidden.json<{ detail: string }>().detail, 'no resource "staff"');
    const anonHidden = await get(p('staff/-/x'));
    const anonMissing = await get(p('nosuch/-/x'));
    assert.equal(anonHidden.status, 401);
    assert.equal(anonMissing.status, 401);
    assert.equal(anonHidden.headers.get('www-authenticate'), anonMissing.headers.get('www-authenticate'));
    assert.equal(anonHidden.json<{ detail: string }>().detail, anonMissing.json<{ detail: string }>().detail);
    // With revealExistence the caller is told it is forbidden.
    const shown = await get(p('shown/-/'), BOB);
    assert.equal(shown.status, 403);
    assert.equal(shown.json().code, 'SP_ACCESS_DENIED');
    assert.equal(mimic.calls.start, 0);
  });

  it('URL groups not held → 403 naming them, and no provider call', async () => {
    const r = await get(p('grp/g1,g2,zzz/'), BOB);
    assert.equal(r.status, 403);
    const body = r.json<{ missing: string[]; detail: string }>();
    assert.deepEqual(body.missing, ['g2', 'zzz']);
    assert.match(body.detail, /g2, zzz/);
    assert.equal(mimic.calls.start + mimic.calls.inspect, 0);
    const denied = a.audit.events.filter((e) => e.type === 'denied' && e.resource === 'grp' && e.code === 'SP_ACCESS_DENIED');
    assert.equal(denied.length, 1);
    assert.deepEqual(denied[0]?.type === 'denied' && [denied[0].actor.user, denied[0].actor.via, denied[0].method, denied[0].urlGroups, denied[0].heldGroups],
      ['bob', 'token', 'GET', 'g1,g2,zzz', ['g1']]);
  });

  it('URL groups held but not meeting the policy → 403; no provider call', async () => {
    // alice holds g2 and staff, but names only g2: allOf [g2, staff] is not met.
    const r = await get(p('staff/g2/'), ALICE);
    assert.equal(r.status, 403);
    assert.match(r.json<{ detail: string }>().detail, /do not satisfy/);
    // anyOf [g1, g2]: alice holds staff, but staff alone does not satisfy it.
    assert.equal((await get(p('grp/staff/'), ALICE)).status, 403);
    assert.equal(mimic.calls.start + mimic.calls.inspect, 0);
  });

  it('the placeholder acts with every group held; the backend learns verified user and acting groups', async () => {
    const r = await get(p('staff/-/who'), ALICE);
    assert.equal(r.status, 200);
    const e = r.json<Echo>();
    assert.equal(e.headers['x-forwarded-user'], 'alice');
    assert.equal(e.headers['x-forwarded-groups'], 'g1,g2,staff');
    assert.equal(e.headers.authorization, undefined, 'credentials meant for the proxy are not forwarded');
    // Named groups: the backend sees exactly those.
    const named = (await get(p('staff/g2,staff/who'), ALICE)).json<Echo>();
    assert.equal(named.headers['x-forwarded-groups'], 'g2,staff');
  });

  it('HTTP Basic and JWT identities reach the backend the same way', async () => {
    const basic = await get(p('grp/g2/'), CAROL);
    assert.equal(basic.status, 200);
    assert.equal(basic.json<Echo>().headers['x-forwarded-user'], 'carol');
    const jwt = await new SignJWT({ groups: ['g1'] }).setProtectedHeader({ alg: 'HS256' }).setSubject('Ünïcode, "user"\r\nx').setIssuer('https://idp.test')
      .setAudience('sp').setExpirationTime('5m').sign(new TextEncoder().encode(JWT_SECRET));
    const j = await get(p('grp/g1/'), { Authorization: `Bearer ${jwt}` });
    // The user name has a control character: not a valid user, refused.
    assert.equal(j.status, 401);
    const jwt2 = await new SignJWT({ groups: ['g1'] }).setProtectedHeader({ alg: 'HS256' }).setSubject('Ünï, "user" 100%').setIssuer('https://idp.test')
      .setAudience('sp').setExpirationTime('5m').sign(new TextEncoder().encode(JWT_SECRET));
    const ok = await get(p('grp/g1/'), { Authorization: `Bearer ${jwt2}` });
    assert.equal(ok.status, 200);
    const user = ok.json<Echo>().headers['x-forwarded-user'] as string;
    assert.equal(user, '%C3%9Cn%C3%AF%2C%20%22user%22%20100%25');
    assert.equal(decodeURIComponent(user), 'Ünï, "user" 100%');
  });

  it('spoofed X-Forwarded-User / -Groups / X_Forwarded_Groups never reach the backend nor the decision', async () => {
    const spoof = { 'X-Forwarded-User': 'admin', 'X-Forwarded-Groups': 'staff,g2', 'X_Forwarded_Groups': 'staff', 'x_forwarded_user': 'root' };
    // Not the decision: an anonymous caller with spoofed headers is still anonymous.
    assert.equal((await get(p('grp/g1/'), spoof)).status, 401);
    // Bob with spoofed groups still holds only g1.
    assert.equal((await get(p('grp/g2/'), { ...spoof, ...BOB })).status, 403);
    // Not the backend: on a public resource the anonymous request reaches it without them.
    const anon = (await get(p('open/-/'), spoof)).json<Echo>();
    for (const name of Object.keys(anon.headers)) assert.doesNotMatch(name, /^x[-_]forwarded[-_](user|groups)$/i, `${name} reached the backend`);
    // And for a verified caller, only the verified values, once each.
    const bob = (await get(p('grp/g1/'), { ...spoof, ...BOB })).json<Echo>();
    const identityHeaders = [];
    for (let i = 0; i < bob.rawHeaders.length; i += 2) {
      if (/^x[-_]forwarded[-_](user|groups)$/i.test(bob.rawHeaders[i]!)) identityHeaders.push(`${bob.rawHeaders[i]}: ${bob.rawHeaders[i + 1]}`);
    }
    // Named in lower case (the configured X-Forwarded-User, as undici checks it at least cost).
    assert.deepEqual(identityHeaders.sort(), ['x-forwarded-groups: g1', 'x-forwarded-user: bob']);
  });

  it('a public resource serves anonymous callers, and a caller with unverifiable credentials anonymously', async () => {
    const r = await get(p('open/-/hi'));
    assert.equal(r.status, 200);
    assert.equal(r.json<Echo>().headers['x-forwarded-user'], undefined);
    // Named groups are not held by an anonymous caller: the URL never grants.
    assert.equal((await get(p('open/g1/hi'))).status, 403);
    assert.equal((await get(p('open/-/hi'), { Authorization: 'Bearer nobody-knows-me' })).status, 200);
  });

  it('passCredentials forwards Authorization to the backend', async () => {
    const e = (await get(p('creds/-/'), BOB)).json<Echo>();
    assert.equal(e.headers.authorization, BOB.Authorization);
    assert.equal(e.headers['x-forwarded-user'], 'bob');
  });

  it('a WebSocket upgrade goes through the same steps: 401 with the challenges, no provider call', async () => {
    const { port } = new URL(a.url);
    const startsBefore = mimic.calls.start;
    const answer = await new Promise<string>((resolve, reject) => {
      const s = connect(Number(port), '127.0.0.1', () => {
        s.write('GET /smart_proxy/grp/g1/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n'
          + 'sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
      });
      let out = '';
      s.setEncoding('latin1');
      s.on('data', (d: string) => { out += d; });
      s.on('close', () => resolve(out));
      s.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 401 /);
    // One challenge per line, Basic first (a browser answers only the first of a line).
    assert.match(answer, /\r\nwww-authenticate: Basic realm="smart-proxy", charset="UTF-8"\r\nwww-authenticate: Bearer realm="smart-proxy"\r\n/);
    assert.equal(mimic.calls.start, startsBefore);
  });

  it('a denied POST\'s body is never read, and the connection is closed', async () => {
    const sockets: Socket[] = [];
    const onConn = (s: Socket): void => { sockets.push(s); };
    a.app.proxy.server.on('connection', onConn);
    const startsBefore = mimic.calls.start;
    try {
      const { port } = new URL(a.url);
      const offeredBytes = 64 * 1024 * 1024;
      const { response, writtenBytes } = await new Promise<{ response: string; writtenBytes: number }>((resolve) => {
        const s = connect(Number(port), '127.0.0.1');
        let response = '';
        let written = 0;
        let done = false;
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        const finish = (): void => {
          if (done) return;
          done = true;
          resolve({ response, writtenBytes: written });
        };
        s.setEncoding('latin1');
        s.on('data', (d: string) => { response += d; });
        s.on('close', finish);
        s.on('error', () => undefined);
        s.on('connect', () => {
          s.write(`POST /smart_proxy/grp/g2/upload HTTP/1.1\r\nhost: x\r\nauthorization: ${BOB.Authorization}\r\ncontent-length: ${offeredBytes}\r\n\r\n`);
          const pump = (): void => {
            while (!done && !s.destroyed && written < offeredBytes) {
              written += chunk.length;
              if (!s.write(chunk)) {
                s.once('drain', pump);
                return;
              }
            }
          };
          pump();
        });
      });
      assert.match(response, /^HTTP\/1\.1 403 /);
      assert.match(response, /connection: close/i);
      const server = sockets[0]!;
      assert.ok(server.bytesRead < 2 * 1024 * 1024, `the proxy read ${server.bytesRead} bytes of a ${offeredBytes}-byte body`);
      assert.ok(writtenBytes < offeredBytes, 'the client could not push the whole body');
      assert.equal(mimic.calls.start, startsBefore, 'no start for a denied request');
    } finally {
      a.app.proxy.server.off('connection', onConn);
    }
  });
});

describe('trusted identity header', () => {
  it('is believed from a configured address and ignored (and stripped) from others', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const trusted = await startAccessApp({
      identities: [{ kind: 'header', fromAddresses: ['127.0.0.0/8'], userHeader: 'X-Auth-Request-User', groupsHeader: 'X-Auth-Request-Groups' }],
      resources: { app: { provider: 'mimic', sharing: 'groups', access: { anyOf: ['g1'] } } },
    }, { mimic });
    const untrusted = await startAccessApp({
      identities: [{ kind: 'header', fromAddresses: ['10.0.0.0/8'], userHeader: 'X-Auth-Request-User', groupsHeader: 'X-Auth-Request-Groups' }],
      resources: { app: { provider: 'mimic', sharing: 'groups', access: { anyOf: ['g1'] } } },
    }, { mimic: new MimicProvider({ bootMs: 0 }) });
    try {
      const asserted = { 'X-Auth-Request-User': 'dave@example.com', 'X-Auth-Request-Groups': 'g1,g3' };
      const ok = await get(`${trusted.url}/smart_proxy/app/-/`, asserted);
      assert.equal(ok.status, 200);
      const e = ok.json<Echo>();
      assert.equal(e.headers['x-forwarded-user'], 'dave@example.com');
      assert.equal(e.headers['x-forwarded-groups'], 'g1,g3');
      assert.equal(e.headers['x-auth-request-user'], undefined, 'the front proxy\'s own headers are not passed on');
      const ignored = await get(`${untrusted.url}/smart_proxy/app/-/`, asserted);
      assert.equal(ignored.status, 401);
      assert.equal(ignored.headers.get('www-authenticate'), null, 'a header identity has no challenge to offer');
    } finally {
      await trusted.close();
      await untrusted.close();
    }
  });
});
