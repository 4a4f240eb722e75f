/**
 * The Redis store: the shared store contract against a real Redis (SMART_PROXY_TEST_REDIS_URL,
 * by default 127.0.0.1:6379), and its
 * stored format pinned (records are versioned; a change to them needs a new version).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { deleteByPrefix } from '../../src/state/redis/client.ts';
import { REDIS_RECORD_VERSION, RedisStore, decodeInstance, encodeInstance } from '../../src/state/redis/redis-store.ts';
import { record, storeContract } from './store-contract.ts';
import { requireRedis, testRedisUrl } from '../helpers/system.ts';

const url = testRedisUrl;
await requireRedis(url);
const prefix = `sp-test:${randomUUID()}:`;
const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const admin = new Redis(url);
after(async () => {
  await deleteByPrefix(admin, prefix);
  admin.disconnect();
});
let n = 0;

storeContract({
  name: 'redis', maxBootSamplesPerResource: 10, maxAuditEvents: 20,
  make: async () => new RedisStore({ url, keyPrefix: `${prefix}${n++}:`, logger: quiet, maxBootSamplesPerResource: 10, maxAuditEvents: 20 }),
});

describe('RedisStore format', () => {
  it('writes instance records as version-1 JSON in one hash, field resource/key', async () => {
    const p = `${prefix}format:`;
    const store = new RedisStore({ url, keyPrefix: p, logger: quiet });
    try {
      await store.apply({ upserts: [record({ resourceId: 'nb', instanceKey: 'g 1,g2', groups: ['g 1', 'g2'] })], deletes: [], bootSamples: [{ resourceId: 'nb', bootMs: 1200, at: 5 }], audit: [{ at: 7, type: 'instance-changed', resourceId: 'nb', status: 'ready' }] });
      const raw = await admin.hgetall(`${p}instances`);
      assert.deepEqual(Object.keys(raw), ['nb/g%201%2Cg2']);
      assert.equal(REDIS_RECORD_VERSION, 1);
      assert.equal(raw['nb/g%201%2Cg2'], '{"v":1,"resourceId":"nb","instanceKey":"g 1,g2","groups":["g 1","g2"],"user":null,"handle":"vm-1",'
        + '"endpoint":"http://127.0.0.1:9/x","status":"ready","startRequestedAt":1000,"readyAt":2000,"lastActivityAt":3000,"updatedAt":3000}');
      assert.deepEqual(await admin.lrange(`${p}boot:nb`, 0, -1), ['{"v":1,"resourceId":"nb","bootMs":1200,"at":5}']);
      assert.deepEqual(await admin.lrange(`${p}audit`, 0, -1), ['{"v":1,"at":7,"type":"instance-changed","resourceId":"nb","instanceKey":null,"status":"ready","reason":null,"actor":null,"id":1}'],
        'actor and id were added to version 1 (readers ignore unknown fields; a missing id reads as 0)');
    } finally {
      await store.close();
    }
  });

  it('refuses a record of another version instead of guessing', async () => {
    assert.deepEqual(decodeInstance(encodeInstance(record())), record());
    const newer = encodeInstance(record()).replace('"v":1', '"v":2');
    assert.throws(() => decodeInstance(newer), /record version 2/);
    const p = `${prefix}newer:`;
    await admin.hset(`${p}instances`, 'app/*', newer);
    const store = new RedisStore({ url, keyPrefix: p, logger: quiet });
    try {
      await assert.rejects(store.loadInstances(), /record version 2/);
    } finally {
      await store.close();
    }
  });

  it('rejects (never hangs, never crashes) while Redis is unreachable', async () => {
    const store = new RedisStore({ url: 'redis://127.0.0.1:1', keyPrefix: prefix, logger: quiet });
    try {
      await assert.rejects(store.loadInstances());
      await assert.rejects(store.apply({ upserts: [record()], deletes: [], bootSamples: [], audit: [] }));
    } finally {
      await store.close();
    }
  });
});
