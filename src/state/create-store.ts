/** Builds the configured store. The one place that knows every store kind. */
import type { Logger, Store } from '../core/ports.ts';
import { MemoryStore } from './memory-store.ts';
import { ThreadedSqliteStore } from './threaded-sqlite-store.ts';

export type StoreSpec =
  | { readonly kind: 'memory' }
  | { readonly kind: 'sqlite'; readonly path: string; readonly busyTimeoutMs?: number | undefined }
  | { readonly kind: 'redis'; readonly url: string; readonly keyPrefix: string; readonly options?: Readonly<Record<string, unknown>> | undefined };

/** What every store keeps at most (the audit log's retention bound). */
export interface StoreLimits {
  readonly maxAuditEvents?: number | undefined;
}

/**
 * Opens the configured store. Async because SQLite opens on its worker thread: a file that
 * cannot be used fails here, at start-up, with SQLite's reason.
 */
export async function createStore(spec: StoreSpec, logger: Logger, limits: StoreLimits = {}): Promise<Store> {
  const { maxAuditEvents } = limits;
  switch (spec.kind) {
    case 'memory':
      return new MemoryStore({ maxAuditEvents });
    case 'sqlite':
      return await ThreadedSqliteStore.open({ path: spec.path, busyTimeoutMs: spec.busyTimeoutMs, maxAuditEvents });
    case 'redis': {
      // Loaded on demand: the Redis client is big, and most configurations do not use it.
      const { RedisStore } = await import('./redis/redis-store.ts');
      return new RedisStore({ url: spec.url, keyPrefix: spec.keyPrefix, options: spec.options, logger, maxAuditEvents });
    }
  }
}
