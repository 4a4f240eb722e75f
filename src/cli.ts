#!/usr/bin/env node
/**
 * Command line: arguments → the right entry point. No logic lives here.
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { loadConfigFile, ConfigError } from './config/load.ts';
import { applyEnv } from './config/env.ts';

const usage = `usage: smart-proxy <command> [options]

commands:
  start --config FILE [--port N]   run the proxy with a config file
  demo [--port N] [--oidc]         run the proxy with the bundled demo config and the embedded mock cloud;
                                   --oidc adds browser sign-in through an embedded OpenID provider (port 5556)
  check-config FILE                validate a config file and exit (0 valid, 1 invalid)
  mock-cloud [--port N] [--boot-min-ms N] [--boot-max-ms N] [--seed N] [--failure-rate R] [--hang-rate R]
                                   run the mock cloud alone (the original Atmosphere API)
  hash-password [--cost LN]        read a password on stdin, print its scrypt hash (identities: basic)
  hash-password --token            make a random API token, print it and its hash (identities: token)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
    case 'demo': {
      const { values } = parseArgs({ args: rest, options: { config: { type: 'string' }, port: { type: 'string' }, oidc: { type: 'boolean', default: false } } });
      const file = values.config ?? (command === 'demo' ? fileURLToPath(new URL('../examples/demo.yaml', import.meta.url)) : undefined);
      if (file === undefined) {
        process.stderr.write(`start needs --config FILE\n\n${usage}`);
        return 2;
      }
      let config = applyEnv(await loadConfigFile(file), values.port);
      // Loaded on demand so that check-config stays light and never opens a socket.
      const { startApp, closeOnSignal } = await import('./main.ts');
      const { printDemoBanner } = await import('./demo-banner.ts');
      const demoOidc = command === 'demo' && values.oidc ? await (await import('./demo-oidc.ts')).withEmbeddedIssuer(config, 5556) : undefined;
      if (demoOidc !== undefined) config = demoOidc.config;
      const app = await startApp(config).catch(async (err: unknown) => {
        await demoOidc?.issuer.close();
        throw err;
      });
      if (command === 'demo') printDemoBanner(app, demoOidc?.issuer.url);
      // A second signal means "now".
      await closeOnSignal(app, (signal) => process.stderr.write(`\n${signal}: draining and shutting down (again to quit at once)…\n`));
      await demoOidc?.issuer.close();
      return 0;
    }
    case 'check-config': {
      const file = rest[0];
      if (file === undefined) {
        process.stderr.write(`check-config needs a FILE\n\n${usage}`);
        return 2;
      }
      await loadConfigFile(file);
      process.stdout.write(`${file}: valid\n`);
      return 0;
    }
    case 'hash-password': {
      const { values } = parseArgs({ args: rest, options: { token: { type: 'boolean', default: false }, cost: { type: 'string' } } });
      const { DEFAULT_SCRYPT, generateToken, hashPassword, hashToken } = await import('./access/passwords.ts');
      if (values.token) {
        const token = generateToken();
        process.stdout.write(`token: ${token}\nhash:  ${hashToken(token)}\n`);
        return 0;
      }
      const ln = values.cost === undefined ? DEFAULT_SCRYPT.ln : Number(values.cost);
      if (!Number.isInteger(ln) || ln < 10 || ln > 20) throw new ConfigError('command line', [`--cost: expected log2(N) from 10 to 20, got "${values.cost}"`]);
      if (process.stdin.isTTY) process.stderr.write('Password (echoed; pipe it in to avoid that): ');
      // The first line of stdin; the password never appears in argv or the shell history.
      let input = '';
      for await (const chunk of process.stdin) {
        input += String(chunk);
        if (input.includes('\n')) break;
      }
      const password = input.split(/\r?\n/)[0] ?? '';
      if (password.length === 0) {
        process.stderr.write('hash-password: empty password\n');
        return 1;
      }
      process.stdout.write(`${await hashPassword(password, { ...DEFAULT_SCRYPT, ln })}\n`);
      return 0;
    }
    case 'mock-cloud': {
      const { values } = parseArgs({
        args: rest,
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
      const { startMockCloud } = await import('./mock-cloud/mock-cloud.ts');
      const { createLogger } = await import('./main.ts');
      const cloud = await startMockCloud({
        host: values.host, port: num('port', values.port),
        bootTimeMinMs: num('boot-min-ms', values['boot-min-ms']), bootTimeMaxMs: num('boot-max-ms', values['boot-max-ms']),
        seed: values.seed === undefined ? undefined : num('seed', values.seed),
        failureRate: num('failure-rate', values['failure-rate']), hangRate: num('hang-rate', values['hang-rate']),
        seedData: true,
      }, createLogger('info'));
      process.stdout.write(`mock cloud listening on ${cloud.url}\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await cloud.close();
      return 0;
    }
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(usage);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`unknown command "${command}"\n\n${usage}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    if (err instanceof ConfigError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`smart-proxy: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
