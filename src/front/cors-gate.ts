/**
 * Which requests a front proxy sends via the data plane because a resource's `cors` policy
 * must answer them: preflights, and cross-origin requests (those with an `Origin`). The
 * policy owns the `Access-Control-*` fields of every answer of its resource (the data plane
 * drops the backend's and sets its own); a front proxy forwarding such a request straight to
 * the backend would hand the page the backend's fields instead. Requests without `Origin`
 * (same-origin GETs, API clients, curl) keep the direct path.
 */
import type { Config } from '../config/schema.ts';

export interface CorsGate {
  /** Every resource has a policy (from resourceDefaults): no per-resource check needed. */
  readonly all: boolean;
  /** The resources with a policy (when not `all`), sorted. */
  readonly ids: readonly string[];
}

/** The resources whose cross-origin requests go via the data plane; undefined when none. */
export function corsGate(config: Config): CorsGate | undefined {
  const ids = Object.entries(config.resources).filter(([, r]) => (r.cors ?? config.resourceDefaults.cors) !== undefined).map(([id]) => id).sort();
  if (ids.length === 0) return undefined;
  return { all: ids.length === Object.keys(config.resources).length, ids };
}
