/**
 * `start --config FILE` and `demo`: load the config, start the app, run until a signal.
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfigFile } from '../config/load.ts';
import { applyEnv, applyMockPort } from '../config/env.ts';
import type { Config } from '../config/schema.ts';
import { UsageError } from './usage.ts';
import { flushStartupCompileCache } from '../config/compile-cache.js';

export const usage = [
  ['start --config FILE [--port N] [--host H] [--mock-port N]', 'run the proxy with a config file (SIGHUP: reload it)'],
  ['demo [--port N] [--host H] [--mock-port N] [--oidc]', 'run the bundled demo config with the embedded mock cloud; --oidc adds browser sign-in through an embedded OpenID provider (port 5556)'],
] as const;

export async function run(args: string[], command: 'start' | 'demo'): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' }, port: { type: 'string' }, host: { type: 'string' }, 'mock-port': { type: 'string' }, oidc: { type: 'boolean', default: false } } });
  const file = values.config ?? (command === 'demo' ? fileURLToPath(new URL('../../examples/demo.yaml', import.meta.url)) : undefined);
  if (file === undefined) throw new UsageError('start needs --config FILE');
  // Also what a reload (SIGHUP) reads: the same file, flags and environment.
  const read = async (): Promise<Config> => applyMockPort(applyEnv(await loadConfigFile(file), { port: values.port, host: values.host }), values['mock-port']);
  let config = await read();
  const demo = command === 'demo' && values.oidc ? await (await import('../demo-oidc.ts')).withEmbeddedIssuer(config, 5556) : undefined;
  const demoIssuer = demo?.issuer;
  if (demo !== undefined) config = demo.config;
  // Also what a reload (SIGHUP) reads: the same file, flags and environment.
  const load = async (): Promise<Config> => (demo === undefined ? read() : demo.apply(await read()));
  // Loaded on demand so that the other commands stay light and never open a socket.
  const { startApp, closeOnSignal, reloadOnSignal } = await import('../main.ts');
  // The proxy listens (and may hold requests) before start-up ends: a signal in between must
  // not kill it by Node's default. It is kept and acted on once the app can close gracefully;
  // the same signal again still quits at once, in case start-up itself is what hangs.
  const early: NodeJS.Signals[] = [];
  const keep = (signal: NodeJS.Signals): void => {
    if (signal !== 'SIGHUP' && early.includes(signal)) process.exit(signal === 'SIGINT' ? 130 : 143);
    if (!early.includes(signal)) early.push(signal);
    if (signal !== 'SIGHUP') process.stderr.write(`\n${signal} while starting: shutting down once started (again to quit at once)…\n`);
  };
  const earlySignals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of earlySignals) process.on(s, keep);
  const dropEarly = (): void => {
    for (const s of earlySignals) process.off(s, keep);
  };
  let app;
  try {
    app = await startApp(config, { loadConfig: load, configFile: file });
  } catch (err) {
    dropEarly();
    await demoIssuer?.close();
    // Everything startApp refuses as config was read from `file`: name it.
    if (err instanceof ConfigError) throw err.inFile(file);
    throw portInUse(err, config) ?? err;
  }
  // Start-up is over: what it compiled is written now, not only at a clean exit.
  flushStartupCompileCache();
  if (command === 'demo') {
    const { printDemoBanner } = await import('../demo-banner.ts');
    printDemoBanner(app, demoIssuer?.url);
  }
  const stopReloading = reloadOnSignal(app, (result) => process.stderr.write(result.ok
    ? `SIGHUP: configuration reloaded (${JSON.stringify(result.summary)})\n`
    : `SIGHUP: configuration refused, the running one is kept:\n${result.errors}\n`));
  // A second signal means "now".
  const closed = closeOnSignal(app, (signal) => {
    stopReloading();
    process.stderr.write(`\n${signal}: draining and shutting down (again to quit at once)…\n`);
  });
  dropEarly();
  // What arrived while starting: a reload first (it is refused if a shutdown follows), then the shutdown.
  if (early.includes('SIGHUP')) process.emit('SIGHUP', 'SIGHUP');
  const stopSignal = early.find((s) => s !== 'SIGHUP');
  if (stopSignal !== undefined) process.emit(stopSignal, stopSignal);
  await closed;
  await demoIssuer?.close();
  // Everything is closed and flushed: exit now. Left to itself, Node would first tear the V8
  // heap down page by page, 100-400 ms measured after a demo run, which nothing here needs.
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  process.exit(0);
}

/** A listen clash, told as which port of which server, and the flag that moves it. */
function portInUse(err: unknown, config: Config): Error | undefined {
  const e = err as { code?: unknown; port?: unknown; address?: unknown } | null;
  if (e === null || typeof e !== 'object' || e.code !== 'EADDRINUSE') return undefined;
  const where = `${typeof e.address === 'string' ? e.address : '?'}:${typeof e.port === 'number' ? e.port : '?'}`;
  const isMock = config.mockCloud.enabled && e.port === config.mockCloud.port && e.port !== config.listen.port;
  return isMock
    ? new Error(`port ${where} is already in use (the embedded mock cloud, mockCloud.port): pick another with --mock-port N, or --mock-port 0 for a free one`)
    : new Error(`port ${where} is already in use (the proxy, listen.port): pick another with --port N (or SMART_PROXY_PORT), or --port 0 for a free one`);
}
