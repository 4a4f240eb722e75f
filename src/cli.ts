/**
 * Command line: a command name → its module in cli/. No logic lives here; a new command is
 * one module exporting `usage` and `run(args)`, and one line in the table below.
 *
 * Started by bin/smart-proxy.js, which has turned the compile cache on before loading this
 * file. Run directly (`node src/cli.ts`), it turns the cache on itself (at the cost of Node's
 * type stripper for this one file), so only light modules are imported statically: the cache
 * must be on before the rest is loaded, or the rest is compiled without it.
 */
import { enableStartupCompileCache } from './config/compile-cache.js';
import { UsageError } from './cli/usage.ts';

enableStartupCompileCache();

interface Command {
  readonly usage: ReadonlyArray<readonly [string, string]>;
  run(args: string[]): Promise<number>;
}

/** Loaded on demand: `check-config` never loads the proxy, `hash-password` never a server. */
const commands: Record<string, () => Promise<Command>> = {
  start: async () => { const m = await import('./cli/start.ts'); return { usage: m.usage.slice(0, 1), run: (a) => m.run(a, 'start') }; },
  demo: async () => { const m = await import('./cli/start.ts'); return { usage: m.usage.slice(1), run: (a) => m.run(a, 'demo') }; },
  'check-config': () => import('./cli/check-config.ts'),
  'hash-password': () => import('./cli/hash-password.ts'),
  'mock-cloud': () => import('./cli/mock-cloud.ts'),
  healthcheck: () => import('./cli/healthcheck.ts'),
  'nginx-config': () => import('./front/cli.ts').then((m) => m.nginxConfigCommand),
  'haproxy-config': () => import('./front/cli.ts').then((m) => m.haproxyConfigCommand),
};

async function usage(): Promise<string> {
  const rows = (await Promise.all(Object.values(commands).map(async (load) => (await load()).usage))).flat();
  const lines = rows.map(([synopsis, what]) => (synopsis.length < 33 ? `  ${synopsis.padEnd(33)}${what}` : `  ${synopsis}\n  ${''.padEnd(33)}${what}`));
  lines.push(`  ${'--version'.padEnd(33)}print the version and exit`);
  lines.push(`  ${'status | start RESOURCE | stop | logs | audit | retry-stop | abandon-stop'.padEnd(33)}\n  ${''.padEnd(33)}operator commands against the admin API (\`smart-proxy status --help\`)`);
  return `usage: smart-proxy <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

/** Operator commands against the admin API (admin/cli/); `start RESOURCE` is one, `start --config` is not. */
function isOperatorCommand(name: string | undefined, rest: readonly string[]): boolean {
  return ['status', 'stop', 'logs', 'audit', 'retry-stop', 'abandon-stop'].includes(name ?? '') || (name === 'start' && rest[0] !== undefined && !rest[0].startsWith('-'));
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (isOperatorCommand(name, rest)) {
    const { runAdminCommand, adminUsage } = await import('./admin/cli/commands.ts');
    if (rest.includes('--help') || rest.includes('-h')) return (process.stdout.write(adminUsage), 0);
    return runAdminCommand(name as string, rest);
  }
  if (name === '--version' || name === '-v' || name === 'version') {
    // Read when asked: the package's own version, as npm installed it.
    const { createRequire } = await import('node:module');
    const pkg = createRequire(import.meta.url)('../package.json') as { version: string };
    process.stdout.write(`smart-proxy ${pkg.version} (Node.js ${process.version})\n`);
    return 0;
  }
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process[name === undefined ? 'stderr' : 'stdout'].write(await usage());
    return name === undefined ? 2 : 0;
  }
  const load = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (load === undefined) {
    process.stderr.write(`unknown command "${name}"\n\n${await usage()}`);
    return 2;
  }
  const command = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`usage:\n${command.usage.map(([synopsis, what]) => `  smart-proxy ${synopsis}\n      ${what}`).join('\n')}\n`);
    return 0;
  }
  return command.run(rest);
}

/** A command line node:util's parseArgs refused (unknown option, missing value…). */
function isArgsError(err: unknown): err is Error {
  const code = (err as { code?: unknown }).code;
  return err instanceof Error && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  async (err: unknown) => {
    if (err instanceof UsageError || isArgsError(err)) {
      process.stderr.write(`${err.message}\n\n${await usage()}`);
      process.exitCode = 2;
      return;
    }
    const { ConfigError } = await import('./config/load.ts');
    if (err instanceof ConfigError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`smart-proxy: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
