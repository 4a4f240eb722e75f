/** `check-config FILE`: validate a config without starting anything. */
import { loadConfigFile } from '../config/load.ts';
import { UsageError } from './usage.ts';

export const usage = [['check-config FILE', 'validate a config file and exit (0 valid, 1 invalid)']] as const;

export async function run(args: string[]): Promise<number> {
  const file = args[0];
  if (file === undefined) throw new UsageError('check-config needs a FILE');
  await loadConfigFile(file);
  process.stdout.write(`${file}: valid\n`);
  return 0;
}
