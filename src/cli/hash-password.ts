/** `hash-password`: a scrypt hash of a password read on stdin, or a fresh API token. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.ts';

export const usage = [
  ['hash-password [--cost LN]', 'read a password on stdin, print its scrypt hash (identities: basic)'],
  ['hash-password --token', 'make a random API token, print it and its hash (identities: token)'],
] as const;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { token: { type: 'boolean', default: false }, cost: { type: 'string' } } });
  const { DEFAULT_SCRYPT, generateToken, hashPassword, hashToken } = await import('../access/passwords.ts');
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
