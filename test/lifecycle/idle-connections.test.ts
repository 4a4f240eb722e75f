/**
 * Idle stop never cuts a connected user: an open long response (SSE) or WebSocket keeps its instance
 * running however long the idle time; once it closes, the idle stop follows. Timers run on
 * a ManualClock; the sockets are real.
 */
import assert from 'node:assert/strict';
import { get as httpGet, type ClientRequest, type IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { ManualClock } from '../../src/core/clock.ts';
import { startEchoServer } from '../helpers/echo-server.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness } from '../helpers/proxy-harness.ts';

const MIN = 60_000;

async function until(cond: () => boolean, clock?: ManualClock): Promise<void> {
  while (!cond()) {
    if (clock) await clock.advance(5);
    else await new Promise((r) => setImmediate(r));
  }
}

describe('idle stop and open connections', () => {
  it('an open SSE stream keeps the instance from idle stop; closing it lets the stop happen', async () => {
    const clock = new ManualClock();
    const mimic = new MimicProvider({
      bootMs: 0,
      handler: (req, res) => {
        if (req.url === '/events') {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: hello\n\n');
          return; // stays open until the client goes
        }
        res.end('up');
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, idleStopMs: MIN }], clock });
    let req: ClientRequest | undefined;
    try {
      const first = new Promise<IncomingMessage>((resolve, reject) => {
        req = httpGet(`${h.url}/smart_proxy/app/-/events`, resolve);
        req.on('error', reject);
      });
      let res: IncomingMessage | undefined;
      void first.then((r) => { res = r; });
      await until(() => res !== undefined, clock);
      const chunk = await new Promise<string>((resolve) => res?.once('data', (d: Buffer) => resolve(d.toString())));
      assert.match(chunk, /hello/);
      const [inst] = h.manager.instancesOf('app');
      assert.ok(inst);
      assert.equal(inst.activeConnections, 1);

      await clock.advance(30 * MIN);
      assert.equal(inst.status, 'ready', 'thirty idle minutes, but a user is connected');
      assert.equal(mimic.calls.stop, 0);

      req?.destroy();
      await until(() => inst.activeConnections === 0);
      await clock.advance(MIN - 1_000);
      assert.equal(inst.status, 'ready', 'the closing connection counts as activity');
      await clock.advance(2_000);
      await until(() => inst.status === 'stopped');
      assert.equal(mimic.calls.stop, 1);
    } finally {
      req?.destroy();
      await h.close();
    }
  });

  it('an open WebSocket keeps the instance from idle stop; closing it lets the stop happen', async () => {
    const clock = new ManualClock();
    const mimic = new MimicProvider({
      bootMs: 0,
      backend: async (key) => {
        const echo = await startEchoServer({ name: key });
        new WebSocketServer({ server: echo.server }).on('connection', (ws) => ws.on('message', (d) => ws.send(d)));
        return echo;
      },
    });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic, idleStopMs: MIN }], clock });
    const ws = new WebSocket(`${h.url.replace(/^http/, 'ws')}/smart_proxy/app/-/socket`);
    try {
      let open = false;
      ws.once('open', () => { open = true; });
      await until(() => open, clock);
      const echoed = new Promise<string>((resolve) => ws.once('message', (d: Buffer) => resolve(d.toString())));
      ws.send('still here');
      assert.equal(await echoed, 'still here');
      const [inst] = h.manager.instancesOf('app');
      assert.ok(inst);
      assert.equal(inst.activeConnections, 1, 'the tunnel counts as a connection');

      await clock.advance(30 * MIN);
      assert.equal(inst.status, 'ready', 'thirty idle minutes, but a WebSocket is open');
      assert.equal(mimic.calls.stop, 0);

      ws.close();
      await until(() => inst.activeConnections === 0);
      await clock.advance(MIN + 1_000);
      await until(() => inst.status === 'stopped');
      assert.equal(mimic.calls.stop, 1);
    } finally {
      ws.terminate();
      await h.close();
    }
  });
});
