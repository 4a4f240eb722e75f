/**
 * CORS as a browser enforces it: a page on another origin calls a resource behind the proxy
 * with a bearer token (a preflighted POST), reads the answer and an exposed field, reads a 401
 * as a 401 (not an opaque network error), and a page from an origin not allowed cannot.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext } from 'playwright-core';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { requireBinary } from '../helpers/system.ts';
import { startAccessApp, type AccessApp } from '../access/helpers.ts';

// Missing Chromium fails the file at once with the package to install (never a silent skip).
const CHROMIUM = requireBinary('chromium', 'chromium');

/** A page server: every path answers the same empty page (the test runs its script). */
async function pageServer(): Promise<{ server: Server; origin: string }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>app</title><p>app</p>');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

interface PageResult { ok: boolean; status?: number; body?: string; total?: string | null; error?: string }

describe('CORS in Chromium', { timeout: 120_000 }, () => {
  let a: AccessApp;
  let allowed: { server: Server; origin: string };
  let other: { server: Server; origin: string };
  let context: BrowserContext;
  let profileDir: string;

  before(async () => {
    allowed = await pageServer();
    other = await pageServer();
    const mimic = new MimicProvider({
      bootMs: 200,
      handler: (req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'x-total': '3' });
        res.end(JSON.stringify({ method: req.method, user: req.headers['x-forwarded-user'] }));
      },
    });
    a = await startAccessApp({
      resources: { api: { provider: 'mimic', cors: { allowedOrigins: [allowed.origin], exposedHeaders: ['x-total'] } } },
    }, { mimic });
    profileDir = mkdtempSync(join(tmpdir(), 'sp-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    await context?.close();
    if (profileDir !== undefined) rmSync(profileDir, { recursive: true, force: true });
    await a?.close();
    allowed?.server.close();
    other?.server.close();
  });

  /** Runs a fetch from a page of `origin` and reports what the page could see. */
  async function fetchFrom(origin: string, token: string | undefined): Promise<PageResult> {
    const page = await context.newPage();
    try {
      await page.goto(`${origin}/`);
      return await page.evaluate(async ([url, tok]) => {
        try {
          const headers: Record<string, string> = { 'content-type': 'application/json' };
          if (tok !== undefined) headers.authorization = `Bearer ${tok}`;
          const res = await fetch(url, { method: 'POST', headers, body: '{"n":1}' });
          return { ok: true, status: res.status, body: await res.text(), total: res.headers.get('x-total') };
        } catch (err) {
          return { ok: false, error: String(err) };
        }
      }, [`${a.url}/smart_proxy/api/-/items`, token] as const);
    } finally {
      await page.close();
    }
  }

  it('a page of an allowed origin calls a cold resource with a bearer token and reads the answer', async () => {
    const r = await fetchFrom(allowed.origin, 'alice-token');
    assert.equal(r.ok, true, r.error);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body!), { method: 'POST', user: 'alice' });
    assert.equal(r.total, '3', 'an exposed response field is readable');
  });

  it('the same page reads a 401 as a 401 when it sends no token', async () => {
    const r = await fetchFrom(allowed.origin, undefined);
    assert.equal(r.ok, true, r.error);
    assert.equal(r.status, 401);
    assert.equal(JSON.parse(r.body!).code, 'SP_ACCESS_UNAUTHENTICATED');
  });

  it('a page of another origin cannot call it (the preflight is refused)', async () => {
    const r = await fetchFrom(other.origin, 'alice-token');
    assert.equal(r.ok, false);
    assert.match(r.error ?? '', /Failed to fetch/);
  });
});
