// @ts-check
/**
 * Node's compile cache for Smart Proxy's own modules and its dependencies: a start-up that
 * finds them compiled before skips the TypeScript type stripping and V8's parse and compile.
 * Measured on a plain config: process start to listening ~550 → ~400 ms (docs/benchmarks.md).
 *
 * The cache holds code that Node runs, so it goes only to a directory this user owns and
 * nobody else can write to (cache-dir.js): `$SMART_PROXY_COMPILE_CACHE`, else the user's
 * cache directory (`~/.cache/smart-proxy/compile`); `off` disables it. A directory that cannot
 * be created or is not trusted means no cache, never an error. Node keys every entry by a
 * hash of the source and by its own version, so an edited or upgraded file is compiled anew.
 *
 * Plain JavaScript (types in JSDoc, checked by tsc), light on purpose (node: built-ins and
 * cache-dir.js only): the entry, bin/smart-proxy.js, turns the cache on with it before it
 * imports anything else, since modules loaded before are not cached, and a TypeScript module
 * here would make Node load its type stripper (a WebAssembly build of swc, about a fifth of a
 * small start-up's instructions) on every start, cache or not.
 */
import * as nodeModule from 'node:module';
import { ensureTrustedDir, userCacheDir } from './cache-dir.js';

/**
 * @typedef {object} CompileCacheState
 * @property {string | undefined} dir The directory in use, or undefined when the cache is off.
 * @property {'enabled' | 'already enabled' | 'off' | 'untrusted directory' | 'unsupported' | 'failed'} status
 *   Why it is off (or 'enabled', 'already enabled' by NODE_COMPILE_CACHE or an earlier call).
 */

/** Older Node (the launcher says so) has none of these: feature-tested, never assumed. */
const node = /** @type {Partial<typeof nodeModule>} */ (nodeModule);

/**
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {CompileCacheState}
 */
export function enableStartupCompileCache(env = process.env) {
  const configured = env.SMART_PROXY_COMPILE_CACHE;
  if (configured === 'off' || configured === '0') return { dir: undefined, status: 'off' };
  // Older Node has no compile cache: start without it.
  const { enableCompileCache, constants } = node;
  if (enableCompileCache === undefined || constants?.compileCacheStatus === undefined) return { dir: undefined, status: 'unsupported' };
  const dir = configured !== undefined && configured !== '' ? configured : userCacheDir('compile', env);
  // Node's own variable decides where an already enabled cache is; only a dir of ours is checked.
  if (env.NODE_COMPILE_CACHE === undefined && !ensureTrustedDir(dir)) return { dir: undefined, status: 'untrusted directory' };
  try {
    const result = enableCompileCache(dir);
    const { ENABLED, ALREADY_ENABLED } = constants.compileCacheStatus;
    if (result.status === ENABLED) return { dir: result.directory, status: 'enabled' };
    if (result.status === ALREADY_ENABLED) return { dir: result.directory, status: 'already enabled' };
    return { dir: undefined, status: 'failed' };
  } catch {
    return { dir: undefined, status: 'failed' };
  }
}

/**
 * Writes what was compiled so far (Node would only write at a clean exit; a proxy often ends
 * with a signal). Called once start-up is over. Never throws.
 * @returns {void}
 */
export function flushStartupCompileCache() {
  try {
    node.flushCompileCache?.();
  } catch {
    // No cache written: the next start compiles again.
  }
}

/**
 * The environment for a worker thread, so that it compiles its modules with this process's
 * compile cache (a thread does not inherit it, except through NODE_COMPILE_CACHE); undefined
 * (the default environment) when there is no cache.
 * @returns {NodeJS.ProcessEnv | undefined}
 */
export function workerEnvWithCompileCache() {
  const dir = node.getCompileCacheDir?.();
  return dir === undefined ? undefined : { ...process.env, NODE_COMPILE_CACHE: dir };
}
