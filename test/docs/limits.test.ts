import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { z } from 'zod';
import { isLimitKey, limitsReference } from '../../src/config/limits-reference.ts';
import { configSchema } from '../../src/config/schema.ts';

const doc = readFileSync(new URL('../../docs/reference/limits.md', import.meta.url), 'utf8');

it('docs/reference/limits.md matches the schema (run `npm run docs:reference`)', () => {
  assert.equal(doc, limitsReference());
});

it('every limit key of the schema is in the limits reference, with a reason', () => {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' });
  const keys = new Set<string>();
  const walk = (s: unknown): void => {
    if (s === null || typeof s !== 'object') return;
    for (const [k, v] of Object.entries(s as Record<string, unknown>)) {
      if (k === 'properties' && v !== null && typeof v === 'object') for (const name of Object.keys(v)) if (isLimitKey(name)) keys.add(name);
      walk(v);
    }
  };
  // The demo's simulated cloud (mockCloud) has no bounds of the proxy.
  const { mockCloud: _demo, ...rest } = (schema as { properties: Record<string, unknown> }).properties;
  walk({ properties: rest });
  assert.ok(keys.size > 30);
  for (const key of keys) {
    assert.match(doc, new RegExp(`\\.${key}\``), `${key} is missing from docs/reference/limits.md`);
  }
  for (const mine of ['bodyIdleTimeoutMs', 'queueTimeoutMs', 'maxQueuedPerBackend', 'maxHeldBytesPerRequest', 'maxHeldBytesPerClient', 'http2SessionIdleTimeoutMs', 'http2MaxConcurrentStreams', 'tlsHandshakeTimeoutMs', 'lingerTimeMs', 'lingerIdleTimeoutMs', 'lingerMaxBytes', 'maxLingeringConnections']) {
    const row = doc.split('\n').find((l) => l.startsWith('| `') && l.includes(`.${mine}\``));
    assert.ok(row !== undefined && row.split('|')[3]!.trim().length > 40, `${mine} has a reason`);
  }
});
