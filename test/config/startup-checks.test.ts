/**
 * A valid config that cannot work with its cloud: resources on an `atmosphere` provider whose
 * cloud speaks the original 2012 API (no VM for an empty group set, no stop) are named at
 * start-up (log) and by `check-config` (stderr); the extended API raises nothing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../../src/config/load.ts';
import { startApp } from '../../src/main.ts';
import { startMockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import '../helpers/test-caches.ts';

const cli = fileURLToPath(new URL('../../bin/smart-proxy.js', import.meta.url));
const quiet = collectingLogger([]);

/** The original Flask mock's answer to a path it does not know, for every path. */
async function original2012(t: TestContext): Promise<string> {
  const server = createServer((_req, res) => res.writeHead(404, { 'content-type': 'text/html' }).end('<title>404 Not Found</title>'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

const yaml = (baseUrl: string): string => [
  'listen: { host: 127.0.0.1, port: 0 }',
  'log: { level: warn }',
  `providers: { cloud: { kind: atmosphere, baseUrl: "${baseUrl}", requestTimeoutMs: 2000 } }`,
  'identities: [{ kind: token, tokens: [{ user: u, groups: [g1], hash: "sha256:5a0ca14198c0ef4afd50e76172f89103529be4c4a9104cbc34c238ecb9a3b376" }] }]',
  'resources:',
  '  pub: { provider: cloud, sharing: groups, idleStopMs: 0, access: { public: true } }',
  '  shared: { provider: cloud, sharing: shared, idleStopMs: 0, access: { anyOf: [g1] } }',
  '  idle: { provider: cloud, sharing: groups, idleStopMs: 60000, access: { anyOf: [g1] } }',
  '  fine: { provider: cloud, sharing: groups, idleStopMs: 0, access: { anyOf: [g1] } }',
].join('\n');

function checkConfig(t: TestContext, text: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'sp-checks-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'c.yaml'), text);
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, 'check-config', join(dir, 'c.yaml')], (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr });
    });
  });
}

describe('resources that cannot work with the detected Atmosphere API', () => {
  it('check-config names each one and why, against the original 2012 API (still valid: exit 0)', async (t) => {
    const r = await checkConfig(t, yaml(await original2012(t)));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /valid/);
    const lines = r.stderr.trim().split('\n').sort();
    assert.equal(lines.length, 3, r.stderr);
    assert.match(lines[0] ?? '', /^warning: resources\.idle \(provider cloud\): .*has no stop: idle stops leave VMs running/);
    assert.match(lines[1] ?? '', /^warning: resources\.pub \(provider cloud\): public: anonymous callers hold no groups.*404/);
    assert.match(lines[2] ?? '', /^warning: resources\.shared \(provider cloud\): sharing: shared starts VMs without groups.*404/);
  });

  it('says nothing against the extended API', async (t) => {
    const cloud = await startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: 0, bootTimeMaxMs: 0, failureRate: 0, hangRate: 0, seedData: false }, quiet);
    t.after(() => cloud.close());
    const r = await checkConfig(t, yaml(cloud.url));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
  });

  it('logs the same warnings at start-up, and starts anyway', async (t) => {
    const base = await original2012(t);
    const logs: Array<{ level: string; obj: object; msg?: string | undefined }> = [];
    const inner = collectingLogger(logs);
    const message = 'a resource cannot work with its cloud as configured';
    let threeWarned: () => void = () => undefined;
    const warned = new Promise<void>((resolve) => { threeWarned = resolve; });
    const logger = {
      ...inner,
      warn(obj: object, msg?: string): void {
        inner.warn(obj, msg);
        if (logs.filter((l) => l.msg === message).length === 3) threeWarned();
      },
    };
    const app = await startApp(parseConfig(yaml(base), 'test'), { logger });
    t.after(() => app.close());
    await warned;
    const named = logs.filter((l) => l.msg === message).map((l) => (l.obj as { resource: string }).resource).sort();
    assert.deepEqual(named, ['idle', 'pub', 'shared']);
    assert.ok(logs.every((l) => l.level !== 'warn' || l.msg === message), 'nothing else to warn about');
  });
});
