/**
 * Renders docs/reference/limits.md: every bound in the proxy, its default and why. The
 * configurable ones come from the schema (their descriptions carry the reason), so a new
 * limit key appears here as soon as it is in the schema; the fixed ones are listed below.
 */
import { z } from 'zod';
import { configSchema } from './schema.ts';

interface JsonSchema {
  description?: string;
  default?: unknown;
  properties?: Record<string, JsonSchema>;
  additionalProperties?: JsonSchema | boolean;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  items?: JsonSchema;
  type?: string | string[];
}

/** A key that bounds time, size, count or concurrency. */
export function isLimitKey(key: string): boolean {
  return /(Ms|Bytes|S|MiB)$/.test(key) || /^max[A-Z]/.test(key) || /Concurren|PerBackend|Rate$/.test(key);
}

/** Sections of the schema that are not bounds of the proxy (the demo's simulated cloud). */
const NOT_BOUNDS = /^mockCloud\./;

export interface LimitRow {
  readonly path: string;
  readonly dflt: string;
  readonly why: string;
}

export function limitRows(): LimitRow[] {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  const out = new Map<string, LimitRow>();
  const walk = (s: JsonSchema, prefix: string): void => {
    for (const alt of s.anyOf ?? s.oneOf ?? []) walk(alt, prefix);
    if (s.additionalProperties !== undefined && typeof s.additionalProperties === 'object') walk(s.additionalProperties, `${prefix}.<name>`);
    if (s.items !== undefined) walk(s.items, `${prefix}[]`);
    for (const [key, child] of Object.entries(s.properties ?? {})) {
      const path = prefix === '' ? key : `${prefix}.${key}`;
      if (isLimitKey(key) && !NOT_BOUNDS.test(path) && !out.has(path)) {
        const dflt = child.default !== undefined ? `\`${JSON.stringify(child.default)}\`` : (/Default: (.+?)\.(?:\s|$)/.exec(child.description ?? '')?.[1] ?? '—');
        out.set(path, { path, dflt, why: (child.description ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ') });
      }
      walk(child, path);
    }
  };
  walk(schema, '');
  // A resource's own keys repeat resourceDefaults: one row for both.
  const rowsOut: LimitRow[] = [];
  for (const row of out.values()) {
    if (row.path.startsWith('resources.<name>.') && out.has(`resourceDefaults.${row.path.slice('resources.<name>.'.length)}`)) continue;
    // An inline provider has the keys of a named one.
    if (row.path.startsWith('resources.<name>.provider.') && out.has(`providers.<name>.${row.path.slice('resources.<name>.provider.'.length)}`)) continue;
    rowsOut.push(row.path.startsWith('resourceDefaults.') ? { ...row, path: `${row.path}\` / \`resources.<id>.${row.path.slice('resourceDefaults.'.length)}` } : row);
  }
  return rowsOut;
}

/** Bounds that are not configurable: where they live, the value, and why that value. */
const FIXED: ReadonlyArray<readonly [string, string, string]> = [
  ['Request target: groups in the URL', '64, each 1-128 characters', 'A URL names what it acts with; more is an attack on the policy check, not a use (route.ts).'],
  ['Request target: `%25` nesting', '4 levels', 'Deeper nesting is refused: checking it would cost quadratic time, and no real URL nests that deep (route.ts).'],
  ['First forward after readiness: retries on a refused connection', '3 (10, 30, 90 ms)', 'A service may still be binding its socket right after the probe passed (server.ts).'],
  ['Re-holds of one request whose backend vanished', '2', 'A backend that keeps dying gets 502, not an endless loop (server.ts).'],
  ['Resend of an idempotent request after a reset', '1', 'One stale keep-alive socket is not a dead backend; two resets are (server.ts).'],
  ['Backend keep-alive sockets idle', '4 s', 'Below the 5 s keep-alive of Node and most app servers, so the proxy never reuses a socket the backend is closing (forward-http.ts).'],
  ['Parsed endpoint cache', '10 000 entries, then cleared', 'Endpoints are few and long-lived; the cap stops a provider that hands out a fresh port per boot from growing it forever (forward-http.ts).'],
  ['Body idle timer', 'runs only while the proxy waits for the client', 'A backend slow to take the body (backpressure) is not the client\'s fault (body-idle.ts).'],
  ['Held request bodies in memory', 'one stream buffer (64 KiB) each', 'A held body is not read: TCP (HTTP/2: stream) flow control stops the client (held-bytes.ts).'],
  ['Node\'s own request timeout', 'off', 'Held requests may wait a whole boot; headers, body idle and hold timeouts bound a request instead.'],
  ['TLS certificate reload debounce', '100 ms', 'File events come in bursts; one reload per burst (tls.ts).'],
  ['Config file size', '16 MiB', 'Refused before it is read: 10,000 resources take about 0.6 MB, and a wrong path may name a disk image or a log (load.ts).'],
  ['Config YAML aliases', '100 alias expansions', 'Anchors may share settings; a "billion laughs" text that multiplies itself is refused (load.ts).'],
];

export function limitsReference(): string {
  const out = [
    '# Limits and timeouts',
    '',
    '<!-- Generated by `npm run docs:reference` from src/config/schema.ts and src/config/limits-reference.ts. Do not edit by hand. -->',
    '',
    'Every bound on time, size, count and concurrency in the proxy, with its default and why that',
    'default. A request is bounded at each step: its head (`server.headersTimeoutMs`, `server.maxHeaderBytes`),',
    'its hold (`holdTimeoutMs`, `maxHeldRequests`, the held-bytes budget and its per-request and per-client',
    'shares), its wait for a backend connection (`upstream.queueTimeoutMs`, `upstream.maxQueuedPerBackend`),',
    'its body (`server.bodyIdleTimeoutMs`) and its answer (`upstream.headersTimeoutMs`). Refusals carry',
    '`Retry-After` where a retry can succeed ([errors](errors.md)). Keys under `providers.<name>` apply',
    'to a resource\'s inline `provider` too.',
    '',
    '## Configurable',
    '',
    '| key | default | what it bounds, and why this default |',
    '| --- | --- | --- |',
    ...limitRows().map((r) => `| \`${r.path}\` | ${r.dflt} | ${r.why} |`),
    '',
    '## Fixed',
    '',
    '| bound | value | why |',
    '| --- | --- | --- |',
    ...FIXED.map(([what, value, why]) => `| ${what} | ${value} | ${why} |`),
    '',
  ];
  return out.join('\n');
}
