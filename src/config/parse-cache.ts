/**
 * A cache of what YAML parsing produced for a large config file, so a restart with the same
 * file skips the parse.
 *
 * Why: `yaml` builds a full document (every node with its source range, which the error
 * messages need) at about 10 µs per line; a generated config with 10,000 resources spends most
 * of its start-up there, while `JSON.parse` of the same data takes a few milliseconds. A text
 * in plain YAML is read by a fast path instead (plain-yaml.ts) and is never cached: this cache
 * serves the large files that use more of YAML (anchors, block scalars, …).
 *
 * What is cached is only the plain data YAML yields, keyed by a SHA-256 of the exact text and
 * the yaml library's version: the same key can only ever mean the same data. Validation (the
 * schema, defaults, cross-field checks) still runs on every start, so a proxy upgrade that
 * changes the schema is never skipped. A text that fails anywhere is never cached; a cached
 * entry that fails validation falls back to the full parse for exact line numbers.
 *
 * Trust: the cache can change what the proxy runs, so it is read only from a directory owned
 * by the current user and writable by nobody else, and written with mode 0600. Any problem
 * (read-only file system, foreign owner, a corrupt entry) silently means "no cache".
 */
import { createHash } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { ensureTrustedDir, trustedDir, userCacheDir } from './cache-dir.js';

export interface ParseCache {
  /** The data cached for this exact text, or undefined. */
  get(text: string): unknown;
  /** Remembers what this text parsed to (only called for a text that validated). */
  set(text: string, raw: unknown): void;
}

export interface FileParseCacheOptions {
  readonly dir: string;
  /** Smaller texts parse in milliseconds and are not cached (nothing written for them). */
  readonly minBytes?: number;
  /** Entries kept; the oldest go first. */
  readonly maxEntries?: number;
}

const yamlVersion = (createRequire(import.meta.url)('yaml/package.json') as { version: string }).version;

/** The entry name for a text: it depends on the exact text and on the YAML parser's version. */
export function parseCacheKey(text: string): string {
  return createHash('sha256').update(`yaml@${yamlVersion}\0`).update(text).digest('hex');
}

export function fileParseCache(options: FileParseCacheOptions): ParseCache {
  const minBytes = options.minBytes ?? 64 * 1024;
  const maxEntries = options.maxEntries ?? 8;
  const { dir } = options;
  const keyOf = parseCacheKey;
  return {
    get(text) {
      if (text.length < minBytes || !trustedDir(dir)) return undefined;
      const key = keyOf(text);
      try {
        const entry = JSON.parse(readFileSync(join(dir, `${key}.json`), 'utf8')) as { key?: unknown; raw?: unknown };
        return entry.key === key ? entry.raw : undefined;
      } catch {
        return undefined;
      }
    },
    set(text, raw) {
      if (text.length < minBytes) return;
      const key = keyOf(text);
      try {
        if (!ensureTrustedDir(dir)) return;
        // Only data that JSON carries exactly (YAML also has .inf, .nan, -0 …): never a lossy entry.
        const json = JSON.stringify({ key, raw });
        if (!isDeepStrictEqual((JSON.parse(json) as { raw: unknown }).raw, raw)) return;
        const tmp = join(dir, `${key}.${process.pid}.tmp`);
        writeFileSync(tmp, json, { mode: 0o600 });
        chmodSync(tmp, 0o600);
        renameSync(tmp, join(dir, `${key}.json`));
        prune(dir, maxEntries);
      } catch {
        // A cache that cannot be written is no cache; the parse result is already in hand.
      }
    },
  };
}

/** The default location: `$SMART_PROXY_CONFIG_CACHE` ("off" disables), else the user's cache dir. */
export function defaultParseCache(env: NodeJS.ProcessEnv = process.env): ParseCache | undefined {
  const configured = env.SMART_PROXY_CONFIG_CACHE;
  if (configured === 'off' || configured === '0') return undefined;
  if (configured !== undefined && configured !== '') return fileParseCache({ dir: configured });
  return fileParseCache({ dir: userCacheDir('config', env) });
}

function prune(dir: string, maxEntries: number): void {
  const entries = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => ({ f, at: statSync(join(dir, f)).mtimeMs }))
    .sort((a, b) => b.at - a.at);
  for (const { f } of entries.slice(maxEntries)) rmSync(join(dir, f), { force: true });
}
