/** Builds the configured store. The one place that knows every store kind. */
import type { Logger, Store } from '../core/ports.ts';
import { MemoryStore } from './memory-store.ts';
import { SqliteStore } from './sqlite-store.ts';
import { RedisStore } from './redis/redis-store.ts';

export type StoreSpec =
  | { readonly kind: 'memory' }
  | { readonly kind: 'sqlite'; readonly path: string }
  | { readonly kind: 'redis'; readonly url: string; readonly keyPrefix: string; readonly options?: Readonly<Record<string, unknown>> | undefined };

/** What every store keeps at most (the audit log's retention bound). */
export interface StoreLimits {
  readonly maxAuditEvents?: number | undefined;
}

export function createStore(spec: StoreSpec, logger: Logger, limits: StoreLimits = {}): Store {
  const { maxAuditEvents } = limits;
  switch (spec.kind) {
    case 'memory':
      return new MemoryStore({ maxAuditEvents });
    case 'sqlite':
      return new SqliteStore({ path: spec.path, maxAuditEvents });
    case 'redis':
      return new RedisStore({ url: spec.url, keyPrefix: spec.keyPrefix, options: spec.options, logger, maxAuditEvents });
  }
}
