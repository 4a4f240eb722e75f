/** Builds the configured store. The one place that knows every store kind. */
import type { Store } from '../core/ports.ts';
import { MemoryStore } from './memory-store.ts';
import { SqliteStore } from './sqlite-store.ts';

export type StoreSpec =
  | { readonly kind: 'memory' }
  | { readonly kind: 'sqlite'; readonly path: string };

export function createStore(spec: StoreSpec): Store {
  switch (spec.kind) {
    case 'memory':
      return new MemoryStore();
    case 'sqlite':
      return new SqliteStore({ path: spec.path });
  }
}
