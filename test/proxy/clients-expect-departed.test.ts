/**
 * Real clients over raw TCP: `Expect: 100-continue` (issue 11, item 1) and clients that leave
 * before their request is forwarded (item 2).
 */
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { describe, it } from 'node:test';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { Identify } from '../../src/proxy/server.ts';
import { startEchoServer, type Echo } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { RawClient } from '../helpers/raw-client.ts';

const MiB = 1024 * 1024;

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

/** Resolves when the proxy's side of its next accepted connection has closed (all its 'close' listeners ran). */
function nextConnectionClosed(h: Harness): Promise<void> {
  return new Promise((resolve) => {
    h.proxy.server.once('connection', (s: Socket) => s.once('close', () => setImmediate(resolve)));
  });
}

/** A backend that records every request it receives except the readiness probe (GET /). */
function recordingMimic(options: { manual?: boolean } = {}): { mimic: MimicProvider; seen: string[] } {
  const seen: string[] = [];
  const mimic = new MimicProvider({
    ...options,
    backend: (key) => startEchoServer({
      name: key,
      handler: (req: IncomingMessage, res: ServerResponse) => {
        if (!(req.method === 'GET' && req.url === '/')) seen.push(`${req.method} ${req.url}`);
        req.resume();
        req.on('end', () => res.end('ok'));
      },
    }),
  });
  return { mimic, seen };
}

/** An identify step the test can pause, like a slow scrypt or a JWKS fetch. */
function pausableIdentify(): { identify: Identify; pauseNext: () => { entered: Promise<void>; resume: () => void } } {
  let next: { enter: () => void; gate: Promise<void> } | undefined;
  const identify: Identify = async (req, route) => {
    if (req.headers['x-refuse'] !== undefined) return new SmartProxyError('SP_ACCESS_UNAUTHENTICATED', 'refused by the test');
    const pending = next;
    next = undefined;
    if (pending !== undefined) {
      pending.enter();
      await pending.gate;
    }
    return { user: 'u', groups: route.groups };
  };
  return {
    identify,
    pauseNext() {
      let enter = (): void => undefined;
      let resume = (): void => undefined;
      const entered = new Promise<void>((r) => { enter = r; });
      const gate = new Promise<void>((r) => { resume = r; });
      next = { enter, gate };
      return { entered, resume };
    },
  };
}

describe('Expect: 100-continue', { timeout: 60_000 }, () => {
  it('answers 100 only after admission, forwards the body, and never forwards Expect', async () => {
    const mimic = new MimicProvider();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const c = await RawClient.open(h.url);
    try {
      const body = Buffer.alloc(2 * MiB, 0x61);
      c.write(`POST /smart_proxy/app/g1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\n\r\n`);
      await c.until((r) => r.startsWith('HTTP/1.1 100 Continue\r\n\r\n'), '100 Continue');
      c.write(body);
      const res = await c.response(20_000);
      assert.equal(res.status, 200, res.body);
      const echo = JSON.parse(res.body) as Echo;
      assert.equal(echo.bodyBytes, body.length);
      assert.equal(echo.headers.expect, undefined, 'Expect is answered by the proxy, not forwarded');
      assert.doesNotMatch(res.head, /connection: close/i, 'a forwarded request keeps its connection');
    } finally {
      c.close();
      await h.close();
    }
  });

  it('never sends 100 to a refused request: its final status comes first and the connection closes', async () => {
    const mimic = new MimicProvider();
    const { identify } = pausableIdentify();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], identify });
    const c = await RawClient.open(h.url);
    try {
      c.write(`PUT /smart_proxy/app/g1/upload HTTP/1.1\r\nhost: x\r\nx-refuse: 1\r\ncontent-length: ${MiB}\r\nexpect: 100-continue\r\n\r\n`);
      const res = await c.response();
      assert.equal(res.status, 401);
      assert.doesNotMatch(c.received, /^HTTP\/1\.1 100/, 'no 100 before the refusal');
      assert.match(res.head, /\r\nconnection: close/i, 'RFC 9110 §10.1.1: the unread body is not waited for');
      await c.until((_r, closed) => closed, 'the connection to close');
      assert.equal(mimic.calls.start, 0);
    } finally {
      c.close();
      await h.close();
    }
  });

  it('holds a cold upload with Expect like one without: 100 only once the backend is ready', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const c = await RawClient.open(h.url);
    try {
      const body = Buffer.alloc(1500 * 1024, 0x62);
      c.write(`POST /smart_proxy/app/g1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\n\r\n`);
      await until(() => h.manager.heldTotal === 1);
      assert.equal(h.proxy.heldBytes, body.length, 'held and counted like any upload');
      assert.equal(c.received, '', 'no 100 while the resource boots');
      await mimic.release('*');
      await c.until((r) => r.startsWith('HTTP/1.1 100 Continue\r\n\r\n'), '100 Continue after readiness');
      c.write(body);
      const res = await c.response(20_000);
      assert.equal(res.status, 200, res.body);
      assert.equal((JSON.parse(res.body) as Echo).bodyBytes, body.length);
    } finally {
      c.close();
      await h.close();
    }
  });
});

describe('a client that leaves is gone everywhere', { timeout: 60_000 }, () => {
  it('a DELETE abandoned during identify never reaches the backend (warm resource)', async () => {
    const { mimic, seen } = recordingMimic();
    const { identify, pauseNext } = pausableIdentify();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }], identify });
    try {
      // Warmed over a connection that closes, so the only connection left is the DELETE's.
      const w = await RawClient.open(h.url);
      w.write('GET /smart_proxy/app/g1/warm HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
      assert.equal((await w.response()).status, 200);
      await w.until((_r, closed) => closed, 'the warm-up connection to close');
      const pause = pauseNext();
      const proxySide = nextConnectionClosed(h);
      const c = await RawClient.open(h.url);
      c.write('DELETE /smart_proxy/app/g1/items/7 HTTP/1.1\r\nhost: x\r\n\r\n');
      await pause.entered;
      c.close();
      // The proxy has seen the connection go before identify finishes (as with a slow scrypt).
      await proxySide;
      pause.resume();
      // A later request on the same backend: had the DELETE been sent, it would be before this.
      const after = await fetch(`${h.url}/smart_proxy/app/g1/after`);
      assert.equal(after.status, 200);
      await after.text();
      assert.deepEqual(seen, ['GET /warm', 'GET /after']);
    } finally {
      await h.close();
    }
  });

  it('a cold request abandoned during identify starts nothing and is never held', async () => {
    const { mimic } = recordingMimic({ manual: true });
    const other = new MimicProvider();
    const { identify, pauseNext } = pausableIdentify();
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }, { id: 'other', provider: other }], identify });
    try {
      const pause = pauseNext();
      const proxySide = nextConnectionClosed(h);
      const c = await RawClient.open(h.url);
      c.write('POST /smart_proxy/app/g1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n');
      await pause.entered;
      c.close();
      await proxySide;
      pause.resume();
      const later = await fetch(`${h.url}/smart_proxy/other/g1/`);
      assert.equal(later.status, 200);
      await later.text();
      assert.equal(mimic.calls.start, 0, 'no start for a departed client');
      assert.equal(h.manager.heldTotal, 0);
    } finally {
      await h.close();
    }
  });

  it('a request abandoned during a hold is not sent once the backend is ready', async () => {
    const { mimic, seen } = recordingMimic({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    try {
      const c = await RawClient.open(h.url);
      c.write('DELETE /smart_proxy/app/g1/items/8 HTTP/1.1\r\nhost: x\r\n\r\n');
      await until(() => h.manager.heldTotal === 1);
      c.close();
      await until(() => h.manager.heldTotal === 0);
      await mimic.release('*');
      const after = await fetch(`${h.url}/smart_proxy/app/g1/after`);
      assert.equal(after.status, 200);
      await after.text();
      assert.deepEqual(seen, ['GET /after']);
    } finally {
      await h.close();
    }
  });
});
