import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { METRICS, metricsReference } from '../../src/metrics/catalogue.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { ResourceManager } from '../../src/core/resource-manager.ts';
import { systemClock } from '../../src/core/clock.ts';
import { netProber } from '../../src/proxy/probe.ts';
import { collectingLogger } from '../helpers/proxy-harness.ts';
import { parseScrape } from '../helpers/prometheus.ts';

it('docs/reference/metrics.md matches the metrics catalogue (run `npm run docs:reference`)', () => {
  assert.equal(readFileSync(new URL('../../docs/reference/metrics.md', import.meta.url), 'utf8'), metricsReference());
});

it('the registry exports exactly the catalogue, with its help and types', async () => {
  const manager = new ResourceManager({ clock: systemClock, prober: netProber, logger: collectingLogger([]), maxHeldRequestsTotal: 10 });
  const metrics = new Metrics({ manager, clock: systemClock, resources: [{ id: 'r', provider: 'p' }], maxResourceLabels: 10 });
  try {
    const s = parseScrape((await metrics.render()).body);
    const exported = new Map(s.families.map((f) => [f.name, f]));
    for (const d of Object.values(METRICS)) {
      const f = exported.get(d.name);
      assert.ok(f !== undefined, `${d.name} is exported`);
      assert.equal(f.type, d.type.toUpperCase(), d.name);
      assert.equal(f.help, d.help, d.name);
    }
    assert.deepEqual([...exported.keys()].sort(), Object.values(METRICS).map((d) => d.name).sort());
  } finally {
    metrics.close();
  }
});

it('the Grafana dashboard queries only metrics that exist', () => {
  const text = readFileSync(new URL('../../docs/operations/grafana-dashboard.json', import.meta.url), 'utf8');
  const dashboard = JSON.parse(text) as { panels: unknown[] };
  assert.ok(dashboard.panels.length > 10);
  const names = new Set<string>(Object.values(METRICS).map((d) => d.name));
  const used = new Set([...text.matchAll(/\b(smart_proxy_[a-z_]+|process_[a-z_]+|nodejs_[a-z_]+)/g)].map((m) => (m[1] ?? '').replace(/_(bucket|count|sum)$/, '')));
  for (const n of used) assert.ok(names.has(n), `${n} in the dashboard is not a metric`);
  assert.ok(used.size >= 10);
});
