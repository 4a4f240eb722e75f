/**
 * A JWT verifier's HS* `secret` from `{ env: NAME }` (or `{ file: PATH }`), as other secrets
 * in the config: read at start-up and at each reload, an unset variable warned about by
 * check-config and refused by start (naming the file and `identities[0].secret`) and by a
 * reload (which keeps the running configuration), and held to the 32 characters an inline
 * secret needs.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { SignJWT } from 'jose';
import { configSchema } from '../../src/config/schema.ts';
import { startApp } from '../../src/main.ts';
import { startAdminApp } from '../admin/admin-kit.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import '../helpers/test-caches.ts';

const run = promisify(execFile);
const cli = new URL('../../bin/smart-proxy.js', import.meta.url).pathname;
const VAR = `SP_TEST_JWT_SECRET_${process.pid}`;
const SECRET_1 = 'first-secret-of-at-least-32-characters!';
const SECRET_2 = 'second-secret-of-at-least-32-characters';

const jwtIdentity = (secret: unknown) => ({ kind: 'jwt', issuer: 'https://issuer.test', audience: 'proxy', algorithms: ['HS256'], secret });

function token(secret: string): Promise<string> {
  return new SignJWT({ groups: ['g1'] }).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://issuer.test').setAudience('proxy')
    .setSubject('erin').setIssuedAt().setExpirationTime('5m').sign(new TextEncoder().encode(secret));
}

describe('JWT verifier secret from the environment', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sp-jwt-env-'));
  after(() => {
    delete process.env[VAR];
    rmSync(dir, { recursive: true, force: true });
  });

  it('verifies with the variable\'s value, reads it again at a reload, and a reload without it is refused', async () => {
    process.env[VAR] = SECRET_1;
    const resources = { app: { provider: 'mimic', sharing: 'shared' } };
    const a = await startAdminApp(resources, { mimic: new MimicProvider() }, { identities: [jwtIdentity({ env: VAR })] }, true);
    try {
      const get = async (secret: string): Promise<number> => {
        const res = await fetch(`${a.app.proxyUrl}/smart_proxy/app/g1/x`, { headers: { authorization: `Bearer ${await token(secret)}` } });
        await res.body?.cancel();
        return res.status;
      };
      assert.equal(await get(SECRET_1), 200);
      assert.equal(await get(SECRET_2), 401);

      process.env[VAR] = SECRET_2;
      const reloaded = await a.reconfigure(resources);
      assert.ok(reloaded.ok, JSON.stringify(reloaded));
      assert.equal(await get(SECRET_2), 200, 'the new value after a reload');
      assert.equal(await get(SECRET_1), 401);

      delete process.env[VAR];
      const refused = await a.reconfigure(resources);
      assert.equal(refused.ok, false);
      assert.match(refused.ok ? '' : refused.errors, new RegExp(`identities\\[0\\]\\.secret[\\s\\S]*environment variable ${VAR} is not set`));
      assert.equal(await get(SECRET_2), 200, 'the running configuration is kept');
    } finally {
      await a.close();
    }
  });

  it('holds a secret from a variable or a file to 32 characters, as an inline one', async () => {
    process.env[VAR] = 'too-short';
    const short = join(dir, 'short');
    writeFileSync(short, 'also-short\n');
    for (const [secret, from] of [[{ env: VAR }, `environment variable ${VAR}`], [{ file: short }, short]] as const) {
      const config = configSchema.parse({
        listen: { host: '127.0.0.1', port: 0 }, state: { kind: 'memory' }, identities: [jwtIdentity(secret)],
        providers: { p: { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' } }, resources: { app: { provider: 'p' } },
      });
      await assert.rejects(startApp(config, { logger: collectingLogger([]) }),
        (err: Error) => err.message.includes('identities[0].secret') && err.message.includes(`the secret from ${from} is too short`));
    }
    assert.throws(() => configSchema.parse({ identities: [jwtIdentity('short inline')], resources: {} }), /secret/);
    delete process.env[VAR];
  });

  it('check-config warns about the unset variable; start refuses, naming the file and the path', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, [
      'listen: { host: 127.0.0.1, port: 0 }',
      'identities:',
      `  - { kind: jwt, issuer: https://issuer.test, audience: proxy, algorithms: [HS256], secret: { env: ${VAR} } }`,
      'providers:',
      '  cloud: { kind: atmosphere, baseUrl: embedded }',
      'resources:',
      '  lab: { provider: cloud, access: { anyOf: [g1] } }',
      '',
    ].join('\n'));
    const env = { ...process.env };
    delete env[VAR];
    const checked = await run(process.execPath, [cli, 'check-config', path], { timeout: 30_000, env });
    assert.equal(checked.stdout, `${path}: valid\n`);
    assert.equal(checked.stderr, `warning: identities[0].secret: environment variable ${VAR} is not set here; \`start\` refuses to run without it\n`);
    const started = await run(process.execPath, [cli, 'start', '--config', path], { timeout: 30_000, env }).then(() => assert.fail('expected exit 1'), (e: { code: number; stderr: string }) => e);
    assert.equal(started.code, 1);
    assert.equal(started.stderr, `invalid configuration in ${path}:\n  - identities[0].secret: environment variable ${VAR} is not set\n`);
  });
});
