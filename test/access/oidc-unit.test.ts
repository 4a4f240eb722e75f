/**
 * The pure parts of OIDC sign-in: claims to groups (claim paths, prefix, map), return-path
 * checks (no open redirect), sealing with key rotation and purposes, and the key-value
 * stores every replica shares (memory, SQLite, Redis) with single-use markers.
 */
import assert from 'node:assert/strict';
import { hkdfSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { compactDecrypt } from 'jose';
import { mapClaims } from '../../src/access/oidc/claims.ts';
import { Sealer } from '../../src/access/oidc/sealer.ts';
import { safeReturnPath } from '../../src/access/oidc/sign-in.ts';
import { ManualClock, systemClock } from '../../src/core/clock.ts';
import type { KeyValueStore } from '../../src/core/ports.ts';
import { MemoryKeyValueStore, RedisKeyValueStore, SqliteKeyValueStore } from '../../src/state/key-value-stores.ts';
import { configSchema } from '../../src/config/schema.ts';
import { KEY_A, KEY_B } from './oidc-helpers.ts';

const base = { userClaim: 'sub', groupsClaim: 'groups', groupsPrefix: undefined, groupsMap: {} };

describe('oidc claims to groups', () => {
  it('reads a dot path (Keycloak realm roles), strips a prefix, maps names, drops what a URL cannot name', () => {
    const claims = { sub: 'u1', realm_access: { roles: ['offline_access', 'app-g1', 'app-staff', 'weird role'] }, groups: ['/team/x'] };
    const roles = mapClaims({ ...base, groupsClaim: 'realm_access.roles', groupsPrefix: 'app-', groupsMap: { 'weird role': 'mapped' } }, claims);
    assert.deepEqual(roles, { user: 'u1', groups: ['g1', 'mapped', 'offline_access', 'staff'], dropped: 0 });
    const paths = mapClaims({ ...base, groupsPrefix: '/', groupsMap: { 'team/x': 'team-x' } }, claims);
    assert.deepEqual(paths, { user: 'u1', groups: ['team-x'], dropped: 0 });
    const unmapped = mapClaims(base, claims);
    assert.deepEqual(unmapped, { user: 'u1', groups: [], dropped: 1 });
    assert.match(mapClaims({ ...base, userClaim: 'preferred_username' }, claims) as string, /preferred_username/);
    assert.deepEqual(mapClaims(base, { sub: 'u', groups: 'a b,c' }), { user: 'u', groups: ['a', 'b', 'c'], dropped: 0 });
    // Inherited properties are never claims.
    assert.deepEqual(mapClaims({ ...base, groupsClaim: 'constructor.name' }, { sub: 'u' }), { user: 'u', groups: [], dropped: 0 });
  });
});

describe('oidc return paths', () => {
  const origin = 'https://proxy.example';
  it('keeps same-origin paths byte for byte and refuses everything else', () => {
    for (const ok of ['/smart_proxy/a/-/x?y=%2F&z=1', '/', '/a%20b']) assert.equal(safeReturnPath(ok, origin), ok);
    for (const bad of ['//evil.example', '/\\evil.example', 'https://evil.example/', 'evil', '/\u0009/evil.example', '/x\r\nSet-Cookie: a=b', '', `/${'a'.repeat(5000)}`]) {
      assert.equal(safeReturnPath(bad, origin), undefined, JSON.stringify(bad));
    }
  });
});

describe('oidc sealing', () => {
  it('opens with any configured key, seals with the first, refuses tampering and other purposes', async () => {
    const old = new Sealer([KEY_A]);
    const rotated = new Sealer([KEY_B, KEY_A]);
    const retired = new Sealer([KEY_B]);
    const sealed = await old.seal('session', { user: 'alice' });
    assert.equal((await rotated.open('session', sealed))?.user, 'alice');
    assert.equal(await retired.open('session', sealed), undefined);
    const fresh = await rotated.seal('session', { user: 'bob' });
    assert.equal((await retired.open('session', fresh))?.user, 'bob');
    assert.equal(await old.open('session', fresh), undefined);
    assert.equal(await old.open('sign-in', sealed), undefined, 'a session is not a sign-in transaction');
    const parts = sealed.split('.');
    parts[3] = `${(parts[3] as string).slice(0, -2)}AA`;
    assert.equal(await old.open('session', parts.join('.')), undefined);
    for (const junk of ['', 'a.b.c.d.e', 'x'.repeat(20_000), '....']) assert.equal(await old.open('session', junk), undefined);
    assert.doesNotMatch(sealed, /alice/, 'encrypted, not just signed');
  });

  it('writes standard JWE (dir + A256GCM) that jose opens', async () => {
    const sealed = await new Sealer([KEY_A]).seal('session', { user: 'alice' });
    const key = new Uint8Array(hkdfSync('sha256', KEY_A, '', 'smart-proxy cookie sealing v1', 32));
    const { plaintext, protectedHeader } = await compactDecrypt(sealed, key);
    assert.equal(protectedHeader.enc, 'A256GCM');
    assert.equal((JSON.parse(new TextDecoder().decode(plaintext)) as { user: string }).user, 'alice');
  });
});

/** `expired(key)` resolves once the store's marker `key` (set with a 200 ms TTL) has expired. */
async function kvContract(kv: KeyValueStore, expired: (key: string) => Promise<void>): Promise<void> {
  const k = `t-${randomBytes(6).toString('hex')}`;
  assert.equal(await kv.get(k), undefined);
  await kv.set(k, 'v1', 1_000);
  assert.equal(await kv.get(k), 'v1');
  assert.equal(await kv.setIfAbsent(k, 'v2', 1_000), false);
  assert.equal(await kv.get(k), 'v1');
  await kv.delete(k);
  assert.equal(await kv.setIfAbsent(k, 'v3', 200), true);
  const racers = await Promise.all([kv.setIfAbsent(`${k}-r`, 'a', 1_000), kv.setIfAbsent(`${k}-r`, 'b', 1_000)]);
  assert.deepEqual(racers.sort(), [false, true], 'one winner');
  await expired(k);
  assert.equal(await kv.get(k), undefined, 'expired');
  assert.equal(await kv.setIfAbsent(k, 'v4', 1_000), true, 'an expired marker can be taken again');
}

const REDIS_URL = 'redis://127.0.0.1:6379';

/**
 * Redis expires keys on its own clock, which a test cannot drive: await its "expired" keyspace
 * event for the store's `key` (its Redis name starts with the store's prefix and ends with the
 * key, which is random) instead, turned on for the test and the server's setting restored
 * after; or find the key already gone. Bounded: 5 s past a 200 ms TTL is a failure, not a wait.
 */
async function redisExpired(kv: KeyValueStore, prefix: string, key: string): Promise<void> {
  const admin = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  const sub = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await Promise.all([admin.connect(), sub.connect()]);
  const [, flags = ''] = await admin.config('GET', 'notify-keyspace-events');
  let timer: NodeJS.Timeout | undefined;
  try {
    await admin.config('SET', 'notify-keyspace-events', `${flags}Ex`);
    const channel = '__keyevent@0__:expired';
    const event = new Promise<void>((resolve) => {
      sub.on('message', (ch: string, expired: string) => { if (ch === channel && expired.startsWith(prefix) && expired.endsWith(key)) resolve(); });
    });
    await sub.subscribe(channel);
    // Expired before the subscription: no event will come, and none is needed.
    if (await kv.get(key) === undefined) return;
    await Promise.race([event, new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Redis did not expire ${key} within 5 s`)), 5_000);
    })]);
  } finally {
    clearTimeout(timer);
    await admin.config('SET', 'notify-keyspace-events', flags).catch(() => undefined);
    admin.disconnect();
    sub.disconnect();
  }
}

describe('key-value stores', () => {
  it('memory', async () => {
    const clock = new ManualClock();
    const kv = new MemoryKeyValueStore(clock);
    await kvContract(kv, async () => clock.advance(250));
    await kv.close();
  });
  it('sqlite (two connections to one file, as two replicas on one machine)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sp-kv-'));
    const clock = new ManualClock();
    const a = new SqliteKeyValueStore(join(dir, 's.sqlite'), clock);
    const b = new SqliteKeyValueStore(join(dir, 's.sqlite'), clock);
    try {
      await kvContract(a, async () => clock.advance(250));
      await a.set('shared', 'x', 1_000);
      assert.equal(await b.get('shared'), 'x');
      assert.equal(await b.setIfAbsent('shared', 'y', 1_000), false);
    } finally {
      await a.close();
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('redis', async () => {
    const prefix = `sp-test-${randomBytes(6).toString('hex')}:`;
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const kv = new RedisKeyValueStore({ url: REDIS_URL, keyPrefix: prefix }, logger);
    try {
      await kvContract(kv, (key) => redisExpired(kv, prefix, key));
    } finally {
      await kv.close();
    }
  });
});

describe('oidc config', () => {
  const minimal = (extra: Record<string, unknown>): unknown => ({
    resources: { r: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:1' } } },
    identities: [{ kind: 'oidc', name: 'kc', issuer: 'https://id.example/realms/x', clientId: 'c' }],
    ...extra,
  });
  it('needs a public URL and a long enough key; names are unique', () => {
    const r = configSchema.safeParse(minimal({}));
    assert.equal(r.success, false);
    const text = JSON.stringify(r.error?.issues);
    assert.match(text, /publicUrl/);
    assert.match(text, /keys/);
    const short = configSchema.safeParse(minimal({ access: { sessions: { publicUrl: 'https://p.example', keys: ['short'] } } }));
    assert.match(JSON.stringify(short.error?.issues), /32 characters/);
    const ok = configSchema.safeParse(minimal({ access: { sessions: { publicUrl: 'https://p.example', keys: [{ env: 'SP_SESSION_KEY' }] } } }));
    assert.equal(ok.success, true, JSON.stringify(ok.error?.issues));
    const dup = configSchema.safeParse({ ...(minimal({ access: { sessions: { publicUrl: 'https://p.example', keys: [KEY_A] } } }) as object),
      identities: [{ kind: 'oidc', name: 'kc', issuer: 'https://a.example', clientId: 'c' }, { kind: 'oidc', name: 'kc', issuer: 'https://b.example', clientId: 'c' }] });
    assert.match(JSON.stringify(dup.error?.issues), /two oidc identities/);
    const hs = configSchema.safeParse({ ...(minimal({ access: { sessions: { publicUrl: 'https://p.example', keys: [KEY_A] } } }) as object),
      identities: [{ kind: 'oidc', name: 'kc', issuer: 'https://a.example', clientId: 'c', algorithms: ['HS256'] }] });
    assert.equal(hs.success, false, 'HS* is never accepted for ID tokens (the client secret would sign them)');
  });
});

describe('oidc session cookie attributes', () => {
  it('is Secure when the public URL is https, HttpOnly and SameSite=Lax always, and within browser limits', async () => {
    const { OidcSignIn } = await import('../../src/access/oidc/sign-in.ts');
    const sessions = configSchema.parse({
      resources: { r: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:1' } } },
      identities: [{ kind: 'oidc', name: 'kc', issuer: 'https://id.example', clientId: 'c' }],
      access: { sessions: { publicUrl: 'https://proxy.example', keys: [KEY_A] } },
    }).access.sessions;
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const kv = new MemoryKeyValueStore(systemClock);
    const mk = (publicUrl: string, tls: boolean): InstanceType<typeof OidcSignIn> => new OidcSignIn({
      identities: [], clientSecrets: new Map(), sessions: { ...sessions, publicUrl }, keys: [KEY_A], tls, kv, clock: systemClock, logger,
    });
    const session = { sid: 's', prov: 'kc', user: 'alice', groups: Array.from({ length: 40 }, (_, i) => `group-${i}`), iat: Date.now(), seen: Date.now(), idt: 'x'.repeat(1200) };
    const https = await mk('https://proxy.example', false).sessions.issue(session);
    assert.match(https, /; HttpOnly; SameSite=Lax; Secure; Max-Age=\d+$/);
    assert.ok(https.length <= 4096, `${https.length} bytes`);
    assert.match(await mk('http://proxy.example', true).sessions.issue(session), /; Secure/, 'TLS terminated here');
    assert.doesNotMatch(await mk('http://proxy.example', false).sessions.issue(session), /Secure/);
    // Past maxCookieBytes the session goes to the store and the cookie is a short reference.
    const big = await mk('https://proxy.example', false).sessions.issue({ ...session, idt: 'x'.repeat(5000) });
    assert.ok(big.length < 400, `${big.length} bytes`);
    await kv.close();
  });
});
