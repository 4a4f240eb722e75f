/**
 * Whether a process still runs, for VMs this process did not spawn (re-adopted after a
 * restart: no 'exit' event ever comes for them).
 */
import { readFileSync } from 'node:fs';

const hasProc = ((): boolean => {
  try {
    readFileSync('/proc/self/stat', 'utf8');
    return true;
  } catch {
    return false;
  }
})();

/**
 * True while `pid` runs. A zombie (state Z, or X while being reaped) has exited: `kill(pid, 0)`
 * still succeeds on it until its parent reaps it, which a parent that is not this process may
 * never do (a container's init that does not reap), so /proc is asked first where it exists.
 */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (hasProc) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return false;
    }
    // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
