/** `check-config FILE`: validate a config without starting anything, and warn about what cannot work. */
import { loadConfigFile } from '../config/load.ts';
import { UsageError } from './usage.ts';

export const usage = [['check-config FILE', 'validate a config file and exit (0 valid, 1 invalid)']] as const;

export async function run(args: string[]): Promise<number> {
  const file = args[0];
  if (file === undefined) throw new UsageError('check-config needs a FILE');
  const config = await loadConfigFile(file);
  process.stdout.write(`${file}: valid\n`);
  // Valid, but can it work? Asks each external atmosphere cloud which API it speaks.
  const { atmosphereApiWarnings } = await import('../startup-checks.ts');
  for (const w of await atmosphereApiWarnings(config, 5_000)) {
    process.stderr.write(`warning: resources.${w.resource} (provider ${w.provider}): ${w.message}\n`);
  }
  return 0;
}
