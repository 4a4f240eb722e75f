/**
 * The `static` provider: a backend that is always there (managed elsewhere), proxied with
 * Smart Proxy's access checks, probes and crash handling but never started or stopped by it.
 * Useful to put always-on services beside on-demand ones, and as the benchmark's contender
 * for the warm path. An instance becomes known on `start` and forgotten on `stop`, so the
 * provider contract (unknown → stopped, idempotent start and stop) holds.
 */
import type { InspectResult, InstanceRef, Provider, StartResult } from '../../core/ports.ts';

export interface StaticProviderOptions {
  /** Base URL of the backend, e.g. `http://127.0.0.1:9000` (may carry a path prefix). */
  readonly endpoint: string;
}

function keyOf(ref: InstanceRef): string {
  return `${ref.resourceId}\u0000${ref.instanceKey}`;
}

export function createStaticProvider(options: StaticProviderOptions): Provider {
  const known = new Set<string>();
  const abortable = <T>(signal: AbortSignal, value: () => T): Promise<T> =>
    signal.aborted ? Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted')) : Promise.resolve(value());
  return {
    kind: 'static',
    start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
      return abortable(signal, () => {
        known.add(keyOf(ref));
        return {};
      });
    },
    inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
      return abortable(signal, () => (known.has(keyOf(ref)) ? { state: 'running', endpoint: options.endpoint } : { state: 'stopped' }));
    },
    stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
      return abortable(signal, () => {
        known.delete(keyOf(ref));
      });
    },
  };
}
