// @ts-check
/**
 * Points zod's locales index at zod-english.js (see there why), for the modules loaded after
 * the call. Called by the entries (bin/smart-proxy.js, the benchmarks' child) before anything
 * imports zod; without it (tests, scripts importing src/ directly) zod loads every locale, and
 * its messages are the same English ones. Plain JavaScript for the reason compile-cache.js is.
 */
import * as nodeModule from 'node:module';

/** Older Node has no synchronous hooks: zod then loads its locales as before. */
const node = /** @type {Partial<typeof nodeModule>} */ (nodeModule);
const ENGLISH = import.meta.resolve('./zod-english.js');
const INDEX = /\/node_modules\/zod\/v4\/locales\/index\.js$/;
let registered = false;

/** @returns {boolean} whether the hook is on */
export function loadZodInEnglishOnly() {
  if (registered) return true;
  if (node.registerHooks === undefined) return false;
  node.registerHooks({
    resolve(specifier, context, nextResolve) {
      const resolved = nextResolve(specifier, context);
      return INDEX.test(resolved.url) ? { ...resolved, url: ENGLISH } : resolved;
    },
  });
  registered = true;
  return true;
}
