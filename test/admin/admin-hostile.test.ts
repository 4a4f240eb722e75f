/**
 * The admin listener against a hostile HTTP/1.1 client over raw TCP: what Node's parser refuses
 * is answered as on the data plane (src/proxy/client-error.ts), never in place of an earlier
 * pipelined answer, and CONNECT gets an answer rather than a silent close.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { startAdminApp } from './admin-kit.ts';

async function exchange(url: string, bytes: string): Promise<string> {
  const c = await RawClient.open(url);
  try {
    c.write(bytes);
    return await c.until((_r, closed) => closed, 'the close');
  } finally {
    c.close();
  }
}

describe('admin listener: hostile clients', { timeout: 60_000 }, () => {
  it('answers a pipelined good request before closing on a malformed one; 414, 400 and 405 otherwise', async () => {
    const a = await startAdminApp({ app: { provider: 'mimic' } }, { mimic: new MimicProvider() });
    try {
      const piped = await exchange(a.admin, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n');
      assert.match(piped, /^HTTP\/1\.1 200 OK\r\n[^]*"status":"ok"[^]*$/);
      assert.equal(piped.match(/HTTP\/1\.1 /g)?.length, 1, 'no 400 in place of, or after, the answer');
      assert.match(await exchange(a.admin, `GET /healthz?${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`), /^HTTP\/1\.1 414 /);
      assert.match(await exchange(a.admin, 'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'), /^HTTP\/1\.1 400 /);
      assert.match(await exchange(a.admin, 'CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n'), /^HTTP\/1\.1 405 /);
    } finally {
      await a.close();
    }
  });
});
