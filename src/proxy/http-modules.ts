/**
 * node:http and node:https for the proxy's start-up path, loaded with require() rather than
 * an ESM import. An ESM import of a built-in module builds its namespace from every export,
 * and node:http's include lazy getters (WebSocket, MessageEvent, CloseEvent) whose first read
 * loads Node's own bundled undici: measured, about 200M instructions at every start-up for
 * nothing the proxy uses (docs/benchmarks.md, "Sixth pass on issue 14"); require() returns
 * the module object and reads nothing. Types are imported as usual (erased).
 * test/lifecycle/start-up-modules.test.ts checks that a plain start does not load it.
 */
import { createRequire } from 'node:module';
import type * as Http from 'node:http';
import type * as Https from 'node:https';

const requireBuiltin = createRequire(import.meta.url);

export const http = requireBuiltin('node:http') as typeof Http;
export const https = requireBuiltin('node:https') as typeof Https;
