import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { describe, it } from 'node:test';
import { ProviderError } from '../../src/core/errors.ts';
import { createHttpProvider, type HttpProviderOptions } from '../../src/providers/http/http-provider.ts';
import { parsePointer, resolvePointer } from '../../src/providers/http/json-pointer.ts';
import { sendJson, startJsonServer } from '../fixtures/standin-kit.ts';

const ref = { resourceId: 'r1', instanceKey: '*', groups: ['a', 'b'] };
const fresh = (): AbortSignal => AbortSignal.timeout(5000);
const SECRET = 's3cr3t-value';

/** A cloud whose every answer the test scripts; records what it received. */
async function scripted(answer: (res: ServerResponse, path: string) => void) {
  const seen: Array<{ method: string; path: string; headers: Record<string, unknown>; body: unknown }> = [];
  const server = await startJsonServer((req, url, body, res) => {
    seen.push({ method: req.method ?? '', path: url.pathname + url.search, headers: req.headers, body });
    answer(res, url.pathname);
  });
  return { server, seen };
}

function options(baseUrl: string, over: Partial<HttpProviderOptions> = {}): HttpProviderOptions {
  return {
    baseUrl: `${baseUrl}/api`,
    secrets: { key: () => Promise.resolve(SECRET) },
    start: { request: { method: 'POST', url: '/m/{resourceId}/start?g={groups}', headers: { authorization: 'Bearer {secret.key}' }, body: { who: '{instanceKey}', n: 1, list: ['{resourceId}'] } } },
    inspect: [{ request: { method: 'GET', url: '/m/{resourceId}?k={secret.key}' }, state: { pointer: '/m/state', values: { up: 'running', boot: 'starting', down: 'stopped' } }, endpoint: 'http://{/m/host}:{/m/port}' }],
    stop: { request: { method: 'POST', url: '/m/{resourceId}/stop' } },
    requestTimeoutMs: 500,
    ...over,
  };
}

void describe('http provider', () => {
  void it('fills URL (encoded), headers and JSON body from templates; maps state and endpoint by JSON pointer', async () => {
    const { server, seen } = await scripted((res, path) => {
      if (path.endsWith('/start')) return sendJson(res, 202, {});
      sendJson(res, 200, { m: { state: 'up', host: '127.0.0.1', port: 8123 } });
    });
    const p = createHttpProvider(options(server.url));
    try {
      await p.start({ ...ref, resourceId: 'a b/c' }, fresh());
      assert.equal(seen[0]?.path, '/api/m/a%20b%2Fc/start?g=a%2Cb');
      assert.equal(seen[0]?.headers.authorization, `Bearer ${SECRET}`);
      assert.deepEqual(seen[0]?.body, { who: '*', n: 1, list: ['a b/c'] });
      assert.deepEqual(await p.inspect(ref, fresh()), { state: 'running', endpoint: 'http://127.0.0.1:8123', handle: undefined });
    } finally {
      await p.close();
      await server.close();
    }
  });

  void it('404 on inspect is stopped, 404 on stop is success', async () => {
    const { server } = await scripted((res) => sendJson(res, 404, { error: 'no such machine' }));
    const p = createHttpProvider(options(server.url));
    try {
      assert.equal((await p.inspect(ref, fresh())).state, 'stopped');
      await p.stop(ref, fresh());
    } finally {
      await p.close();
      await server.close();
    }
  });

  void it('5xx, 429 (with Retry-After) and timeouts are retryable; other 4xx are not', async () => {
    let status = 500;
    const { server } = await scripted((res) => {
      if (status === 0) return; // never answers: a timeout
      if (status === 429) res.setHeader('retry-after', '7');
      sendJson(res, status, { message: 'nope' });
    });
    const p = createHttpProvider(options(server.url));
    try {
      const check = async (s: number, retryable: boolean, re: RegExp): Promise<ProviderError> => {
        status = s;
        let caught: unknown;
        await p.inspect(ref, fresh()).catch((e: unknown) => { caught = e; });
        assert.ok(caught instanceof ProviderError, `status ${s}`);
        assert.equal(caught.retryable, retryable, `status ${s}`);
        assert.match(caught.message, re);
        assert.ok(!caught.message.includes(SECRET), 'the secret in the URL is redacted');
        return caught;
      };
      await check(500, true, /inspect: GET http:\/\/127\.0\.0\.1:\d+\/api\/m\/r1: answered 500/);
      assert.equal((await check(429, true, /answered 429/)).retryAfterS, 7);
      await check(400, false, /answered 400: \{"message":"nope"\}/);
      await check(0, true, /no answer within 500 ms/);
    } finally {
      await p.close();
      await server.close();
    }
  });

  void it('a malformed answer is a clear non-retryable error; an unmapped state names the value', async () => {
    let body: string | undefined = 'not json';
    const { server } = await scripted((res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
    });
    const p = createHttpProvider(options(server.url));
    try {
      const expectMalformed = async (re: RegExp): Promise<void> => {
        await assert.rejects(p.inspect(ref, fresh()), (err: unknown) => err instanceof ProviderError && !err.retryable && re.test(err.message));
      };
      await expectMalformed(/malformed answer \(200\): expected a JSON body; got: not json/);
      body = JSON.stringify({ m: {} });
      await expectMalformed(/expected a state at "\/m\/state"/);
      body = JSON.stringify({ m: { state: 'MIGRATING' } });
      await expectMalformed(/state "MIGRATING" at "\/m\/state" is not mapped \(known: up, boot, down/);
      body = JSON.stringify({ m: { state: 'up', host: '127.0.0.1' } });
      await expectMalformed(/no endpoint: the answer has nothing at JSON pointer "\/m\/port"/);
      body = JSON.stringify({ m: { state: 'boot', reason: SECRET } });
      assert.equal((await p.inspect(ref, fresh())).state, 'starting', 'not running: the endpoint is not needed');
    } finally {
      await p.close();
      await server.close();
    }
  });

  void it('refuses bad templates at construction and a secret with a line break at call time', async () => {
    assert.throws(() => createHttpProvider(options('http://x', { stop: { request: { method: 'POST', url: '/m/{resourceID}' } } })), /unknown placeholder \{resourceID\}/);
    assert.throws(() => createHttpProvider(options('http://x', { stop: { request: { method: 'POST', url: '/m/{secret.nope}' } } })), /names no credential/);
    assert.throws(() => createHttpProvider(options('http://x', { inspect: [{ request: { method: 'GET', url: '/' }, state: { pointer: 'm/state', values: {} }, endpoint: 'http://x' }] })), /must be empty or start with "\/"/);
    const { server, seen } = await scripted((res) => sendJson(res, 202, {}));
    const p = createHttpProvider(options(server.url, { secrets: { key: () => Promise.resolve('a\r\nx-injected: 1') } }));
    try {
      await assert.rejects(p.start(ref, fresh()), /header authorization would contain a line break/);
      assert.equal(seen.length, 0);
    } finally {
      await p.close();
      await server.close();
    }
  });

  void it('{handle} in a template: unknown handle means stopped for inspect and nothing to do for stop', async () => {
    const { server, seen } = await scripted((res) => sendJson(res, 200, { m: { state: 'up', host: 'h', port: 1 } }));
    const p = createHttpProvider(options(server.url, {
      inspect: [{ request: { method: 'GET', url: '/m/{handle}' }, state: { pointer: '/m/state', values: { up: 'running' } }, endpoint: 'http://{/m/host}:{/m/port}' }],
      stop: { request: { method: 'DELETE', url: '/m/{handle}' } },
    }));
    try {
      assert.equal((await p.inspect(ref, fresh())).state, 'stopped');
      await p.stop(ref, fresh());
      assert.equal(seen.length, 0);
      assert.equal((await p.inspect({ ...ref, handle: 'vm-9' }, fresh())).state, 'running');
      assert.equal(seen[0]?.path, '/api/m/vm-9');
    } finally {
      await p.close();
      await server.close();
    }
  });
});

void describe('JSON Pointer (RFC 6901)', () => {
  void it('resolves the examples of section 5', () => {
    const doc = { foo: ['bar', 'baz'], '': 0, 'a/b': 1, 'c%d': 2, 'e^f': 3, 'g|h': 4, 'i\\j': 5, 'k"l': 6, ' ': 7, 'm~n': 8 };
    const get = (p: string): unknown => {
      const r = resolvePointer(doc, parsePointer(p));
      return r.found ? r.value : 'NOT FOUND';
    };
    assert.deepEqual(get(''), doc);
    assert.deepEqual(get('/foo'), ['bar', 'baz']);
    assert.equal(get('/foo/0'), 'bar');
    assert.equal(get('/'), 0);
    assert.equal(get('/a~1b'), 1);
    assert.equal(get('/c%d'), 2);
    assert.equal(get('/i\\j'), 5);
    assert.equal(get('/ '), 7);
    assert.equal(get('/m~0n'), 8);
    assert.equal(get('/foo/01'), 'NOT FOUND', 'no leading zeros');
    assert.equal(get('/foo/-'), 'NOT FOUND');
    assert.equal(get('/foo/2'), 'NOT FOUND');
    assert.equal(get('/toString'), 'NOT FOUND', 'own properties only');
    assert.throws(() => parsePointer('/a~2'), /bad escape/);
  });
});
