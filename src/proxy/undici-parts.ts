/**
 * undici's Pool and error classes, loaded from their own files rather than from undici's
 * index. The index also loads the fetch implementation, WebSocket, EventSource, the mock and
 * snapshot agents, the cache interceptors… and, through its cookies module's read of
 * `globalThis.Headers`, Node's own bundled copy of undici: measured, about 200M instructions
 * at every start-up (a tenth of a one-resource start; docs/benchmarks.md, "Sixth pass on
 * issue 14"), of which the proxy uses nothing (it only dispatches through pools).
 *
 * undici has no `exports` map, so these files are reachable as Node resolves any package
 * file; test/lifecycle/start-up-modules.test.ts checks that they are the very classes the
 * index exports (an upgrade that moves them fails there). Providers that want undici's
 * request API (http, atmosphere) import the index, and only when a config uses them.
 * Pools are driven with `dispatch()` alone: `request()` and the other methods are added to
 * the Dispatcher prototype by the index, so they exist only once something has loaded it.
 */
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

const requireCjs = createRequire(import.meta.url);

export const Pool = requireCjs('undici/lib/dispatcher/pool.js') as typeof Undici.Pool;
export type Pool = Undici.Pool;
export const undiciErrors = requireCjs('undici/lib/core/errors.js') as typeof Undici.errors;
