/** `healthcheck [--url URL]`: exit 0 when the proxy answers HTTP (the container's HEALTHCHECK). */
import { parseArgs } from 'node:util';

export const usage = [['healthcheck [--url URL]', 'exit 0 when the proxy answers HTTP (default http://127.0.0.1:8080/), else 1']] as const;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { url: { type: 'string' } } });
  const { healthcheck } = await import('../healthcheck.js');
  return healthcheck(values.url);
}
