/**
 * Providers never run what a user typed: user and group names (attacker-influenced) put into
 * a process's arguments, environment, working directory and log path cannot climb out of
 * their directory, become an option, or carry NUL / newlines. Real child processes.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ProcessProvider } from '../../src/providers/process/process-provider.ts';
import { safePlaceholderValue } from '../../src/providers/safe-values.ts';
import { fixtureCommand, fresh, getJson, tempDir, untilState } from './process-helpers.ts';

const HOSTILE = ['../../escape', '..', '-rf', '--inspect=0.0.0.0:9229', 'a\nb', 'nul\u0000byte', 'x'.repeat(300), 'with space', '/abs/path', '.hidden'];

describe('placeholders from requests', () => {
  it('safe form: one segment, never an option, never a dot segment, injective, kept when harmless', () => {
    const seen = new Set<string>();
    for (const v of [...HOSTILE, 'alice', 'g1,g2', 'user:alice', '*', '_deadbeef', 'alice.smith']) {
      const s = safePlaceholderValue(v);
      assert.match(s, /^[A-Za-z0-9_*][A-Za-z0-9._@+=:,~-]{0,63}$/, `${JSON.stringify(v)} → ${s}`);
      assert.ok(!s.includes('..') && !s.startsWith('-') && !s.startsWith('.'));
      assert.ok(!seen.has(s), `collision on ${s}`);
      seen.add(s);
    }
    assert.equal(safePlaceholderValue('alice'), 'alice');
    assert.equal(safePlaceholderValue('user:alice'), 'user:alice');
    assert.notEqual(safePlaceholderValue('_deadbeef'), '_deadbeef', 'a value that looks hashed is hashed, so no user can take another\'s name');
  });

  it('a process started for hostile user and group names gets them only in safe form', async () => {
    const tmp = await tempDir('sp-placeholders-');
    const homes = join(tmp.dir, 'homes');
    const p = new ProcessProvider({
      command: fixtureCommand('--user', '{user}', '--groups', '{groups}', '--key', '{instanceKey}'),
      env: { FIXTURE_MARKER: '{user}' },
      baseEnv: process.env,
      stateDir: join(tmp.dir, 'state'),
      logFile: join(homes, '{user}', 'out.log'),
      stopGraceMs: 2_000,
    });
    const refs = HOSTILE.slice(0, 4).map((user, i) => ({ resourceId: 'app', instanceKey: `user:${user}`, groups: [`-g${i}`, '..'], user }));
    try {
      await mkdir(homes, { recursive: true });
      for (const r of refs) {
        await p.start(r, fresh());
        const running = await untilState(p, r, 'running');
        const got = await getJson(running.endpoint as string) as { marker: string; argv: string[] };
        const safe = safePlaceholderValue(r.user);
        assert.equal(got.marker, safe, 'the environment holds the safe form');
        const at = (flag: string): string | undefined => got.argv[got.argv.indexOf(flag) + 1];
        assert.equal(at('--user'), safe);
        assert.equal(at('--groups'), safePlaceholderValue(r.groups.join(',')));
        assert.equal(at('--key'), safePlaceholderValue(r.instanceKey));
        for (const a of got.argv.slice(got.argv.indexOf('--user'))) {
          assert.ok(!a.startsWith('-') || ['--user', '--groups', '--key'].includes(a), `an injected option: ${a}`);
        }
      }
      // Every log file is one level under homes/, named by the safe form; nothing climbed out.
      const made = (await readdir(homes)).sort();
      assert.deepEqual(made, refs.map((r) => safePlaceholderValue(r.user)).sort());
      assert.deepEqual((await readdir(tmp.dir)).sort(), ['homes', 'state']);
    } finally {
      for (const r of refs) await p.stop(r, fresh()).catch(() => undefined);
      await p.close();
      await tmp.remove();
    }
  });
});
