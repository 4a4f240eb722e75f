#!/usr/bin/env -S node --max-semi-space-size=16
// @ts-check
/**
 * The `smart-proxy` command, as every launcher starts it: the package's `bin`, `npm start`, the
 * Containerfile's ENTRYPOINT, the systemd unit (`node --max-semi-space-size=16
 * bin/smart-proxy.js start --config FILE`). It turns Node's compile cache on, then loads the
 * command line (src/cli.ts), which does the rest.
 *
 * Why a plain-JavaScript file: Node strips the types of a .ts entry file before any of its
 * code runs, so with src/cli.ts as the entry every start loaded Node's type stripper (a
 * WebAssembly build of swc) before the cache could be turned on: about a fifth of the
 * instructions of a one-resource start (docs/benchmarks.md, "Sixth pass on issue 14").
 * From here cli.ts and all it loads come from the cache, types already stripped.
 *
 * Why here and so named: bin/ is where a package's commands live, and the file is named after
 * the command; a `cli.js` beside `cli.ts` would read as its build output (there is no build).
 * Why `.js` (ESM, as the package says) and not `.mjs`: it is type-checked (JSDoc, `@ts-check`)
 * and linted like the TypeScript; the repository's .mjs file is the launcher, which must
 * parse on any Node and is linted without types. The cache's rules (where, when trusted,
 * `off`) live once, in src/config/compile-cache.js, also plain JavaScript for the same reason.
 *
 * The first line starts Node with the V8 flags of src/node-flags.ts (`env -S` splits them;
 * test/launcher/node-flags.test.ts keeps every launcher in step).
 */
import { enableStartupCompileCache } from '../src/config/compile-cache.js';

// A Node that cannot run TypeScript would fail on cli.ts with ERR_UNKNOWN_FILE_EXTENSION: say
// what is wrong instead (Node 20, or 22 before 22.18, or --no-experimental-strip-types).
if (!process.features.typescript) {
  process.stderr.write(`smart-proxy: Node ${process.versions.node} cannot run TypeScript directly; run it with Node 22.18 or later (Node 24 is what it is tested on; \`npm start\` installs one into .tools/ when needed)\n`);
  process.exitCode = 1;
} else {
  enableStartupCompileCache();
  await import('../src/cli.ts');
}
