#!/usr/bin/env node
/**
 * The container health check (`smart-proxy healthcheck` runs the same): exits 0 when the
 * proxy answers HTTP below 500 (it answers 404 at "/"), 1 when it does not answer within
 * 3 s or answers 5xx. Imports nothing heavy: it runs every few seconds.
 */
import { healthcheckUrl } from './config/healthcheck-env.ts';

export async function healthcheck(urlFlag: string | undefined): Promise<number> {
  const url = healthcheckUrl(urlFlag);
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3_000), redirect: 'manual' });
    await res.body?.cancel();
    process.stdout.write(`${url}: ${res.status}\n`);
    return res.status < 500 ? 0 : 1;
  } catch (err) {
    process.stderr.write(`${url}: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

if (import.meta.main) {
  const i = process.argv.indexOf('--url');
  healthcheck(i >= 0 ? process.argv[i + 1] : undefined).then((code) => { process.exitCode = code; }, () => { process.exitCode = 1; });
}
