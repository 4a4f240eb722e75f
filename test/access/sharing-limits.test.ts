import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AuditEvent } from '../../src/access/audit.ts';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { ALICE, BOB, CAROL, CountingProvider, startAccessApp } from './helpers.ts';

async function get(url: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<{ status: number; retryAfter: string | null; body: Record<string, unknown> }> {
  const res = await fetch(url, { headers, signal });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { text };
  }
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body };
}

/** Which instance answered (the mimic's echo servers are named after the instance key). */
async function instanceOf(url: string, headers: Record<string, string>): Promise<string> {
  const r = await get(url, headers);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return (r.body as unknown as Echo).server;
}

describe('sharing modes pick or start the right instance for the verified identity', () => {
  it('shared: one instance for everyone allowed', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const a = await startAccessApp({ resources: { app: { provider: 'mimic', sharing: 'shared' } } }, { mimic });
    try {
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/-/`, ALICE), '*');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g1/`, BOB), '*');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/-/`, CAROL), '*');
      assert.equal(mimic.calls.start, 1);
    } finally {
      await a.close();
    }
  });

  it('groups: an instance started for a set serves requests acting with a superset; others start their own', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const a = await startAccessApp({ resources: { app: { provider: 'mimic', sharing: 'groups' } } }, { mimic });
    try {
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g1/`, BOB), 'g1');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g1,g2/`, ALICE), 'g1', 'a superset reuses the g1 instance');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g2/`, CAROL), 'g2', 'carol does not act with g1');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/-/`, CAROL), 'g2', 'the placeholder is carol\'s held groups: g2');
      assert.equal(mimic.calls.start, 2);
    } finally {
      await a.close();
    }
  });

  it('user: one instance per verified user, whatever groups the URL names', async () => {
    const mimic = new MimicProvider({ bootMs: 0 });
    const a = await startAccessApp({ resources: { app: { provider: 'mimic', sharing: 'user' } } }, { mimic });
    try {
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/-/`, ALICE), 'user:alice');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g2/`, CAROL), 'user:carol');
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g1/`, ALICE), 'user:alice');
      // A spoofed identity header changes nothing.
      assert.equal(await instanceOf(`${a.url}/smart_proxy/app/g1/`, { ...BOB, 'X-Forwarded-User': 'alice' }), 'user:bob');
      assert.equal(mimic.calls.start, 3);
      const starts = a.audit.events.filter((e): e is Extract<AuditEvent, { type: 'start' }> => e.type === 'start');
      assert.deepEqual(starts.map((e) => [e.actor?.user, e.actor?.via, e.instance]), [
        ['alice', 'token', 'user:alice'], ['carol', 'basic', 'user:carol'], ['bob', 'token', 'user:bob'],
      ]);
    } finally {
      await a.close();
    }
  });
});

describe('limits on starts and running instances', () => {
  it('500 concurrent requests for distinct resources start exactly concurrentStarts.total; the rest get 429', async () => {
    const counting = new CountingProvider();
    const resources = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`r${i}`, { provider: 'counting' }]));
    const a = await startAccessApp({ resources, access: { limits: { concurrentStarts: { total: 7 } } } }, { counting });
    try {
      // The admitted requests stay held (the instances never get ready): abort them at the end.
      const ac = new AbortController();
      const answers: Array<Promise<Awaited<ReturnType<typeof get>>>> = [];
      for (let i = 0; i < 500; i++) answers.push(get(`${a.url}/smart_proxy/r${i}/-/`, ALICE, ac.signal));
      // The refused ones answer at once; the 7 admitted ones are held (never ready) until close.
      const refused: Array<Awaited<ReturnType<typeof get>>> = [];
      await new Promise<void>((resolve) => {
        for (const p of answers) {
          void p.then((r) => {
            if (r.status === 429) refused.push(r);
            if (refused.length === 493) resolve();
          }, () => undefined);
        }
      });
      await counting.startsReached(7);
      assert.equal(counting.totalStarts, 7);
      assert.equal(counting.starts.size, 7, 'seven distinct resources, each started once');
      const sample = refused[0]!;
      assert.equal(sample.body.code, 'SP_LIMIT_EXCEEDED');
      assert.equal(sample.body.limit, 'concurrentStarts.total');
      assert.equal(sample.body.max, 7);
      assert.match(sample.retryAfter ?? '', /^\d+$/);
      const limitEvents = a.audit.events.filter((e) => e.type === 'limit');
      assert.equal(limitEvents.length, 493);
      assert.equal(a.audit.events.filter((e) => e.type === 'start').length, 7);
      assert.equal(a.app.manager.heldTotal, 7, 'the admitted requests are held');
      ac.abort();
      const outcomes = await Promise.allSettled(answers);
      assert.equal(outcomes.filter((o) => o.status === 'rejected').length, 7);
      assert.equal(counting.totalStarts, 7);
    } finally {
      await a.close();
    }
  });

  it('500 concurrent requests for distinct group sets of one resource start no more than allowed', async () => {
    const mimic = new MimicProvider({ manual: true });
    const groups = Array.from({ length: 9 }, (_, i) => `h${i}`);
    const a = await startAccessApp({
      identities: [{ kind: 'token', tokens: [{ user: 'hana', groups, hash: (await import('../../src/access/passwords.ts')).hashToken('hana-token') }] }],
      resources: { app: { provider: 'mimic', sharing: 'groups' } },
      access: { limits: { concurrentStarts: { perUser: 5 } } },
    }, { mimic });
    try {
      const subsets: string[] = [];
      for (let mask = 511; subsets.length < 500; mask--) subsets.push(groups.filter((_, i) => (mask & (1 << i)) !== 0).join(','));
      const pending = subsets.map((s) => get(`${a.url}/smart_proxy/app/${s}/`, { Authorization: 'Bearer hana-token' }));
      let settled = 0;
      const statuses: number[] = [];
      for (const p of pending) void p.then((r) => { settled++; statuses.push(r.status); });
      // Every request has either been refused (429) or is held on an admitted instance.
      for (;;) {
        const held = a.app.manager.heldTotal;
        if (settled + held === 500) break;
        await new Promise((r) => setImmediate(r));
      }
      assert.equal(mimic.calls.start, 5);
      assert.ok(statuses.every((s) => s === 429));
      for (const key of [...mimic.instances.keys()]) await mimic.release(key);
      const all = await Promise.all(pending);
      assert.equal(all.filter((r) => r.status === 200).length + all.filter((r) => r.status === 429).length, 500);
      assert.equal(mimic.calls.start, 5);
    } finally {
      await a.close();
    }
  });

  it('runningInstances.perUser: a user at the limit gets 429 naming it; others may still start; a stop frees a slot', async () => {
    const counting = new CountingProvider();
    const echo = await startEchoServer();
    counting.readyEndpoint = echo.url;
    const a = await startAccessApp({
      resources: { r1: { provider: 'counting' }, r2: { provider: 'counting' }, r3: { provider: 'counting' }, r4: { provider: 'counting' } },
      access: { limits: { runningInstances: { perUser: 2 }, runningRetryAfterMs: 30_000 } },
    }, { counting });
    try {
      assert.equal((await get(`${a.url}/smart_proxy/r1/-/`, ALICE)).status, 200);
      assert.equal((await get(`${a.url}/smart_proxy/r2/-/`, ALICE)).status, 200);
      const refused = await get(`${a.url}/smart_proxy/r3/-/`, ALICE);
      assert.equal(refused.status, 429);
      assert.equal(refused.body.limit, 'runningInstances.perUser');
      assert.equal(refused.retryAfter, '30');
      assert.equal(counting.starts.get('r3'), undefined, 'no provider call for a refused start');
      assert.equal((await get(`${a.url}/smart_proxy/r3/-/`, BOB)).status, 200, 'bob has his own allowance');
      assert.equal((await get(`${a.url}/smart_proxy/r3/-/`, ALICE)).status, 200, 'joining a running instance starts nothing');
      const r1 = [...a.app.manager.instancesOf('r1')][0]!;
      await a.app.manager.stop(r1, 'test');
      assert.equal((await get(`${a.url}/smart_proxy/r4/-/`, ALICE)).status, 200, 'the stop freed a slot');
      const limit = a.audit.events.find((e) => e.type === 'limit');
      assert.ok(limit?.type === 'limit' && limit.actor?.user === 'alice' && limit.resource === 'r3');
    } finally {
      await a.close();
      await echo.close();
    }
  });

  it('concurrentStarts.perGroup counts the groups a start acts with', async () => {
    const counting = new CountingProvider();
    const a = await startAccessApp({
      resources: { r1: { provider: 'counting' }, r2: { provider: 'counting' }, r3: { provider: 'counting' } },
      access: { limits: { concurrentStarts: { perGroup: 1 } } },
    }, { counting });
    try {
      const ac = new AbortController();
      const held1 = get(`${a.url}/smart_proxy/r1/g1/`, ALICE, ac.signal).catch(() => 'aborted');
      await counting.startsReached(1);
      const r2 = await get(`${a.url}/smart_proxy/r2/g1/`, BOB);
      assert.equal(r2.status, 429);
      assert.equal(r2.body.limit, 'concurrentStarts.perGroup');
      assert.match(String(r2.body.detail), /group "g1"/);
      const held3 = get(`${a.url}/smart_proxy/r3/g2/`, CAROL, ac.signal).catch(() => 'aborted');
      await counting.startsReached(2);
      assert.deepEqual([...counting.starts.keys()].sort(), ['r1', 'r3']);
      ac.abort();
      assert.deepEqual([await held1, await held3], ['aborted', 'aborted']);
    } finally {
      await a.close();
    }
  });
});
