/**
 * Keeps the caches of the processes that tests start (`bin/smart-proxy.js`: Node's compile
 * cache, the config parse cache) inside the checkout, in `test/tmp/cache/` (git-ignored),
 * instead of the user's `~/.cache/smart-proxy/`: a test run leaves nothing outside the checkout.
 * What users get by default is unchanged (src/config/cache-dir.js).
 *
 * Imported for its effect: `npm test` loads it in every test process (`--import`), and each
 * test file that starts the CLI imports it too, so a file run alone behaves the same. Child
 * processes inherit it with the environment; a test that builds a child's environment from
 * scratch spreads `testCacheEnv` into it. A developer's own setting wins.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const TEST_CACHE_DIR = fileURLToPath(new URL('../tmp/cache/', import.meta.url));

export const testCacheEnv: Readonly<Record<'SMART_PROXY_COMPILE_CACHE' | 'SMART_PROXY_CONFIG_CACHE', string>> = {
  SMART_PROXY_COMPILE_CACHE: process.env.SMART_PROXY_COMPILE_CACHE || join(TEST_CACHE_DIR, 'compile'),
  SMART_PROXY_CONFIG_CACHE: process.env.SMART_PROXY_CONFIG_CACHE || join(TEST_CACHE_DIR, 'config'),
};

Object.assign(process.env, testCacheEnv);
