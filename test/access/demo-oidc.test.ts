/**
 * The demo's sign-in set-up (`npm start -- --oidc`, src/demo-oidc.ts): the public URL names
 * the port the proxy will listen on even with `--port 0`, and a taken provider port (another
 * demo running) falls back to a free one instead of failing the start.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { applyEnv } from '../../src/config/env.ts';
import { loadConfigFile } from '../../src/config/load.ts';
import { withEmbeddedIssuer } from '../../src/demo-oidc.ts';
import { freePort } from '../helpers/free-port.ts';

const demoFile = fileURLToPath(new URL('../../examples/demo.yaml', import.meta.url));

describe('the demo\'s sign-in set-up', () => {
  it('resolves --port 0 to a real port in the public URL, and moves off a taken provider port', async () => {
    const config = applyEnv(await loadConfigFile(demoFile), { port: '0' });
    assert.equal(config.listen.port, 0);
    const taken = await freePort();
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(taken, '127.0.0.1', resolve));
    const demo = await withEmbeddedIssuer(config, taken);
    try {
      const publicUrl = new URL(demo.config.access.sessions.publicUrl as string);
      assert.notEqual(publicUrl.port, '0');
      assert.ok(Number(publicUrl.port) > 0);
      assert.equal(demo.config.listen.port, Number(publicUrl.port), 'the proxy listens where the public URL says');
      // A reload re-reads the file (port 0 again): it keeps the same port and URL.
      const reloaded = demo.apply(applyEnv(await loadConfigFile(demoFile), { port: '0' }));
      assert.equal(reloaded.listen.port, demo.config.listen.port);
      assert.notEqual(new URL(demo.issuer.url).port, String(taken), 'the taken provider port was left alone');
      const discovery = await fetch(`${demo.issuer.url}/.well-known/openid-configuration`);
      assert.equal(discovery.status, 200);
      await discovery.text();
    } finally {
      await demo.issuer.close();
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});
