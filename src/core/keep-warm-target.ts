/**
 * The control plane as keep-warm sees it (apart from keep-warm.ts, which the resource runtime
 * imports for its types: this one needs the runtime, so it cannot live there).
 */
import type { KeepWarmTarget } from './keep-warm.ts';
import type { ResourceRuntime } from './resource-runtime.ts';

/** Starts the resource's keep-warm instance unless it runs. */
export function keepWarmTargetOf<I extends { readonly status: string }>(
  control: { runningCount(id: string): number; selectInstance(r: ResourceRuntime, g: readonly string[], u: undefined): I; requestStart(inst: I): { readonly message: string } | undefined },
  resources: ReadonlyMap<string, ResourceRuntime>,
): KeepWarmTarget {
  return {
    runningCount: (id) => control.runningCount(id),
    startKeptWarm: (id, groups) => {
      const res = resources.get(id);
      if (res === undefined) return 'unknown resource';
      const inst = control.selectInstance(res, groups, undefined);
      if (inst.status === 'ready' || inst.status === 'starting') return undefined;
      return control.requestStart(inst)?.message;
    },
  };
}
