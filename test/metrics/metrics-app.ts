/**
 * The real composition (config schema → startApp) on 127.0.0.1:0 with in-memory state and
 * injected providers, for the metrics, access log and reload tests.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { configSchema, type Config } from '../../src/config/schema.ts';
import type { Provider } from '../../src/core/ports.ts';
import { startApp, type App } from '../../src/main.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';

export function testConfig(config: Record<string, unknown>, providerNames: readonly string[]): Config {
  return configSchema.parse({
    listen: { host: '127.0.0.1', port: 0 },
    shutdown: { drainTimeoutMs: 0 },
    state: { kind: 'memory' },
    providers: Object.fromEntries(providerNames.map((n) => [n, { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' }])),
    ...config,
    resourceDefaults: {
      bootTimeoutMs: 20_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, failureCooldownMs: 0,
      probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 },
      access: { public: true },
      ...(config.resourceDefaults as object | undefined),
    },
  });
}

export interface TestApp {
  readonly app: App;
  readonly logs: Harness['logs'];
  close(): Promise<void>;
}

export async function startTestApp(config: Config, providers: Record<string, Provider>, loadConfig?: () => Promise<Config>): Promise<TestApp> {
  const logs: Harness['logs'] = [];
  const app = await startApp(config, { logger: collectingLogger(logs), providers: new Map(Object.entries(providers)), ...(loadConfig ? { loadConfig } : {}) });
  return {
    app, logs,
    async close() {
      await app.close();
      await Promise.all(Object.values(providers).map((p) => p.close?.() ?? Promise.resolve()));
    },
  };
}

/** Resolves once `check` holds, looking again on each turn of the event loop (bounded). */
export async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await nextTurn();
  }
}
