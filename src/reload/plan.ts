/**
 * What a configuration reload would change, decided before anything is touched: the
 * sections that only a restart can apply, and the resources added, changed or removed.
 */
import type { EffectiveResource } from '../config/load.ts';
import type { Config } from '../config/schema.ts';

/**
 * Sections read once at start-up: the listener and its TLS, the data plane's timeouts and
 * global bounds, the store, the cluster, the embedded mock cloud, logging and the operator
 * outputs. A reload that changes any of them is refused as a whole.
 */
export const RESTART_ONLY_SECTIONS = [
  'listen', 'tls', 'server', 'upstream', 'limits', 'trustedProxies', 'shutdown', 'state', 'cluster',
  'mockCloud', 'log', 'metrics', 'coldStartHeader', 'accessLog', 'admin', 'audit', 'front', 'providerCircuit',
  'backendEndpoints',
] as const satisfies ReadonlyArray<keyof Config>;

/** Sections a reload applies: everything else. */
export const RELOADABLE_SECTIONS = ['resources', 'resourceDefaults', 'providers', 'identities', 'access'] as const satisfies ReadonlyArray<keyof Config>;

export interface ResourcePlan {
  readonly added: readonly string[];
  readonly changed: readonly string[];
  readonly removed: readonly string[];
  readonly unchanged: readonly string[];
  /** Provider names whose settings changed (they are built anew; the old ones serve on). */
  readonly providersRebuilt: readonly string[];
}

/** The restart-only sections that differ, by name. */
export function restartOnlyChanges(current: Config, next: Config): string[] {
  return RESTART_ONLY_SECTIONS.filter((k) => !sameValue(current[k], next[k]));
}

export function planResources(current: readonly EffectiveResource[], next: readonly EffectiveResource[]): ResourcePlan {
  const before = new Map(current.map((r) => [r.id, r]));
  const after = new Map(next.map((r) => [r.id, r]));
  const added: string[] = [];
  const changed: string[] = [];
  const unchanged: string[] = [];
  for (const [id, r] of after) {
    const old = before.get(id);
    if (old === undefined) added.push(id);
    else if (sameValue(old, r)) unchanged.push(id);
    else changed.push(id);
  }
  const removed = [...before.keys()].filter((id) => !after.has(id));
  const oldProviders = new Map(current.map((r) => [r.providerName, r.provider]));
  const rebuilt = new Set<string>();
  for (const r of next) {
    const old = oldProviders.get(r.providerName);
    if (old !== undefined && !sameValue(old, r.provider)) rebuilt.add(r.providerName);
  }
  return { added, changed, removed, unchanged, providersRebuilt: [...rebuilt] };
}

/** Deep equality of plain config values (what YAML and zod produce). */
export function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
