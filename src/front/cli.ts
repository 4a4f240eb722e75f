/**
 * `smart-proxy nginx-config --config FILE [--cache proxy|lua]`: prints the nginx side of front-proxy mode for a
 * config file (docs/operations/front-proxy.md). `haproxy-config --config FILE [--lua FILE]`
 * prints HAProxy's and writes its Lua helper.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { generateHaproxyConfig, HAPROXY_LUA } from './haproxy-config.ts';
import { generateNginxConfig, NGINX_CACHES, type NginxCache } from './nginx-config.ts';

export async function frontConfigCommand(command: string, args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' }, lua: { type: 'string' }, cache: { type: 'string' } } });
  if (values.config === undefined) {
    process.stderr.write(`${command} needs --config FILE\n`);
    return 2;
  }
  const cache = values.cache ?? 'proxy';
  if (command !== 'nginx-config' && values.cache !== undefined) {
    process.stderr.write(`${command}: --cache is an option of nginx-config only\n`);
    return 2;
  }
  if (!NGINX_CACHES.includes(cache as NginxCache)) {
    process.stderr.write(`${command}: --cache is one of ${NGINX_CACHES.join(', ')}, not "${cache}"\n`);
    return 2;
  }
  const config = await loadConfigFile(values.config);
  if (!config.front.enabled) process.stderr.write(`${command}: note: front.enabled is false in ${values.config}; Smart Proxy answers no decisions until it is true\n`);
  if (command === 'haproxy-config') {
    if (values.lua !== undefined) writeFileSync(values.lua, HAPROXY_LUA);
    process.stdout.write(generateHaproxyConfig(config, { source: values.config, luaPath: values.lua }));
    return 0;
  }
  process.stdout.write(generateNginxConfig(config, { source: values.config, cache: cache as NginxCache }));
  return 0;
}

/** The two commands as entries of the CLI's command table (src/cli.ts). */
export const nginxConfigCommand = {
  usage: [['nginx-config --config FILE [--cache proxy|lua]', "print the nginx config of front-proxy mode; --cache lua keeps decisions in nginx's memory (docs/operations/front-proxy.md)"]] as const,
  run: (args: string[]): Promise<number> => frontConfigCommand('nginx-config', args),
};

export const haproxyConfigCommand = {
  usage: [['haproxy-config --config FILE [--lua FILE]', "print HAProxy's config of front-proxy mode (and write its Lua helper)"]] as const,
  run: (args: string[]): Promise<number> => frontConfigCommand('haproxy-config', args),
};
