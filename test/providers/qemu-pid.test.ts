/**
 * A re-adopted QEMU is not our child, so its exit is found by asking about its pid. A zombie
 * (exited, not yet reaped by a parent that is not us) must count as exited: `kill(pid, 0)`
 * still succeeds on it, which made stopping re-adopted VMs wait for the 5 s kill timeout.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { it, type TestContext } from 'node:test';
import { pidAlive } from '../../src/providers/qemu/pid.ts';
import { exitOf, requireBinary } from '../helpers/system.ts';

function stateOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

it('a zombie counts as exited; a running or sleeping process as running; a missing pid as exited', { skip: stateOf(process.pid) === undefined ? 'no /proc' : false }, async (t: TestContext) => {
  // sh starts a short child, then becomes a process that never reaps it: a zombie whose parent
  // is alive and is not this process, as a re-adopted QEMU's can be.
  // The child lives 1 s, long past the `exec`: a child that ended before it could be reaped by
  // sh itself, leaving no zombie to look at.
  const parent = spawn(requireBinary('sh', 'dash'), ['-c', 'sleep 1 & echo $!; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const done = exitOf(parent);
  t.after(async () => {
    parent.kill('SIGKILL');
    await done;
  });
  const zombie = await new Promise<number>((resolve, reject) => {
    let out = '';
    parent.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    void done.then(() => reject(new Error('sh exited early')));
  });
  // Wait for the kernel to report the exit (bounded by the test timeout); a pid that vanished
  // was reaped after all, which this test cannot use: say so instead of waiting forever.
  for (let s = stateOf(zombie); s !== 'Z'; s = stateOf(zombie)) {
    if (s === undefined) throw new Error(`pid ${zombie} was reaped before it became a zombie`);
    await new Promise((r) => setImmediate(r));
  }
  assert.doesNotThrow(() => process.kill(zombie, 0), 'kill(pid, 0) still succeeds on a zombie');
  assert.equal(pidAlive(zombie), false, 'a zombie has exited');
  assert.equal(pidAlive(parent.pid!), true, 'a sleeping process runs');
  assert.equal(pidAlive(process.pid), true);
  parent.kill('SIGKILL');
  await done;
  assert.equal(pidAlive(parent.pid!), false, 'a reaped process has exited');
  assert.equal(pidAlive(0), false);
  assert.equal(pidAlive(-1), false);
});
