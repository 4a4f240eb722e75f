/** Shared bits of the process-provider tests: the fixture's argv, polling without sleeping, pid checks. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { InspectResult, InstanceRef, Provider } from '../../src/core/ports.ts';

export const fixture = fileURLToPath(new URL('../fixtures/tiny-http-server.ts', import.meta.url));

/** argv that runs the fixture on the allocated port. */
export function fixtureCommand(...extra: string[]): string[] {
  return [process.execPath, fixture, '--port', '{port}', ...extra];
}

export async function tempDir(prefix: string): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export const ref = (resourceId: string, instanceKey = '*'): InstanceRef => ({ resourceId, instanceKey, groups: [] });
export const fresh = (): AbortSignal => AbortSignal.timeout(15_000);

/** Polls a cheap condition, yielding to I/O between checks (never a fixed sleep). */
export async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

export async function untilState(p: Provider, r: InstanceRef, state: InspectResult['state']): Promise<InspectResult> {
  return until(`${r.resourceId} ${state}`, async () => {
    const s = await p.inspect(r, fresh());
    return s.state === state ? s : undefined;
  });
}

/** GETs the endpoint until the app answers (the core's probe, in miniature). */
export async function getJson(url: string): Promise<Record<string, unknown>> {
  return until(`answer from ${url}`, async () => {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      return (await res.json()) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  });
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
