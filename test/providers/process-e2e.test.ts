import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startApp } from '../../src/main.ts';
import { ProcessProvider } from '../../src/providers/process/process-provider.ts';
import { collectingLogger, startHarness, type Harness } from '../helpers/proxy-harness.ts';
import { fixture, fixtureCommand, pidAlive, tempDir } from './process-helpers.ts';

interface FixtureAnswer { pid: number; port: number; url: string }

void describe('process resources through the proxy', () => {
  void it('a cold request (config → main → proxy) is held, then answered by the real child process', async () => {
    const tmp = await tempDir('sp-proc-e2e-');
    const config = parseConfig(`
listen: { host: 127.0.0.1, port: 0 }
state: { kind: memory }
providers:
  local:
    kind: process
    command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(fixture)}, --port, '{port}']
    stateDir: ${JSON.stringify(join(tmp.dir, 'state'))}
    stopGraceMs: 2000
resources:
  app: { provider: local, bootTimeoutMs: 20000, pollIntervalMaxMs: 50 }
shutdown: { stopInstances: true }
`);
    const logs: Harness['logs'] = [];
    const app = await startApp(config, { logger: collectingLogger(logs) });
    let pid: number;
    try {
      const res = await fetch(`${app.proxyUrl}/smart_proxy/app/-/some/path?q=1`);
      assert.equal(res.status, 200);
      const body = await res.json() as FixtureAnswer;
      pid = body.pid;
      assert.equal(body.url, '/some/path?q=1');
      assert.ok(pidAlive(pid));
      assert.ok(logs.some((l) => l.msg === 'process started'));
    } finally {
      await app.close();
      await tmp.remove();
    }
    assert.equal(pidAlive(pid), false, 'shutdown with stopInstances stopped the child');
  });

  void it('a process that crashes after ready is restarted by the next request', async () => {
    const tmp = await tempDir('sp-proc-crash-');
    const provider = new ProcessProvider({ command: fixtureCommand(), baseEnv: process.env, stateDir: join(tmp.dir, 'state'), stopGraceMs: 2000 });
    const h = await startHarness({ resources: [{ id: 'app', provider, bootTimeoutMs: 20_000 }] });
    const pids: number[] = [];
    try {
      const first = await (await fetch(`${h.url}/smart_proxy/app/-/`)).json() as FixtureAnswer;
      pids.push(first.pid);
      // The app dies right after answering (exit code 3).
      assert.equal(await (await fetch(`${h.url}/smart_proxy/app/-/crash`)).text(), 'bye');
      const [inst] = h.manager.instancesOf('app');
      await new Promise<void>((resolve) => {
        const check = (): void => {
          if (!pidAlive(first.pid)) resolve();
          else setImmediate(check);
        };
        check();
      });
      const after = await fetch(`${h.url}/smart_proxy/app/-/again`);
      assert.equal(after.status, 200);
      const second = await after.json() as FixtureAnswer;
      pids.push(second.pid);
      assert.notEqual(second.pid, first.pid, 'answered by a new process');
      assert.equal(second.url, '/again');
      assert.ok(h.logs.some((l) => l.msg === 'backend unreachable; restarting'), 'the proxy\'s crash repair ran');
      assert.equal(inst?.status, 'ready');
    } finally {
      for (const i of h.manager.allInstances()) await h.manager.stop(i, 'test end');
      await h.close();
      await tmp.remove();
    }
    assert.ok(pids.every((p) => !pidAlive(p)));
  });
});
