/** `mock-cloud`: the original Atmosphere API stand-in, alone. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.ts';

export const usage = [
  ['mock-cloud [--port N] [--boot-min-ms N] [--boot-max-ms N] [--seed N] [--failure-rate R] [--hang-rate R]', 'run the mock cloud alone (the original Atmosphere API; port 5000 unless --port)'],
] as const;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '5000' },
      'boot-min-ms': { type: 'string', default: '0' }, 'boot-max-ms': { type: 'string', default: '10000' },
      seed: { type: 'string' }, 'failure-rate': { type: 'string', default: '0' }, 'hang-rate': { type: 'string', default: '0' },
    },
  });
  const num = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new ConfigError('command line', [`--${name}: expected a non-negative number, got "${v}"`]);
    return n;
  };
  const { startMockCloud } = await import('../mock-cloud/mock-cloud.ts');
  const { createLogger } = await import('../main.ts');
  const port = num('port', values.port);
  const cloud = await startMockCloud({
    host: values.host, port,
    bootTimeMinMs: num('boot-min-ms', values['boot-min-ms']), bootTimeMaxMs: num('boot-max-ms', values['boot-max-ms']),
    seed: values.seed === undefined ? undefined : num('seed', values.seed),
    failureRate: num('failure-rate', values['failure-rate']), hangRate: num('hang-rate', values['hang-rate']),
    seedData: true,
  }, createLogger('info')).catch((err: unknown) => {
    if ((err as { code?: unknown }).code !== 'EADDRINUSE') throw err;
    throw new Error(`port ${values.host}:${port} is already in use: pick another with --port N, or --port 0 for a free one`, { cause: err });
  });
  process.stdout.write(`mock cloud listening on ${cloud.url}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await cloud.close();
  return 0;
}
