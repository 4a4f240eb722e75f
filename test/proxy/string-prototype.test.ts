/**
 * Loading the app must leave String.prototype with fast properties. A dependency that subclasses
 * String (ioredis 6's `class VerbatimString extends String`) turns it into a dictionary-mode
 * object for the life of the process, and every string method call on the warm path then takes
 * a slow lookup (src/state/redis/client.ts loads ioredis only when Redis is used).
 *
 * V8's own view is read through `%HasFastProperties` in a child process started with
 * --allow-natives-syntax (natives syntax is a parse-time flag: it cannot be turned on here).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));

/** Imports `specifier` in a fresh node and answers whether String.prototype still has fast properties. */
async function fastAfterImport(specifier: string): Promise<boolean> {
  const script = `await import(${JSON.stringify(specifier)}); process.stdout.write(String(%HasFastProperties(String.prototype)));`;
  const child = spawn(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  // Bounded: an import that hangs is killed (and reaped) after 30 s.
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  try {
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0, `the child failed: ${err}`);
  } finally {
    clearTimeout(timer);
  }
  assert.match(out, /^(true|false)$/, `unexpected output: ${out} ${err}`);
  return out === 'true';
}

describe('String.prototype stays fast', () => {
  it('after importing the app (src/main.ts)', async () => {
    assert.equal(await fastAfterImport(MAIN), true);
  });

  it('the check sees the slowdown: importing ioredis itself makes it slow', async () => {
    // If this ever passes as fast, ioredis no longer subclasses String and the lazy load in
    // src/state/redis/client.ts may go; until then it proves the check above can fail.
    assert.equal(await fastAfterImport(import.meta.resolve('ioredis')), false);
  });
});
