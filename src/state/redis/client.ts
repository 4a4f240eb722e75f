/**
 * Opens ioredis connections the way every Redis user here needs them (the one place that
 * knows ioredis's options; this folder owns the dependency):
 *
 * - `error` events are always handled (an unhandled one would crash the process): logged,
 *   at most once per outage, since ioredis repeats them on every reconnect attempt.
 * - One retry per command and a command timeout: while Redis is away, a command fails within
 *   about a reconnect attempt (never piles up, never hangs), so callers decide (503, fall
 *   back, keep local state). The offline queue stays on only so that the first commands of
 *   a fresh client wait for its first connection.
 * - Reconnect forever with capped, jittered backoff: Redis coming back needs no restart.
 * - Sentinel and the other connection options pass through from the config (`options`).
 */
import { createRequire } from 'node:module';
import type { Redis, RedisOptions } from 'ioredis';
import type { Logger } from '../../core/ports.ts';

/**
 * ioredis, loaded on the first connection rather than when this file is imported: ioredis 6
 * declares `class VerbatimString extends String`, and V8 then keeps String.prototype in
 * dictionary mode for the life of the process, so every string method call anywhere (the
 * proxy's header and path checks, Node's and undici's own) takes a slow lookup: a loop of
 * charCodeAt calls ran 6.8× slower, and the bearer-token check alone made 86 out-of-line
 * property loads per request (docs/benchmarks.md). A process with no Redis configured never
 * loads it.
 * Synchronous (require: ioredis is CommonJS), so opening a client stays synchronous.
 */
let redisClass: typeof Redis | undefined;
function loadRedis(): typeof Redis {
  redisClass ??= (createRequire(import.meta.url)('ioredis') as { Redis: typeof Redis }).Redis;
  return redisClass;
}

export interface RedisSpec {
  /** `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS). */
  readonly url: string;
  /** Extra ioredis options (for example `sentinels` and `name` for Sentinel). */
  readonly options?: Readonly<Record<string, unknown>> | undefined;
}

/** Reconnect delay after the n-th failed attempt: 50 ms doubling to 2 s, ± 25 % jitter. */
export function reconnectDelayMs(attempt: number): number {
  const base = Math.min(2_000, 50 * 2 ** Math.min(attempt, 6));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

export function openRedis(spec: RedisSpec, logger: Logger, role: string, extra: RedisOptions = {}): Redis {
  const client = new (loadRedis())(spec.url, {
    maxRetriesPerRequest: 1,
    commandTimeout: 2_000,
    connectTimeout: 2_000,
    retryStrategy: reconnectDelayMs,
    ...(spec.options as RedisOptions | undefined),
    ...extra,
  });
  let down = false;
  client.on('error', (err: Error) => {
    if (down) return;
    down = true;
    logger.warn({ role, err: err.message }, 'redis: connection lost; reconnecting with backoff');
  });
  client.on('ready', () => {
    if (down) logger.info({ role }, 'redis: connection back');
    down = false;
  });
  return client;
}

/** Deletes every key under `prefix` (tests, and operators retiring a prefix). */
export async function deleteByPrefix(client: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix.replace(/[*?[\]\\]/g, '\\$&')}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length > 0) n += await client.del(...keys);
  } while (cursor !== '0');
  return n;
}
