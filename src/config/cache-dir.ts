/**
 * Where Smart Proxy keeps what it caches for faster start-ups (the config parse cache, Node's
 * compile cache), and when such a directory may be trusted.
 *
 * Both caches can change what the proxy runs (parsed config data; compiled code), so a
 * directory is used only when it is owned by the current user and writable by nobody else.
 * Light on purpose (node: built-ins only): the CLI loads it before anything else.
 */
import { mkdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** `$XDG_CACHE_HOME/smart-proxy/<name>`, else `~/.cache/smart-proxy/<name>`. */
export function userCacheDir(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : join(safeHome(), '.cache');
  return join(base, 'smart-proxy', name);
}

function safeHome(): string {
  try {
    return homedir();
  } catch {
    return '/nonexistent';
  }
}

/** A directory, owned by this user, that no group or other user can write to. */
export function trustedDir(dir: string): boolean {
  try {
    const st = statSync(dir);
    const uid = process.getuid?.();
    return st.isDirectory() && (uid === undefined || st.uid === uid) && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

/** Creates `dir` (mode 0700) when missing; true when it exists and is trusted. Never throws. */
export function ensureTrustedDir(dir: string): boolean {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch {
    return false;
  }
  return trustedDir(dir);
}
