import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { effectiveResources, parseConfig } from '../../src/config/load.ts';

const base = `
providers: { cloud: { kind: atmosphere, baseUrl: embedded } }
mockCloud: { enabled: true }
identities: [{ kind: header, fromAddresses: [127.0.0.1] }]
`;

describe('lifecycle configuration', () => {
  it('defaults: SQLite state, release ramp 64, health checks every 30 s, no keep-warm', () => {
    const cfg = parseConfig(`${base}resources: { app: { provider: cloud } }`);
    assert.deepEqual(cfg.state, { kind: 'sqlite', path: 'var/smart-proxy.sqlite', busyTimeoutMs: 5_000, flushIntervalMs: 1_000 });
    const [r] = effectiveResources(cfg);
    assert.equal(r?.releaseConcurrency, 64);
    assert.equal(r?.healthCheckIntervalMs, 30_000);
    assert.equal(r?.keepWarm, undefined);
  });

  it('takes keep-warm from the resource or resourceDefaults', () => {
    const cfg = parseConfig(`${base}
state: { kind: memory }
resourceDefaults: { keepWarm: { minInstances: 1 }, releaseConcurrency: 8 }
resources:
  app: { provider: cloud, keepWarm: { windows: [{ cron: "* 8-17 * * 1-5", minInstances: 2 }], timeZone: UTC } }
  other: { provider: cloud }
`);
    assert.equal(cfg.state.kind, 'memory');
    const [app, other] = effectiveResources(cfg);
    assert.deepEqual(app?.keepWarm, { minInstances: 0, windows: [{ cron: '* 8-17 * * 1-5', minInstances: 2 }], timeZone: 'UTC', groups: [] });
    assert.deepEqual(other?.keepWarm, { minInstances: 1, windows: [], groups: [] });
    assert.equal(other?.releaseConcurrency, 8);
  });

  it('names the field of a bad cron expression, a bad time zone and a bad state kind', () => {
    assert.throws(() => parseConfig(`${base}resources: { app: { provider: cloud, keepWarm: { windows: [{ cron: "* * *" }] } } }`),
      /resources\.app\.keepWarm\.windows\.0\.cron: expected 5 fields/);
    assert.throws(() => parseConfig(`${base}resources: { app: { provider: cloud, keepWarm: { timeZone: Mars/Olympus, windows: [{ cron: "* * * * *" }] } } }`),
      /resources\.app\.keepWarm\.windows\.0\.cron: .*(time ?zone|Mars)/i);
    assert.throws(() => parseConfig(`${base}state: { kind: etcd }\nresources: { app: { provider: cloud } }`), /state\.kind/);
    assert.throws(() => parseConfig(`${base}resources: { app: { provider: cloud, releaseConcurrency: 0 } }`), /releaseConcurrency/);
  });
});
