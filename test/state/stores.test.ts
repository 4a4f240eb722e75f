import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, describe, it } from 'node:test';
import { MemoryStore } from '../../src/state/memory-store.ts';
import { SQLITE_SCHEMA_VERSION, SqliteStore } from '../../src/state/sqlite-store.ts';
import { record, storeContract } from './store-contract.ts';

const dir = mkdtempSync(join(tmpdir(), 'sp-stores-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

storeContract({
  name: 'memory', maxBootSamplesPerResource: 10, maxAuditEvents: 20,
  make: async () => new MemoryStore({ maxBootSamplesPerResource: 10, maxAuditEvents: 20 }),
});

storeContract({
  name: 'sqlite', maxBootSamplesPerResource: 10, maxAuditEvents: 20,
  make: async () => new SqliteStore({ path: join(dir, `contract-${n++}.sqlite`), maxBootSamplesPerResource: 10, maxAuditEvents: 20 }),
});

describe('SqliteStore', () => {
  it('creates the schema at the current version in WAL mode, and keeps data across reopening', async () => {
    const path = join(dir, 'nested', 'deeper', 'state.sqlite');
    const a = new SqliteStore({ path });
    assert.equal(a.schemaVersion, SQLITE_SCHEMA_VERSION);
    await a.apply({ upserts: [record()], deletes: [], bootSamples: [{ resourceId: 'app', bootMs: 1234, at: 5 }], audit: [] });
    await a.close();
    const raw = new DatabaseSync(path);
    assert.equal((raw.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode, 'wal');
    raw.close();
    const b = new SqliteStore({ path });
    try {
      assert.deepEqual(await b.loadInstances(), [record()]);
      assert.deepEqual((await b.loadBootSamples(5)).map((x) => x.bootMs), [1234]);
    } finally {
      await b.close();
    }
  });

  it('refuses a file written by a newer schema instead of guessing', () => {
    const path = join(dir, 'newer.sqlite');
    const raw = new DatabaseSync(path);
    raw.exec('CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (999);');
    raw.close();
    assert.throws(() => new SqliteStore({ path }), /schema version 999 is newer/);
  });

  it('refuses a file that is not a database with a clear error', () => {
    const path = join(dir, 'garbage.sqlite');
    writeFileSync(path, 'this is not sqlite at all, just text that is long enough to be read as a header ........');
    assert.throws(() => new SqliteStore({ path }), /not a database|file is not/i);
  });

  it('reports a corrupt row as an error, not a crash or a wrong record', async () => {
    const path = join(dir, 'corrupt.sqlite');
    const s = new SqliteStore({ path });
    await s.apply({ upserts: [record()], deletes: [], bootSamples: [], audit: [] });
    const raw = new DatabaseSync(path);
    raw.exec(`UPDATE instances SET status = 'exploded'`);
    raw.close();
    try {
      await assert.rejects(s.loadInstances(), /unknown status "exploded"/);
    } finally {
      await s.close();
    }
  });
});
