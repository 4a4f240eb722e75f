// @ts-check
/**
 * The entry of the benchmarks' Smart Proxy child (smart-proxy-child.ts), started as
 * bin/smart-proxy.js starts the CLI: the compile cache first, from plain JavaScript, so that a
 * warm start loads no TypeScript stripper and the start-up measured is the one users get.
 * (A .ts entry has its types stripped by Node before it can turn the cache on. Not named
 * smart-proxy-child.js: tsc leaves out a .js file beside a .ts of the same name, as its output.)
 */
import { enableStartupCompileCache } from '../src/config/compile-cache.js';

enableStartupCompileCache();
await import('./smart-proxy-child.ts');
