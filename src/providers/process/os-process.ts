/**
 * The few operating-system facts the process provider needs, kept apart so the provider
 * reads as policy. Linux: `/proc/<pid>/stat` gives a process's start time, which guards
 * re-adoption against pid reuse (a pid recorded before a restart may now name another
 * program; its start time then differs).
 */
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';

/**
 * The start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), or
 * `undefined` when the process does not exist, is a zombie, or /proc is unavailable.
 */
export async function processStartTime(pid: number): Promise<string | undefined> {
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may contain spaces or ')': split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  if (state === 'Z' || state === 'X') return undefined;
  return rest[19];
}

/** Is any process left in process group `pgid`? (Signal 0 checks without sending.) */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    // EPERM: the group exists but belongs to someone else; still "alive".
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Sends `signal` to every process of group `pgid`; a group already gone is not an error. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/**
 * Picks a free TCP port on `host` by binding port 0 and closing again. Another program may
 * take the port before the child binds it (a small window); the child then fails to start,
 * the provider reports `failed`, and the core's next start picks another port.
 */
export function allocatePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no port allocated'))));
    });
  });
}
