/**
 * The only place the environment is read (config in, plain values out). Precedence: flags, then
 * environment, then the file.
 */
import type { Config } from './schema.ts';
import { ConfigError } from './load.ts';

export function applyEnv(config: Config, portFlag?: string): Config {
  const raw = portFlag ?? process.env.SMART_PROXY_PORT;
  if (raw === undefined || raw === '') return config;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(portFlag === undefined ? 'SMART_PROXY_PORT' : '--port', [`listen.port: expected an integer 0-65535, got "${raw}"`]);
  }
  return { ...config, listen: { ...config.listen, port } };
}

/** `--mock-port`: where the embedded mock cloud listens (0: a free port, the default). */
export function applyMockPort(config: Config, flag: string | undefined): Config {
  if (flag === undefined || flag === '') return config;
  const port = Number(flag);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError('--mock-port', [`mockCloud.port: expected an integer 0-65535, got "${flag}"`]);
  }
  return { ...config, mockCloud: { ...config.mockCloud, port } };
}
