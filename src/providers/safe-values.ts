/**
 * Placeholder values that come from requests (`{user}`, `{groups}`, `{instanceKey}`) are
 * attacker-influenced: a user or group name may be `../../etc`, `--config=/tmp/x`, carry
 * spaces, or run to hundreds of characters. Providers put them into file paths, program
 * arguments and engine object names, so every provider fills them in this safe form:
 *
 * - `*` (the core's key of a shared instance) and a value of 1-64 characters from `A-Z a-z 0-9 . _ - @ + = : , ~`, starting with a letter
 *   or digit and holding no `..`, is used as it is (so `alice` stays `alice` in a path);
 * - anything else becomes `_` + 32 hex digits of its SHA-256.
 *
 * The result is one path segment that cannot climb out of its directory (no `/`, no leading
 * `.`), cannot be read as an option (no leading `-`), holds no NUL, newline or space, and is
 * at most 64 characters. The mapping is injective: kept values never start with `_`, hashed
 * ones always do, so two users never share a directory or a machine name.
 */
import { createHash } from 'node:crypto';

const KEEP_RE = /^[A-Za-z0-9][A-Za-z0-9._@+=:,~-]{0,63}$/;

export function safePlaceholderValue(value: string): string {
  // `*` is the core's key of a shared instance: never from a request, harmless in a path.
  if (value === '*' || (KEEP_RE.test(value) && !value.includes('..'))) return value;
  return `_${createHash('sha256').update(value, 'utf8').digest('hex').slice(0, 32)}`;
}
