import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ProviderError } from '../../src/core/errors.ts';
import { ProcessProvider, type ProcessProviderOptions } from '../../src/providers/process/process-provider.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import { providerContract } from './contract.ts';
import { fixtureCommand, fresh, getJson, pidAlive, ref, tempDir, until, untilState } from './process-helpers.ts';
import { readAllRecords } from '../../src/providers/process/state-file.ts';
import { processStartTime } from '../../src/providers/process/os-process.ts';

type Logs = Parameters<typeof collectingLogger>[0];

/** A provider on a fresh state dir; `done` stops what it started and removes the dir. */
async function subject(options: Partial<ProcessProviderOptions> = {}): Promise<{ p: ProcessProvider; dir: string; logs: Logs; done: () => Promise<void> }> {
  const tmp = await tempDir('sp-proc-');
  const logs: Logs = [];
  const p = new ProcessProvider({ command: fixtureCommand(), baseEnv: process.env, stateDir: join(tmp.dir, 'state'), stopGraceMs: 2_000, logger: collectingLogger(logs), ...options });
  return {
    p, dir: tmp.dir, logs,
    done: async () => {
      for (const l of await p.list(fresh())) await p.stop(ref(l.resourceId, l.instanceKey), fresh());
      await p.close();
      await tmp.remove();
    },
  };
}

providerContract('process', async () => {
  const tmp = await tempDir('sp-proc-contract-');
  const stateDir = join(tmp.dir, 'state');
  const provider = new ProcessProvider({ command: fixtureCommand(), baseEnv: process.env, stateDir, stopGraceMs: 2_000 });
  // Counted from the state files and the OS, not from the provider's memory.
  const live = async () => (await readAllRecords(stateDir, () => undefined)).filter((r) => pidAlive(r.pid));
  return {
    provider,
    makeRef: (i) => ref(`r${i}`),
    countInstances: async () => (await live()).length,
    teardown: async () => {
      for (const r of await live()) await provider.stop(ref(r.resourceId, r.instanceKey), fresh());
      await provider.close();
      await tmp.remove();
    },
  };
});

void describe('process provider', () => {
  void it('starts the command with {port} in argv and env, and runs it until stopped', async () => {
    const s = await subject({ env: { FIXTURE_MARKER: 'm-{resourceId}-{port}' } });
    try {
      const r = ref('app');
      const started = await s.p.start(r, fresh());
      const seen = await s.p.inspect(r, fresh());
      assert.equal(seen.state, 'running');
      assert.match(seen.endpoint ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
      const port = Number(new URL(seen.endpoint!).port);
      const body = await getJson(seen.endpoint!);
      assert.equal(body.port, port);
      assert.equal(body.marker, `m-app-${port}`);
      assert.equal(String(body.pid), started.handle);
      await s.p.stop(r, fresh());
      assert.equal((await s.p.inspect(r, fresh())).state, 'stopped');
      assert.equal(pidAlive(Number(started.handle)), false);
      assert.deepEqual(await readdir(join(s.dir, 'state')), [], 'state file removed on stop');
    } finally {
      await s.done();
    }
  });

  void it('concurrent starts for one key spawn one process; distinct keys spawn two', async () => {
    const s = await subject();
    try {
      const [a, b] = await Promise.all([s.p.start(ref('app'), fresh()), s.p.start(ref('app'), fresh())]);
      assert.equal(a.handle, b.handle);
      const c = await s.p.start(ref('app', 'g1'), fresh());
      assert.notEqual(c.handle, a.handle);
      assert.equal((await s.p.list(fresh())).length, 2);
    } finally {
      await s.done();
    }
  });

  void it('notices a crash after ready at once: failed with the exit code, then a start spawns afresh', async () => {
    const s = await subject();
    try {
      const r = ref('app');
      const first = await s.p.start(r, fresh());
      const { endpoint } = await s.p.inspect(r, fresh());
      await getJson(endpoint!);
      await (await fetch(`${endpoint!}/crash`)).text();
      const failed = await untilState(s.p, r, 'failed');
      assert.match(failed.reason ?? '', /exited with code 3/);
      assert.match(failed.reason ?? '', /listening on/, 'reason carries the output tail');
      assert.ok(s.logs.some((l) => l.level === 'warn' && l.msg === 'process exited unexpectedly'));
      const second = await s.p.start(r, fresh());
      assert.notEqual(second.handle, first.handle);
      assert.equal((await s.p.inspect(r, fresh())).state, 'running');
    } finally {
      await s.done();
    }
  });

  void it('a command that exits during boot is failed with its output as the reason', async () => {
    const s = await subject({ command: fixtureCommand('--exit-at-once', '7') });
    try {
      const r = ref('app');
      await s.p.start(r, fresh());
      const failed = await untilState(s.p, r, 'failed');
      assert.match(failed.reason ?? '', /code 7.*refusing to start/s);
      await s.p.stop(r, fresh());
      assert.equal((await s.p.inspect(r, fresh())).state, 'stopped', 'stop forgets a failed instance');
      // ...but not what it printed: `smart-proxy logs` after a crash shows the last run's output.
      const last = s.p.output(r)?.text ?? '';
      assert.match(last, /refusing to start/);
      assert.match(last, /\[smart-proxy: this run exited with code 7; pid \d+\]\n$/);
    } finally {
      await s.done();
    }
  });

  void it('a command that exits leaving a child in its process group: the child is ended too (nothing lives on unseen)', async () => {
    // The shell puts a long sleep in the background, says its pid, and exits at once.
    const s = await subject({ command: ['/bin/sh', '-c', 'sleep 300 & echo "left $!"; exit 3'], stopGraceMs: 500 });
    try {
      const r = ref('app');
      await s.p.start(r, fresh());
      await untilState(s.p, r, 'failed');
      const left = Number(await until('the child\'s pid in the output', () => /left (\d+)/.exec(s.p.output(r)?.text ?? '')?.[1]));
      // Gone or a zombie (reaped by whoever adopted it): processStartTime counts both as gone.
      await until('the left-over child is gone', async () => (await processStartTime(left)) === undefined);
      assert.ok(s.logs.some((l) => /ending what it left running/.test(l.msg ?? '')), 'logged');
    } finally {
      await s.done();
    }
  });

  void it('a stop that arrives while the start is still spawning stops what that start made', async () => {
    const s = await subject();
    try {
      const r = ref('app');
      const starting = s.p.start(r, fresh());
      await s.p.stop(r, fresh());
      const { handle } = await starting;
      assert.equal(pidAlive(Number(handle)), false, 'no process left running after the stop');
      assert.equal((await s.p.inspect(r, fresh())).state, 'stopped');
    } finally {
      await s.done();
    }
  });

  void it('a program that cannot run rejects start with a non-retryable error', async () => {
    const s = await subject({ command: ['/nonexistent/program-xyz', '{port}'] });
    try {
      await assert.rejects(s.p.start(ref('app'), fresh()), (err: unknown) => err instanceof ProviderError && !err.retryable && /program-xyz/.test(err.message));
      assert.equal((await s.p.inspect(ref('app'), fresh())).state, 'stopped');
    } finally {
      await s.done();
    }
  });

  void it('stop ends the whole process group, grandchildren included', async () => {
    const s = await subject({ command: fixtureCommand('--grandchild') });
    try {
      const r = ref('app');
      const { handle } = await s.p.start(r, fresh());
      const { endpoint } = await s.p.inspect(r, fresh());
      const body = await getJson(endpoint!);
      const grandchild = body.grandchildPid as number;
      assert.ok(pidAlive(grandchild), 'the grandchild runs');
      await s.p.stop(r, fresh());
      assert.equal(pidAlive(Number(handle)), false, 'leader gone');
      assert.equal(pidAlive(grandchild), false, 'grandchild gone');
      await s.p.stop(r, fresh());
    } finally {
      await s.done();
    }
  });

  void it('a process ignoring SIGTERM is killed with SIGKILL after stopGraceMs', async () => {
    const s = await subject({ command: fixtureCommand('--ignore-sigterm'), stopGraceMs: 300 });
    try {
      const r = ref('app');
      const { handle } = await s.p.start(r, fresh());
      const { endpoint } = await s.p.inspect(r, fresh());
      await getJson(endpoint!); // its SIGTERM handler is installed once it serves
      const t0 = performance.now();
      const stopping = s.p.stop(r, fresh());
      await until('SIGTERM seen by the app', () => s.p.output(r)?.text.includes('ignoring SIGTERM'));
      await stopping;
      assert.ok(performance.now() - t0 >= 290, 'waited the grace period first');
      assert.equal(pidAlive(Number(handle)), false);
      assert.ok(s.logs.some((l) => l.msg?.includes('sending SIGKILL')));
      assert.ok(s.logs.some((l) => l.msg === 'process exited after stop' && (l.obj as { signal?: string }).signal === 'SIGKILL'));
    } finally {
      await s.done();
    }
  });

  void it('a new provider on the same stateDir re-adopts a running process, and can stop it', async () => {
    const s = await subject();
    try {
      const r = ref('app', 'a,b');
      const { handle } = await s.p.start(r, fresh());
      const { endpoint } = await s.p.inspect(r, fresh());
      await s.p.close(); // the proxy restarts; the process keeps running
      const next = new ProcessProvider({ command: fixtureCommand(), baseEnv: process.env, stateDir: join(s.dir, 'state') });
      const listed = await next.list(fresh());
      assert.deepEqual(listed, [{ resourceId: 'app', instanceKey: 'a,b', state: 'running', endpoint, handle }]);
      assert.equal((await next.start(r, fresh())).handle, handle, 'start adopts instead of spawning again');
      await getJson(endpoint!);
      await next.stop(r, fresh());
      assert.equal(pidAlive(Number(handle)), false);
      assert.deepEqual(await next.list(fresh()), []);
      await next.close();
    } finally {
      await s.done();
    }
  });

  void it('does not adopt (or signal) a pid whose start time changed: pid reuse', async () => {
    const s = await subject();
    try {
      const r = ref('app');
      const { handle } = await s.p.start(r, fresh());
      const stateDir = join(s.dir, 'state');
      const [file] = await readdir(stateDir);
      const rec = JSON.parse(await readFile(join(stateDir, file!), 'utf8')) as Record<string, unknown>;
      await writeFile(join(stateDir, file!), JSON.stringify({ ...rec, procStartTime: '1' }));
      const next = new ProcessProvider({ command: fixtureCommand(), stateDir });
      assert.equal((await next.inspect(r, fresh())).state, 'stopped');
      await next.stop(r, fresh());
      assert.ok(pidAlive(Number(handle)), 'the unrelated process was left alone');
      assert.deepEqual(await readdir(stateDir), [], 'the stale file was removed');
      await s.p.stop(r, fresh()); // the original owner still can
      await next.close();
    } finally {
      await s.done();
    }
  });

  void it('keeps a bounded tail of the output in memory, and all of it in the log file', async () => {
    const tmp = await tempDir('sp-proc-log-');
    const logFile = join(tmp.dir, 'logs', '{resourceId}.log');
    const s = await subject({ command: fixtureCommand('--chatty', '200000'), logMaxBytes: 4096, logFile });
    try {
      const r = ref('app');
      await s.p.start(r, fresh());
      const out = await until('output captured', () => {
        const o = s.p.output(r);
        return o?.text.includes('listening on') === true ? o : undefined;
      });
      assert.ok(out.text.length <= 4096, `kept ${out.text.length} bytes`);
      assert.ok(out.droppedBytes >= 190_000);
      assert.match(out.text, /END-OF-CHATTER\nlistening on \d+\n$/);
      await s.p.stop(r, fresh());
      const text = await until('log file flushed', async () => {
        const t = await readFile(join(tmp.dir, 'logs', 'app.log'), 'utf8').catch(() => '');
        return t.includes('listening on') ? t : undefined;
      });
      assert.ok(text.length > 200_000);
    } finally {
      await s.done();
      await tmp.remove();
    }
  });

  void it('rejects at once on an aborted signal without spawning; unknown placeholders fail at construction', async () => {
    const s = await subject();
    try {
      const ac = new AbortController();
      ac.abort();
      for (const call of [() => s.p.start(ref('app'), ac.signal), () => s.p.inspect(ref('app'), ac.signal), () => s.p.stop(ref('app'), ac.signal), () => s.p.list(ac.signal)]) {
        await assert.rejects(call(), ProviderError);
      }
      assert.deepEqual(await s.p.list(fresh()), []);
      assert.throws(() => new ProcessProvider({ command: ['x', '{prot}'], stateDir: s.dir }), /unknown placeholder \{prot\}/);
    } finally {
      await s.done();
    }
  });
});
