/** Builds the `http` provider and a whole proxy from the shipped example configs, pointed at a stand-in. */
import { loadConfigFile } from '../../src/config/load.ts';
import type { Config } from '../../src/config/schema.ts';
import { secretReaders } from '../../src/config/secrets.ts';
import type { Logger } from '../../src/core/ports.ts';
import { startApp, type App } from '../../src/main.ts';
import { createHttpProvider, type HttpProvider } from '../../src/providers/http/http-provider.ts';

export async function exampleConfig(file: string): Promise<Config> {
  return loadConfigFile(new URL(`../../examples/${file}`, import.meta.url).pathname);
}

type HttpConfig = Extract<Config['providers'][string], { kind: 'http' }>;

export function httpProviderOf(cfg: Config, name: string): HttpConfig {
  const p = cfg.providers[name];
  if (p?.kind !== 'http') throw new Error(`providers.${name} is not an http provider`);
  return p;
}

/** The provider exactly as main.ts builds it, at another base URL. */
export function providerFromExample(cfg: Config, name: string, baseUrl: string, logger?: Logger): HttpProvider {
  const p = httpProviderOf(cfg, name);
  return createHttpProvider({ ...p, baseUrl, secrets: secretReaders(p.credentials, name), logger, resourceVars: (id) => ({ serviceId: id }) });
}

/** The whole proxy on the example config, with the provider at `baseUrl` and quick polling. */
export async function appFromExample(cfg: Config, name: string, baseUrl: string, logger: Logger): Promise<App> {
  const config: Config = {
    ...cfg,
    listen: { host: '127.0.0.1', port: 0 },
    // In memory: tests must not share (and re-adopt from) the default SQLite file.
    state: { kind: 'memory', flushIntervalMs: 1_000 },
    providers: { ...cfg.providers, [name]: { ...httpProviderOf(cfg, name), baseUrl } },
    resourceDefaults: { ...cfg.resourceDefaults, bootTimeoutMs: 15_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 40, idleStopMs: 0 },
  };
  return startApp(config, { logger });
}
