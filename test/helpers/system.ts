/**
 * What tests need from the machine, checked up front so that a missing piece fails at once
 * with what to install, instead of a spawn error deep inside a test (or a test process that
 * never exits because it waits for an 'exit' that a failed spawn never sends).
 */
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { connect } from 'node:net';
import { delimiter, isAbsolute, join } from 'node:path';

const install = 'scripts/install-system-deps.sh (as root) installs every package the tests need';

/**
 * The absolute path of `command` found on PATH (or `command` itself when absolute), or an
 * Error naming the Debian package that provides it.
 */
export function requireBinary(command: string, debianPackage: string): string {
  const candidates = isAbsolute(command)
    ? [command]
    : (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '').map((d) => join(d, command));
  for (const file of candidates) {
    try {
      if (!statSync(file).isFile()) continue;
      accessSync(file, constants.X_OK);
      return file;
    } catch { /* not here */ }
  }
  throw new Error(`this test needs "${command}" ${isAbsolute(command) ? '' : 'on PATH '}(Debian package ${debianPackage}); ${install}`);
}

/**
 * Settles when the child has exited, or failed to start: a failed spawn emits 'error' and
 * never 'exit', so waiting for 'exit' alone can wait forever.
 */
export function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      child.off('error', onError);
      resolve({ code, signal });
    };
    const onError = (error: Error): void => {
      // 'error' also fires for a failed kill or send on a live child: only a failed spawn
      // (no pid) means that no 'exit' will follow.
      if (child.pid !== undefined) return;
      child.off('exit', onExit);
      resolve({ code: null, signal: null, error });
    };
    child.once('exit', onExit);
    child.on('error', onError);
  });
}

/** The Redis the tests share: `SMART_PROXY_TEST_REDIS_URL`, by default the local one. */
export const testRedisUrl = process.env.SMART_PROXY_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/**
 * Resolves when the test Redis accepts a connection; rejects at once (not after a client's
 * retries) with where it looked and how to provide one.
 */
export async function requireRedis(url: string = testRedisUrl): Promise<void> {
  const u = new URL(url);
  const port = Number(u.port || 6379);
  const host = u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    const s = connect({ host, port });
    s.setTimeout(2_000, () => s.destroy(new Error('no answer within 2 s')));
    s.once('connect', () => { s.destroy(); resolve(); });
    s.once('error', (err) => reject(new Error(
      `these tests need a Redis at ${host}:${port} (${err.message}): start one (redis-server, Debian package redis-server) or set SMART_PROXY_TEST_REDIS_URL`,
    )));
  });
}
