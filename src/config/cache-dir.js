// @ts-check
/**
 * Where Smart Proxy keeps what it caches for faster start-ups (the config parse cache, Node's
 * compile cache), and when such a directory may be trusted.
 *
 * Both caches can change what the proxy runs (parsed config data; compiled code), so a
 * directory is used only when it is owned by the current user and writable by nobody else.
 *
 * Plain JavaScript (types in JSDoc, checked by tsc) and light on purpose (node: built-ins
 * only): bin/smart-proxy.js loads it to turn the compile cache on before any TypeScript is
 * loaded; a .ts module here would make Node load its type stripper first (compile-cache.js).
 */
import { mkdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * `$XDG_CACHE_HOME/smart-proxy/<name>`, else `~/.cache/smart-proxy/<name>`.
 * @param {string} name
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {string}
 */
export function userCacheDir(name, env = process.env) {
  const base = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : join(safeHome(), '.cache');
  return join(base, 'smart-proxy', name);
}

/** @returns {string} */
function safeHome() {
  try {
    return homedir();
  } catch {
    return '/nonexistent';
  }
}

/**
 * A directory, owned by this user, that no group or other user can write to.
 * @param {string} dir
 * @returns {boolean}
 */
export function trustedDir(dir) {
  try {
    const st = statSync(dir);
    const uid = process.getuid?.();
    return st.isDirectory() && (uid === undefined || st.uid === uid) && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

/**
 * Creates `dir` (mode 0700) when missing; true when it exists and is trusted. Never throws.
 * @param {string} dir
 * @returns {boolean}
 */
export function ensureTrustedDir(dir) {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch {
    return false;
  }
  return trustedDir(dir);
}
