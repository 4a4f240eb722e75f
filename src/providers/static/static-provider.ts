/**
 * The `static` provider: a backend that is always there (a service run by someone else, or the
 * upstream of a benchmark). Start and stop cost nothing and touch nothing; the core still
 * probes the endpoint before calling it ready, so a backend that is down is held for, not
 * forwarded to.
 *
 * It keeps which instances it was asked to start, so that it honours the provider contract
 * (`inspect` says `stopped` for an instance it was never asked to start; stop is idempotent).
 */
import type { InspectResult, InstanceRef, Provider, StartResult } from '../../core/ports.ts';

export interface StaticProviderOptions {
  /** Base URL of the backend (`http://host:port`, optionally with a path prefix). */
  readonly endpoint: string;
}

export function createStaticProvider(options: StaticProviderOptions): Provider {
  const started = new Set<string>();
  const keyOf = (ref: InstanceRef): string => `${ref.resourceId}\u0000${ref.instanceKey}`;
  const running: InspectResult = { state: 'running', endpoint: options.endpoint };
  const stopped: InspectResult = { state: 'stopped' };
  return {
    kind: 'static',
    start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
      if (signal.aborted) return Promise.reject(abortReason(signal));
      started.add(keyOf(ref));
      return Promise.resolve({});
    },
    inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
      if (signal.aborted) return Promise.reject(abortReason(signal));
      return Promise.resolve(started.has(keyOf(ref)) ? running : stopped);
    },
    stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
      if (signal.aborted) return Promise.reject(abortReason(signal));
      started.delete(keyOf(ref));
      return Promise.resolve();
    },
  };
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error(String(reason));
}
