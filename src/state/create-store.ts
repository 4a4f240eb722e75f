/** Builds the configured store. The one place that knows every store kind. */
import type { Logger, Store } from '../core/ports.ts';
import { MemoryStore } from './memory-store.ts';
import { SqliteStore } from './sqlite-store.ts';
import { RedisStore } from './redis/redis-store.ts';

export type StoreSpec =
  | { readonly kind: 'memory' }
  | { readonly kind: 'sqlite'; readonly path: string }
  | { readonly kind: 'redis'; readonly url: string; readonly keyPrefix: string; readonly options?: Readonly<Record<string, unknown>> | undefined };

export function createStore(spec: StoreSpec, logger: Logger): Store {
  switch (spec.kind) {
    case 'memory':
      return new MemoryStore();
    case 'sqlite':
      return new SqliteStore({ path: spec.path });
    case 'redis':
      return new RedisStore({ url: spec.url, keyPrefix: spec.keyPrefix, options: spec.options, logger });
  }
}
