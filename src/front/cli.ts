/**
 * `smart-proxy nginx-config --config FILE`: prints the nginx side of front-proxy mode for a
 * config file (docs/operations/front-proxy.md).
 */
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { generateNginxConfig } from './nginx-config.ts';

export async function frontConfigCommand(command: string, args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' } } });
  if (values.config === undefined) {
    process.stderr.write(`${command} needs --config FILE\n`);
    return 2;
  }
  const config = await loadConfigFile(values.config);
  if (!config.front.enabled) process.stderr.write(`${command}: note: front.enabled is false in ${values.config}; Smart Proxy answers no decisions until it is true\n`);
  process.stdout.write(generateNginxConfig(config, { source: values.config }));
  return 0;
}
