/**
 * Checks that need the outside world, run at start-up (warnings in the log) and by
 * `check-config` (printed): a configuration can be valid and still unable to work with the
 * cloud it points at.
 */
import type { Config } from './config/schema.ts';
import { effectiveResources, type EffectiveResource } from './config/load.ts';

export interface StartupWarning {
  readonly resource: string;
  readonly provider: string;
  readonly message: string;
}

/**
 * Resources on an `atmosphere` provider whose cloud speaks the original 2012 API, where they
 * cannot work as configured: the original has no VM for an empty group set (`get_vm` and
 * `span_as` answer 404 for `…/for_user_with_groups/`), and no stop. Clouds that cannot be
 * reached are reported as such; nothing here throws.
 */
export async function atmosphereApiWarnings(config: Config, timeoutMs: number, signal?: AbortSignal, resources?: readonly EffectiveResource[]): Promise<StartupWarning[]> {
  const byProvider = new Map<string, { baseUrl: string; resources: EffectiveResource[] }>();
  // The caller's resources when it has them (start-up: built once, not once more here).
  for (const r of resources ?? effectiveResources(config)) {
    if (r.provider.kind !== 'atmosphere' || r.provider.baseUrl === 'embedded') continue;
    const entry = byProvider.get(r.providerName) ?? { baseUrl: r.provider.baseUrl, resources: [] };
    entry.resources.push(r);
    byProvider.set(r.providerName, entry);
  }
  const warnings: StartupWarning[] = [];
  if (byProvider.size === 0) return warnings;
  // Loaded only for a config with such a cloud: the provider loads undici's whole index.
  const { detectAtmosphereApi } = await import('./providers/atmosphere/atmosphere-provider.ts');
  await Promise.all([...byProvider].map(async ([provider, { baseUrl, resources }]) => {
    let api: 'original' | 'extended';
    try {
      api = await detectAtmosphereApi(baseUrl, timeoutMs, signal === undefined ? AbortSignal.timeout(timeoutMs) : AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]));
    } catch (err) {
      warnings.push({ resource: resources.map((r) => r.id).join(','), provider, message: `could not ask ${baseUrl} which API it speaks (${err instanceof Error ? err.message : String(err)}); not checked` });
      return;
    }
    if (api !== 'original') return;
    for (const r of resources) {
      if (r.sharing === 'shared') {
        warnings.push({ resource: r.id, provider, message: `sharing: shared starts VMs without groups, which the original Atmosphere API at ${baseUrl} cannot do (404): use sharing: groups and callers with groups` });
      } else if (r.access.public) {
        warnings.push({ resource: r.id, provider, message: `public: anonymous callers hold no groups, and the original Atmosphere API at ${baseUrl} has no VM for an empty group set (404): require identities with groups` });
      }
      if (r.idleStopMs > 0) {
        warnings.push({ resource: r.id, provider, message: `the original Atmosphere API at ${baseUrl} has no stop: idle stops leave VMs running (set idleStopMs: 0)` });
      }
    }
  }));
  return warnings;
}
