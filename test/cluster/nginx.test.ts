/**
 * The nginx config of docs/operations/replicas.md, as written there, in front of three real
 * proxy processes: cold requests spread over the replicas start one machine, and a replica
 * killed with -9 costs no request.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent } from 'undici';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-process.ts';
import { exitOf, requireBinary, requireRedis } from '../helpers/system.ts';
import { cleanPrefix, freePort, newCloud, replicaConfig, sharedRedisUrl, uniquePrefix } from './cluster-kit.ts';

const doc = readFileSync(new URL('../../docs/operations/replicas.md', import.meta.url), 'utf8');
const agent = new Agent({ connections: 512 });
after(() => agent.close());

/** The doc's config with the replicas' ports, a local listen port, and paths in `dir`. */
function nginxConfig(ports: readonly number[], listenPort: number, dir: string): string {
  const block = /```nginx\n([\s\S]*?)```/.exec(doc)?.[1];
  assert.ok(block !== undefined, 'replicas.md has an nginx block');
  let i = 0;
  const conf = block
    .replace(/server proxy-\d+:8080/g, () => `server 127.0.0.1:${ports[i++] ?? 0}`)
    .replace('listen 80;', `listen 127.0.0.1:${listenPort};`)
    .replace('http {', `http {\n  access_log off;\n  client_body_temp_path ${dir}/body;\n  proxy_temp_path ${dir}/proxy;\n`
      + `  fastcgi_temp_path ${dir}/fcgi;\n  uwsgi_temp_path ${dir}/uwsgi;\n  scgi_temp_path ${dir}/scgi;\n`);
  assert.equal(i, 3, 'three upstream servers replaced');
  return `pid ${dir}/nginx.pid;\nerror_log ${dir}/error.log warn;\n${conf}`;
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

describe('nginx in front of three replicas (docs/operations/replicas.md)', () => {
  // Checked before any replica starts: nothing to clean up when the machine lacks one.
  let nginxBin = '';
  before(async () => {
    nginxBin = requireBinary('nginx', 'nginx');
    await requireRedis(sharedRedisUrl);
  });

  it('spreads cold requests (one start, all 200) and routes around a replica killed with -9', async () => {
    const prefix = uniquePrefix('nginx');
    const cloud = await newCloud(200);
    const dir = mkdtempSync(join(tmpdir(), 'sp-nginx-'));
    chmodSync(dir, 0o777); // nginx workers may run as another user
    const ps: ProxyProcess[] = await Promise.all([0, 1, 2].map((i) => startProxyProcess(replicaConfig(cloud, { redisUrl: sharedRedisUrl, prefix, replicaId: `r${i}` }))));
    const listenPort = await freePort();
    writeFileSync(join(dir, 'nginx.conf'), nginxConfig(ps.map((p) => Number(new URL(p.url).port)), listenPort, dir));
    const nginx = spawn(nginxBin, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let nginxOut = '';
    nginx.stderr.on('data', (d: Buffer) => { nginxOut += d.toString(); });
    const nginxExited = exitOf(nginx);
    const base = `http://127.0.0.1:${listenPort}/smart_proxy/app/-`;
    try {
      while (!(await accepts(listenPort))) {
        assert.equal(nginx.exitCode, null, nginxOut);
        await new Promise((r) => setImmediate(r));
      }
      const cold = await Promise.all(Array.from({ length: 300 }, (_, i) => fetch(`${base}/n/${i}`, { dispatcher: agent }).then((r) => r.status)));
      assert.deepEqual([...new Set(cold)], [200], nginxOut);
      assert.equal(cloud.stats.spans, 1, 'one start through the load balancer');
      for (const p of ps) {
        const s = await p.status();
        assert.equal(s.instances[0]?.status, 'ready', 'every replica served some of them');
      }
      await ps[0]?.dispose();
      const warm: number[] = [];
      for (let i = 0; i < 30; i++) warm.push((await fetch(`${base}/w/${i}`, { dispatcher: agent })).status);
      assert.deepEqual([...new Set(warm)], [200], 'nginx tries the next replica on a refused connection');
    } finally {
      nginx.kill('SIGTERM');
      await nginxExited;
      await Promise.all(ps.map((p) => p.dispose()));
      await cloud.close();
      await cleanPrefix(sharedRedisUrl, prefix);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
