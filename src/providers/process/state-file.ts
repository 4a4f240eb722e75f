/**
 * One small JSON file per running instance, so that a restarted proxy re-adopts processes
 * that still run instead of starting a second copy. Written atomically (temp file + rename)
 * so a crash mid-write never leaves a half file that would be misread.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface ProcessRecord {
  readonly resourceId: string;
  readonly instanceKey: string;
  readonly pid: number;
  /** Process group id: the child is spawned detached, so it leads its own group (pgid = pid). */
  readonly pgid: number;
  readonly port: number;
  readonly endpoint: string;
  /** Epoch ms when the proxy spawned it. */
  readonly startedAt: number;
  /** Field 22 of /proc/<pid>/stat at spawn: a pid whose start time differs is another process. */
  readonly procStartTime: string;
}

/** File name for an instance: readable prefix + hash, so any resource id or key is safe on disk. */
export function recordFileName(resourceId: string, instanceKey: string): string {
  const hash = createHash('sha256').update(`${resourceId}\0${instanceKey}`).digest('hex').slice(0, 16);
  const readable = `${resourceId}-${instanceKey}`.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 60);
  return `${readable}.${hash}.json`;
}

export async function writeRecord(dir: string, rec: ProcessRecord): Promise<void> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, recordFileName(rec.resourceId, rec.instanceKey));
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(rec), { mode: 0o600 });
  await rename(tmp, file);
}

export async function removeRecord(dir: string, resourceId: string, instanceKey: string): Promise<void> {
  await rm(join(dir, recordFileName(resourceId, instanceKey)), { force: true });
}

export async function readRecord(dir: string, resourceId: string, instanceKey: string): Promise<ProcessRecord | undefined> {
  return readRecordFile(join(dir, recordFileName(resourceId, instanceKey)));
}

/** Every record in `dir`; unreadable or malformed files are skipped (and reported through `onBad`). */
export async function readAllRecords(dir: string, onBad: (file: string, why: string) => void): Promise<ProcessRecord[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: ProcessRecord[] = [];
  for (const name of names) {
    if (!name.endsWith('.json')) continue;
    const rec = await readRecordFile(join(dir, name), (why) => onBad(name, why));
    if (rec !== undefined) out.push(rec);
  }
  return out;
}

async function readRecordFile(file: string, onBad?: (why: string) => void): Promise<ProcessRecord | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const v = JSON.parse(text) as Partial<ProcessRecord>;
    if (typeof v.resourceId === 'string' && typeof v.instanceKey === 'string' && Number.isInteger(v.pid) && Number.isInteger(v.pgid)
      && Number.isInteger(v.port) && typeof v.endpoint === 'string' && typeof v.procStartTime === 'string' && typeof v.startedAt === 'number') {
      return v as ProcessRecord;
    }
    onBad?.('missing or mistyped fields');
  } catch (err) {
    onBad?.(`not JSON: ${(err as Error).message}`);
  }
  return undefined;
}
