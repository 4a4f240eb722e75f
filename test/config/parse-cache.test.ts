/**
 * The config parse cache: a large file parsed once is read back from the cache with the same
 * result; anything doubtful (another text, a foreign or open directory, a corrupt or lossy
 * entry, an entry the schema now refuses) falls back to the full parse.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadConfigFile, parseConfig } from '../../src/config/load.ts';
import { fileParseCache, parseCacheKey, type ParseCache } from '../../src/config/parse-cache.ts';

const root = mkdtempSync(join(tmpdir(), 'sp-parse-cache-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

function freshDir(): string {
  const dir = join(root, `c${n++}`);
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

/**
 * A generated config the size that makes the cache worth having (block style, as generators
 * write). Its anchor (`&defaults`) keeps it off the plain-YAML fast path, which needs no cache.
 */
function bigConfig(resources: number, extra = ''): string {
  const lines = ['listen: { host: 127.0.0.1, port: 0 }', 'state: { kind: memory }', 'resourceDefaults: &defaults { access: { public: true } }', 'resources:'];
  for (let i = 1; i <= resources; i++) lines.push(`  r${i}:`, '    provider:', '      kind: static', `      endpoint: "http://127.0.0.1:${9000 + (i % 100)}"`);
  return `${lines.join('\n')}\n${extra}`;
}

/** Counts what the cache answered, to tell a hit from a full parse. */
function counting(cache: ParseCache): ParseCache & { hits: number } {
  const c = {
    hits: 0,
    get(text: string): unknown {
      const v = cache.get(text);
      if (v !== undefined) c.hits++;
      return v;
    },
    set(text: string, raw: unknown): void { cache.set(text, raw); },
  };
  return c;
}

void describe('config parse cache', () => {
  void it('a large file parsed once is read back from the cache, with the same config', async () => {
    const dir = freshDir();
    const file = join(root, 'big.yaml');
    const text = bigConfig(2_000);
    writeFileSync(file, text);
    const cache = counting(fileParseCache({ dir }));
    const first = await loadConfigFile(file, cache);
    assert.equal(cache.hits, 0);
    assert.equal(readdirSync(dir).length, 1);
    const second = await loadConfigFile(file, cache);
    assert.equal(cache.hits, 1);
    assert.deepEqual(second, first);
    assert.deepEqual(second, parseConfig(text));
    // One character changed: another key, a full parse.
    const third = parseConfig(text.replace('9001', '9002'), 'x', cache);
    assert.equal(cache.hits, 1);
    assert.equal((third.resources.r1?.provider as { endpoint: string }).endpoint, 'http://127.0.0.1:9002');
  });

  void it('a text the plain-YAML fast path reads is not written to the cache', () => {
    const dir = freshDir();
    const text = bigConfig(2_000).replace(' &defaults', '');
    assert.deepEqual(parseConfig(text, 'plain', fileParseCache({ dir })), parseConfig(bigConfig(2_000)));
    assert.deepEqual(readdirSync(dir), []);
  });

  void it('small files are never written to the cache', () => {
    const dir = freshDir();
    parseConfig(bigConfig(3), 'small', fileParseCache({ dir }));
    assert.deepEqual(readdirSync(dir), []);
  });

  void it('an invalid file is never cached, and an entry the schema refuses falls back to the full parse', () => {
    const dir = freshDir();
    const cache = counting(fileParseCache({ dir, minBytes: 0 }));
    assert.throws(() => parseConfig(bigConfig(5, 'bogus: 1\n'), 'bad', cache), ConfigError);
    assert.deepEqual(readdirSync(dir), []);
    // A well-formed entry whose data this schema refuses (as after an upgrade): same answer as no cache.
    const text = bigConfig(5);
    const key = parseCacheKey(text);
    writeFileSync(join(dir, `${key}.json`), JSON.stringify({ key, raw: { resources: 'not a map' } }), { mode: 0o600 });
    assert.deepEqual(parseConfig(text, 'ok', cache), parseConfig(text));
  });

  void it('a corrupt entry, or one filed under another key, is ignored', () => {
    const dir = freshDir();
    const cache = counting(fileParseCache({ dir, minBytes: 0 }));
    const text = bigConfig(5);
    const key = parseCacheKey(text);
    writeFileSync(join(dir, `${key}.json`), '{ truncated', { mode: 0o600 });
    assert.deepEqual(parseConfig(text, 'a', cache), parseConfig(text));
    const other = bigConfig(6);
    writeFileSync(join(dir, `${key}.json`), JSON.stringify({ key: parseCacheKey(other), raw: parseConfig(other) }), { mode: 0o600 });
    assert.equal(Object.keys(parseConfig(text, 'b', cache).resources).length, 5);
    assert.equal(cache.hits, 0);
  });

  void it('a directory others can write to is not trusted', () => {
    const dir = freshDir();
    const text = bigConfig(5);
    const trusted = counting(fileParseCache({ dir, minBytes: 0 }));
    parseConfig(text, 'a', trusted);
    parseConfig(text, 'a', trusted);
    assert.equal(trusted.hits, 1);
    chmodSync(dir, 0o777);
    const open = counting(fileParseCache({ dir, minBytes: 0 }));
    parseConfig(text, 'a', open);
    assert.equal(open.hits, 0);
  });

  void it('data JSON cannot carry exactly (.inf) is not cached', () => {
    const dir = freshDir();
    // state.options is passed to the Redis client as is: YAML's .inf survives validation there.
    const text = bigConfig(2).replace('state: { kind: memory }', 'state: { kind: redis, options: { retryFactor: .inf } }');
    const config = parseConfig(text, 'inf', fileParseCache({ dir, minBytes: 0 }));
    assert.equal((config.state as { options: Record<string, unknown> }).options.retryFactor, Infinity);
    assert.deepEqual(readdirSync(dir), []);
    // The same config without the lossy value is cached.
    parseConfig(text.replace('.inf', '2'), 'two', fileParseCache({ dir, minBytes: 0 }));
    assert.equal(readdirSync(dir).length, 1);
  });

  void it('keeps a bounded number of entries', () => {
    const dir = freshDir();
    const cache = fileParseCache({ dir, minBytes: 0, maxEntries: 3 });
    for (let i = 1; i <= 6; i++) parseConfig(bigConfig(i), `c${i}`, cache);
    assert.equal(readdirSync(dir).length, 3);
  });
});
