/**
 * The only place the environment is read (config in, plain values out). Precedence: flags, then
 * environment, then the file.
 *
 * - `SMART_PROXY_PORT` (or `--port`): listen.port
 * - `SMART_PROXY_HOST` (or `--host`): listen.host (a container listens on 0.0.0.0)
 * - `SMART_PROXY_STATE_PATH`: state.path when state.kind is sqlite (a container's state volume)
 */
import type { Config } from './schema.ts';
import { ConfigError } from './load.ts';

export interface EnvFlags {
  readonly port?: string | undefined;
  readonly host?: string | undefined;
}

export function applyEnv(config: Config, flags?: string | EnvFlags): Config {
  const f: EnvFlags = typeof flags === 'string' ? { port: flags } : flags ?? {};
  let out = config;
  const rawPort = f.port ?? process.env.SMART_PROXY_PORT;
  if (rawPort !== undefined && rawPort !== '') {
    const port = Number(rawPort);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new ConfigError(f.port === undefined ? 'SMART_PROXY_PORT' : '--port', [`listen.port: expected an integer 0-65535, got "${rawPort}"`]);
    }
    out = { ...out, listen: { ...out.listen, port } };
  }
  const host = f.host ?? process.env.SMART_PROXY_HOST;
  if (host !== undefined && host !== '') out = { ...out, listen: { ...out.listen, host } };
  const statePath = process.env.SMART_PROXY_STATE_PATH;
  if (statePath !== undefined && statePath !== '' && out.state.kind === 'sqlite') out = { ...out, state: { ...out.state, path: statePath } };
  return out;
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
