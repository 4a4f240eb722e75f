/** `check-config FILE`: validate a config without starting anything, and warn about what cannot work. */
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { unsetEnvReferences } from '../config/secrets.ts';
import { UsageError } from './usage.ts';

export const usage = [['check-config FILE | --config FILE', 'validate a config file and exit (0 valid, 1 invalid)']] as const;

export async function run(args: string[]): Promise<number> {
  // `--config FILE`, as `start` takes it, or the file alone; an unknown option is a usage
  // error, never a file name.
  const { values, positionals } = parseArgs({ args, options: { config: { type: 'string' } }, allowPositionals: true, strict: true });
  if (values.config !== undefined && positionals.length > 0) throw new UsageError('check-config takes one FILE (either FILE or --config FILE)');
  if (positionals.length > 1) throw new UsageError('check-config takes one FILE');
  const file = values.config ?? positionals[0];
  if (file === undefined) throw new UsageError('check-config needs a FILE');
  const config = await loadConfigFile(file);
  process.stdout.write(`${file}: valid\n`);
  // Valid, but `start` refuses a secret whose environment variable is unset: say so now (this
  // shell may not be the service's environment, so it is a warning, not a failure).
  for (const { path, name } of unsetEnvReferences(config)) {
    process.stderr.write(`warning: ${path}: environment variable ${name} is not set here; \`start\` refuses to run without it\n`);
  }
  // Start-up reads each waiting page theme and refuses a missing file or an unknown
  // placeholder: say so now, with the resource (the folder may exist only on the server).
  const { ThemeLoader } = await import('../proxy/waiting-page.ts');
  const { effectiveResources } = await import('../config/load.ts');
  const themes = new ThemeLoader();
  const warned = new Set<string>();
  for (const r of effectiveResources(config)) {
    const dir = r.waiting.themeDir;
    if (dir === undefined || warned.has(dir)) continue;
    try {
      themes.load(dir);
    } catch (err) {
      warned.add(dir);
      process.stderr.write(`warning: resources.${r.id}.waiting.themeDir: ${(err as Error).message}; \`start\` refuses to run with it\n`);
    }
  }
  // Valid, but can it work? Asks each external atmosphere cloud which API it speaks.
  const { atmosphereApiWarnings } = await import('../startup-checks.ts');
  for (const w of await atmosphereApiWarnings(config, 5_000)) {
    process.stderr.write(`warning: resources.${w.resource} (provider ${w.provider}): ${w.message}\n`);
  }
  return 0;
}

