import assert from 'node:assert/strict';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { SmartProxyError } from '../../src/core/errors.ts';
import type { ProgressSnapshot } from '../../src/proxy/progress-sse.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { startHarness, type Harness } from '../helpers/proxy-harness.ts';

const BROWSER_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8';

/** A minimal SSE client: resolves events one by one as they arrive. */
class EventStream {
  readonly events: Array<{ event: string; data: ProgressSnapshot }> = [];
  readonly res: Promise<IncomingMessage>;
  ended = false;
  #buf = '';
  #wake: (() => void) | undefined;
  readonly #req: ReturnType<typeof httpRequest>;

  constructor(url: string, headers: Record<string, string> = {}) {
    this.#req = httpRequest(url, { headers: { accept: 'text/event-stream', ...headers } });
    this.res = new Promise((resolve, reject) => {
      this.#req.on('response', (res) => {
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          this.#buf += d;
          let i;
          while ((i = this.#buf.indexOf('\n\n')) !== -1) {
            const block = this.#buf.slice(0, i);
            this.#buf = this.#buf.slice(i + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event !== undefined && data !== undefined) this.events.push({ event, data: JSON.parse(data) as ProgressSnapshot });
          }
          this.#wake?.();
        });
        res.on('end', () => { this.ended = true; this.#wake?.(); });
        resolve(res);
      });
      this.#req.on('error', reject);
    });
    this.#req.end();
  }

  /** Resolves with the first event (from the start) that satisfies `pred`. */
  async until(pred: (e: { event: string; data: ProgressSnapshot }) => boolean): Promise<{ event: string; data: ProgressSnapshot }> {
    for (;;) {
      const found = this.events.find(pred);
      if (found !== undefined) return found;
      if (this.ended) throw new Error(`stream ended without the event; got ${JSON.stringify(this.events.map((e) => e.event))}`);
      await new Promise<void>((resolve) => { this.#wake = resolve; });
    }
  }

  close(): void {
    this.#req.destroy();
  }
}

async function withHarness(mimic: MimicProvider, extra: Partial<Parameters<typeof startHarness>[0]['resources'][number]>, fn: (h: Harness) => Promise<void>, more: Partial<Parameters<typeof startHarness>[0]> = {}): Promise<void> {
  const h = await startHarness({ resources: [{ id: 'app', provider: mimic, ...extra }], ...more });
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

describe('per-client waiting', () => {
  it('a browser navigation gets the waiting page at once (503, Retry-After, no-store, CSP) and the start is triggered', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const res = await fetch(`${h.url}/smart_proxy/app/g1/docs/index.html?tab=2`, { headers: { accept: BROWSER_ACCEPT } });
      assert.equal(res.status, 503);
      assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
      assert.equal(res.headers.get('cache-control'), 'no-store');
      assert.equal(res.headers.get('retry-after'), '5', 'no history yet: the default');
      const csp = res.headers.get('content-security-policy') ?? '';
      assert.match(csp, /default-src 'none'/);
      const nonce = /'nonce-([^']+)'/.exec(csp)?.[1];
      assert.ok(nonce !== undefined);
      const html = await res.text();
      assert.ok(html.includes(`<script nonce="${nonce}">`), 'the one inline script carries the CSP nonce');
      assert.match(html, /<main id="sp-main" data-step="requested"/);
      assert.match(html, /role="status" aria-live="polite"/);
      assert.match(html, /No estimate yet/);
      assert.match(html, /<noscript><meta http-equiv="refresh" content="5"><\/noscript>/);
      assert.ok(html.includes('/smart_proxy/app/g1/docs/index.html?tab=2'));
      assert.ok(html.includes('/_smart_proxy/events/app/g1'));
      assert.doesNotMatch(html, /(src|href)="https?:/, 'no external assets');
      // The start is under way though nobody is held.
      await mimic.started();
      assert.equal(mimic.calls.start, 1);
      assert.equal(h.manager.heldTotal, 0);
      // HEAD gets the same head and no body.
      const head = await fetch(`${h.url}/smart_proxy/app/g1/`, { method: 'HEAD', headers: { accept: 'text/html' } });
      assert.equal(head.status, 503);
      assert.equal(await head.text(), '');
      assert.equal(mimic.calls.start, 1, 'a second page view joins the same start');
      const ready = new Promise<void>((resolve) => {
        const off = h.manager.onEvent((e) => { if (e.type === 'boot-finished') { off(); resolve(); } });
      });
      await mimic.release('*');
      await ready;
      // What the page's reload does once ready: the same URL now reaches the content.
      const after = await fetch(`${h.url}/smart_proxy/app/g1/docs/index.html?tab=2`, { headers: { accept: BROWSER_ACCEPT } });
      assert.equal(after.status, 200);
      assert.equal(((await after.json()) as { url: string }).url, '/docs/index.html?tab=2');
    });
  });

  it('puts the ETA from past boots into the page and Retry-After', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      h.manager.recordBootSample('app', 4000);
      h.manager.recordBootSample('app', 6000);
      h.manager.recordBootSample('app', 12_000);
      const res = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
      assert.equal(res.status, 503);
      // p50 is 6 s; a few ms have passed, so the rest rounds up to 6.
      assert.equal(res.headers.get('retry-after'), '6');
      const html = await res.text();
      assert.match(html, /About \d\.\d s left: usually 6\.0 s, 9 in 10 within 12 s \(from 3 past starts\)/);
      assert.match(html, /<meta http-equiv="refresh" content="5">/, 'refresh is capped at 5 s');
    });
  });

  it('holds an API client until ready, then 200', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const pending = fetch(`${h.url}/smart_proxy/app/g1/api/x`, { headers: { accept: 'application/json' } });
      await mimic.started();
      assert.equal(h.manager.heldTotal, 1);
      await mimic.release('*');
      const res = await pending;
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('preference-applied'), null, 'no preference, none applied');
      assert.equal(((await res.json()) as { url: string }).url, '/api/x');
    });
  });

  it('Prefer: wait=1 on a 5 s boot gets 504 after about 1 s, with Preference-Applied and Retry-After from the ETA', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, { bootTimeoutMs: 5_000 }, async (h) => {
      h.manager.recordBootSample('app', 5_000);
      const t0 = performance.now();
      const res = await fetch(`${h.url}/smart_proxy/app/g1/api`, { headers: { prefer: 'wait=1', accept: 'application/json' } });
      const tookMs = performance.now() - t0;
      assert.equal(res.status, 504);
      assert.ok(tookMs >= 950 && tookMs < 3_000, `took ${tookMs} ms`);
      assert.equal(res.headers.get('preference-applied'), 'wait=1');
      assert.equal(res.headers.get('content-type'), 'application/problem+json');
      // About 4 s of the usual 5 s remain.
      assert.equal(res.headers.get('retry-after'), '4');
      const problem = await res.json() as { code: string; waitedMs: number; statusUrl: string };
      assert.equal(problem.code, 'SP_BOOT_TIMEOUT');
      assert.equal(problem.waitedMs, 1000);
      assert.equal(problem.statusUrl, '/_smart_proxy/status/app/g1');
      // The client gave up, not the boot: a request without a preference still gets through.
      const [inst] = [...h.manager.instancesOf('app')];
      assert.equal(inst?.status, 'starting');
      const pending = fetch(`${h.url}/smart_proxy/app/g1/api`);
      await mimic.release('*');
      assert.equal((await pending).status, 200);
    });
  });

  it('a browser that says Prefer: wait is held like an API client and gets the content', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const pending = fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html', prefer: 'wait=30' } });
      await mimic.started();
      await mimic.release('*');
      const res = await pending;
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('preference-applied'), 'wait=10', 'capped at the hold timeout (10 s here)');
      await res.text();
    });
  });

  it('Prefer: respond-async gets 202 at once with a status URL that reports ready later', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const res = await fetch(`${h.url}/smart_proxy/app/g1/jobs`, { method: 'POST', body: 'x', headers: { prefer: 'respond-async' } });
      assert.equal(res.status, 202);
      assert.equal(res.headers.get('preference-applied'), 'respond-async');
      assert.equal(res.headers.get('location'), '/_smart_proxy/status/app/g1');
      assert.ok(Number(res.headers.get('retry-after')) >= 1);
      const accepted = await res.json() as ProgressSnapshot & { statusUrl: string };
      assert.equal(accepted.state, 'starting');
      assert.equal(accepted.statusUrl, '/_smart_proxy/status/app/g1');
      await mimic.started();
      assert.equal(mimic.calls.start, 1);
      assert.equal(h.manager.heldTotal, 0, 'nothing is held');

      const statusUrl = new URL(res.headers.get('location') ?? '', h.url);
      const during = await fetch(statusUrl);
      assert.equal(during.status, 200);
      assert.ok(during.headers.get('retry-after') !== null);
      const s1 = await during.json() as ProgressSnapshot;
      assert.equal(s1.state, 'starting');
      assert.ok(s1.phase === 'requested' || s1.phase === 'booting');
      assert.equal(s1.eta, null);
      assert.equal(typeof s1.elapsedMs, 'number');

      const ready = new Promise<void>((resolve) => {
        const off = h.manager.onEvent((e) => { if (e.type === 'boot-finished') { off(); resolve(); } });
      });
      await mimic.release('*');
      await ready;
      const later = await fetch(statusUrl);
      const s2 = await later.json() as ProgressSnapshot;
      assert.equal(s2.state, 'ready');
      assert.equal(s2.step, 'ready');
      assert.equal(later.headers.get('retry-after'), null);
      assert.ok(s2.eta !== null && s2.eta.samples === 1, 'the boot just finished is now history');
      // Ready: the preference no longer matters, the request is forwarded.
      const direct = await fetch(`${h.url}/smart_proxy/app/g1/jobs`, { method: 'POST', body: 'x', headers: { prefer: 'respond-async' } });
      assert.equal(direct.status, 200);
      await direct.text();
    });
  });

  it('respond-async with wait=N holds N seconds, then answers 202 instead of 504', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const res = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { prefer: 'respond-async, wait=1' } });
      assert.equal(res.status, 202);
      assert.equal(res.headers.get('preference-applied'), 'respond-async, wait=1');
      assert.equal(res.headers.get('location'), '/_smart_proxy/status/app/g1');
      await res.text();
    });
  });

  it('streams progress over SSE, one event per step, then ready, and ends', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const page = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
      assert.equal(page.status, 503);
      await page.text();
      const stream = new EventStream(`${h.url}/_smart_proxy/events/app/g1`);
      try {
        const res = await stream.res;
        assert.equal(res.statusCode, 200);
        assert.match(res.headers['content-type'] ?? '', /^text\/event-stream/);
        const first = await stream.until(() => true);
        assert.equal(first.event, 'progress');
        assert.equal(first.data.state, 'starting');
        await stream.until((e) => e.data.step === 'booting');
        await mimic.release('*');
        const ready = await stream.until((e) => e.event === 'ready');
        assert.equal(ready.data.state, 'ready');
        assert.ok((ready.data.elapsedMs ?? -1) >= 0);
        await stream.until(() => stream.ended);
        const steps = stream.events.map((e) => e.data.step);
        assert.deepEqual(steps.filter((s, i) => s !== steps[i - 1]).slice(-3), ['booting', 'probing', 'ready']);
        assert.equal(h.proxy.server.listening, true);
      } finally {
        stream.close();
      }
    });
  });

  it('reports a failed start with its reason on the stream and the status URL', async () => {
    const mimic = new MimicProvider({ bootMs: 0, bootFails: true });
    await withHarness(mimic, { failureCooldownMs: 60_000 }, async (h) => {
      const stream = new EventStream(`${h.url}/_smart_proxy/events/app/g1`);
      try {
        const first = await stream.until(() => true);
        assert.equal(first.data.state, 'stopped', 'the stream alone starts nothing');
        assert.equal(mimic.calls.start, 0);
        const page = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
        assert.equal(page.status, 503);
        await page.text();
        const failed = await stream.until((e) => e.event === 'failed');
        assert.match(failed.data.reason ?? '', /mimic boot failed/);
        assert.ok(failed.data.retryAfterS > 1, 'the cool-down is the retry time');
        const status = await (await fetch(`${h.url}/_smart_proxy/status/app/g1`)).json() as ProgressSnapshot;
        assert.equal(status.step, 'failed');
        // During the cool-down a browser gets the failure, not a page promising progress.
        const again = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
        assert.equal(again.status, 503);
        assert.match(await again.text(), /SP_RESOURCE_FAILED/);
      } finally {
        stream.close();
      }
    });
  });

  it('applies the resource access steps to the status and event URLs', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const denied = await fetch(`${h.url}/_smart_proxy/status/app/evil`);
      assert.equal(denied.status, 403);
      assert.equal((await denied.json() as { code: string }).code, 'SP_ACCESS_DENIED');
      const deniedEvents = await fetch(`${h.url}/_smart_proxy/events/app/evil`);
      assert.equal(deniedEvents.status, 403);
      await deniedEvents.text();
      assert.equal((await fetch(`${h.url}/_smart_proxy/status/nope/g1`)).status, 404);
      assert.equal((await fetch(`${h.url}/_smart_proxy/status/app`)).status, 404);
      assert.equal((await fetch(`${h.url}/_smart_proxy/status/app/g1/extra`)).status, 404);
      assert.equal((await fetch(`${h.url}/_smart_proxy/other/app/g1`)).status, 404);
      assert.equal((await fetch(`${h.url}/_smart_proxy/status/app/%00`)).status, 400);
      const post = await fetch(`${h.url}/_smart_proxy/status/app/g1`, { method: 'POST' });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get('allow'), 'GET, HEAD');
      const ok = await fetch(`${h.url}/_smart_proxy/status/app/g1`);
      assert.equal(ok.status, 200);
      await ok.text();
      assert.equal(mimic.calls.start, 0, 'none of these started anything');
    }, {
      authorize: (identity) => identity.groups.includes('evil') ? new SmartProxyError('SP_ACCESS_DENIED') : identity.groups,
    });
  });

  it('escapes the path in the page (no markup from the URL survives)', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, {}, async (h) => {
      const { port } = new URL(h.url);
      const raw = await new Promise<string>((resolve, reject) => {
        const s = connect(Number(port), '127.0.0.1', () => {
          s.write('GET /smart_proxy/app/g1/x?q="><script>alert(1)</script>&b=\'<img> HTTP/1.1\r\nhost: x\r\naccept: text/html\r\nconnection: close\r\n\r\n');
        });
        let out = '';
        s.setEncoding('utf8');
        s.on('data', (d: string) => { out += d; });
        s.on('end', () => resolve(out));
        s.on('error', reject);
      });
      assert.match(raw, /^HTTP\/1\.1 503/);
      assert.ok(!raw.includes('<script>alert'), 'raw markup from the URL must not appear');
      assert.ok(!raw.includes('<img>'));
      assert.ok(raw.includes('&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;b=&#39;&lt;img&gt;'));
    });
  });

  it('answers a browser with the page even when every hold slot is taken', async () => {
    const mimic = new MimicProvider({ manual: true });
    await withHarness(mimic, { maxHeldRequests: 1 }, async (h) => {
      const held = fetch(`${h.url}/smart_proxy/app/g1/`);
      await mimic.started();
      const full = await fetch(`${h.url}/smart_proxy/app/g1/`);
      assert.equal(full.status, 503, 'an API client past the bound');
      assert.equal((await full.json() as { code: string }).code, 'SP_HOLD_QUEUE_FULL');
      const page = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
      assert.equal(page.status, 503);
      assert.match(await page.text(), /id="sp-main"/);
      await mimic.release('*');
      assert.equal((await held).status, 200);
    });
  });

  it('a page shown while the instance is stopping starts it again once the stop is done', { timeout: 20_000 }, async () => {
    let openGate: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => { openGate = resolve; });
    class SlowStop extends MimicProvider {
      override async stop(ref: Parameters<MimicProvider['stop']>[0]): Promise<void> {
        await gate;
        return super.stop(ref);
      }
    }
    const mimic = new SlowStop({ bootMs: 0 });
    await withHarness(mimic, {}, async (h) => {
      const warm = await fetch(`${h.url}/smart_proxy/app/g1/`);
      assert.equal(warm.status, 200);
      await warm.text();
      const [inst] = [...h.manager.instancesOf('app')];
      assert.ok(inst !== undefined);
      const stopped = h.manager.stop(inst, 'test');
      assert.equal(inst.status, 'stopping');
      const page = await fetch(`${h.url}/smart_proxy/app/g1/`, { headers: { accept: 'text/html' } });
      assert.equal(page.status, 503);
      assert.match(await page.text(), /data-step="stopping"/);
      const ready = new Promise<void>((resolve) => {
        const off = h.manager.onEvent((e) => { if (e.type === 'boot-finished') { off(); resolve(); } });
      });
      openGate();
      await stopped;
      await ready;
      assert.equal(mimic.calls.start, 2, 'started again after the stop, with nobody held');
    });
  });

  it('ends open progress streams when the proxy closes', async () => {
    const mimic = new MimicProvider({ manual: true });
    const h = await startHarness({ resources: [{ id: 'app', provider: mimic }] });
    const stream = new EventStream(`${h.url}/_smart_proxy/events/app/g1`);
    await stream.until(() => true);
    await h.close();
    await stream.until(() => stream.ended).catch(() => undefined);
    assert.equal(stream.ended, true);
  });
});
