/**
 * Which instances exist: selection of the instance a request goes to, creation, and
 * forgetting the settled ones nobody uses (so per-user and per-group-set instances do not
 * accumulate forever). It creates every instance together with its InstanceControl and is
 * the only place a control can be found again.
 */
import { Instance, InstanceControl, type MoveListener } from './instance.ts';
import type { Clock, TimerHandle } from './ports.ts';
import type { ResourceRuntime } from './resource-runtime.ts';

export interface RegistryOptions {
  readonly clock: Clock;
  readonly onMove: MoveListener;
  /** A settled instance is forgotten this long after it settled; 0: never. */
  readonly forgetAfterMs: number;
  /** True while something outside the registry still holds on to the instance (a stop in progress). */
  readonly busy: (inst: Instance) => boolean;
  /** Called for each forgotten instance (its units drop their timers). */
  readonly onForget: (inst: Instance) => void;
}

export class InstanceRegistry {
  readonly #o: RegistryOptions;
  readonly #instances = new Map<string, Map<string, Instance>>();
  readonly #controls = new WeakMap<Instance, InstanceControl>();
  /** Per resource: sweep forgettable instances when the map reaches this size. */
  readonly #sweepAt = new Map<string, number>();
  #forgetTimer: TimerHandle | undefined;
  #closed = false;
  /**
   * The key of the last group list selected with: a verified identity acts with the same
   * array request after request, so its joined key (and that string's hash) is not rebuilt
   * per request. Group lists are never mutated (readonly).
   */
  #lastGroups: readonly string[] | undefined;
  #lastGroupsKey = '';

  constructor(options: RegistryOptions) {
    this.#o = options;
  }

  /** The writer of `inst`; throws for an instance this registry did not create. */
  control(inst: Instance): InstanceControl {
    const c = this.#controls.get(inst);
    if (c === undefined) throw new Error(`instance ${inst.resource.id}/${inst.key} is not managed here`);
    return c;
  }

  instancesOf(resourceId: string): Iterable<Instance> {
    return this.#instances.get(resourceId)?.values() ?? [];
  }

  /**
   * Every instance, as a snapshot array. Not a generator: the state flush walks every
   * instance once a second, and a generator's resumption per item cost some 600 instructions
   * per instance (callgrind, 1,000 warm instances), a plain loop a tenth of that.
   */
  all(): Instance[] {
    const out: Instance[] = [];
    for (const byKey of this.#instances.values()) for (const inst of byKey.values()) out.push(inst);
    return out;
  }

  get count(): number {
    let n = 0;
    for (const byKey of this.#instances.values()) n += byKey.size;
    return n;
  }

  /** Instances of a resource in one of `statuses`. */
  countOf(resourceId: string, ...statuses: Array<Instance['status']>): number {
    let n = 0;
    for (const i of this.instancesOf(resourceId)) if (statuses.includes(i.status)) n++;
    return n;
  }

  /**
   * Picks the instance a request acting with `groups` (sorted, unique) as `user` goes to,
   * creating an unstarted one if none fits. In `groups` mode an instance started for a group
   * set is reused by any request whose groups include that set (the original's model); a
   * ready one is preferred, then one that is already starting, so no second start happens
   * while a fitting instance boots.
   */
  select(resource: ResourceRuntime, groups: readonly string[], user: string | undefined): Instance {
    const byKey = this.#byKey(resource.id);
    let key: string;
    let instGroups = groups;
    let instUser: string | undefined;
    switch (resource.sharing) {
      case 'shared':
        key = '*';
        instGroups = [];
        break;
      case 'user':
        key = `user:${user ?? ''}`;
        instUser = user;
        break;
      case 'groups':
        if (groups.length === 0) key = '*';
        else if (groups === this.#lastGroups) key = this.#lastGroupsKey;
        else {
          key = groups.join(',');
          this.#lastGroups = groups;
          this.#lastGroupsKey = key;
        }
        break;
    }
    const exact = byKey.get(key);
    if (exact !== undefined && exact.status === 'ready') return exact;
    if (resource.sharing === 'groups') {
      const fit = pickSubsetInstance(byKey.values(), groups);
      if (fit !== undefined) return fit;
    }
    // An instance made under a resource's previous settings (before a configuration reload)
    // keeps them while it runs; once stopped it is replaced, so the next start uses the new ones.
    if (exact !== undefined && (exact.resource === resource || (exact.status !== 'stopped' && exact.status !== 'failed'))) return exact;
    // Growth happens only here: an amortised sweep keeps the map within twice what is in use.
    if (byKey.size >= (this.#sweepAt.get(resource.id) ?? 64)) this.#sweep(resource.id, byKey);
    return this.#create(byKey, resource, key, instGroups, instUser);
  }

  /**
   * The instance under `key` for re-adoption: a new one, or the known one if it is stopped.
   * Undefined when a live instance with that key is known (nothing to adopt).
   */
  forAdoption(resource: ResourceRuntime, key: string, groups: readonly string[], user: string | undefined): InstanceControl | undefined {
    const byKey = this.#byKey(resource.id);
    const known = byKey.get(key);
    if (known !== undefined && known.status !== 'stopped') return undefined;
    if (this.#closed) return undefined;
    if (known !== undefined) return this.control(known);
    return this.control(this.#create(byKey, resource, key, groups, user));
  }

  /** Arms the one timer that forgets settled instances (called when one settles). */
  armForget(): void {
    if (this.#forgetTimer !== undefined || this.#closed || this.#o.forgetAfterMs <= 0) return;
    this.#forgetTimer = this.#o.clock.setTimeout(() => {
      this.#forgetTimer = undefined;
      let left = 0;
      for (const [id, byKey] of this.#instances) left += this.#sweep(id, byKey);
      if (left > 0) this.armForget();
    }, this.#o.forgetAfterMs);
  }

  close(): void {
    this.#closed = true;
    this.#forgetTimer?.cancel();
  }

  #byKey(resourceId: string): Map<string, Instance> {
    let byKey = this.#instances.get(resourceId);
    if (byKey === undefined) {
      byKey = new Map();
      this.#instances.set(resourceId, byKey);
    }
    return byKey;
  }

  #create(byKey: Map<string, Instance>, resource: ResourceRuntime, key: string, groups: readonly string[], user: string | undefined): Instance {
    const inst = new Instance(resource, key, groups, user);
    this.#controls.set(inst, new InstanceControl(inst, () => this.#o.clock.now(), this.#o.onMove));
    byKey.set(key, inst);
    this.armForget();
    return inst;
  }

  /**
   * Forgets instances that settled (stopped, or failed and cooled) at least `forgetAfterMs`
   * ago and that nothing uses or waits for; a later request simply creates the instance
   * again. Returns how many settled instances are left to forget later.
   */
  #sweep(resourceId: string, byKey: Map<string, Instance>): number {
    const now = this.#o.clock.now();
    let left = 0;
    for (const [key, inst] of byKey) {
      const settled = (inst.status === 'stopped' || (inst.status === 'failed' && now >= inst.failedUntil))
        && inst.waiters.size === 0 && inst.activeConnections === 0 && !inst.startAfterStop && !this.#o.busy(inst);
      if (!settled) continue;
      if (now - inst.settledAt < this.#o.forgetAfterMs) {
        left++;
        continue;
      }
      byKey.delete(key);
      this.control(inst).supersede();
      this.#o.onForget(inst);
    }
    if (byKey.size === 0) {
      this.#instances.delete(resourceId);
      this.#sweepAt.delete(resourceId);
    } else {
      this.#sweepAt.set(resourceId, Math.max(64, byKey.size * 2));
    }
    return left;
  }
}

/**
 * In `groups` mode: the best instance whose groups are a subset of the request's groups:
 * ready first, then starting (joining its boot instead of starting another machine).
 */
function pickSubsetInstance(instances: Iterable<Instance>, groups: readonly string[]): Instance | undefined {
  let starting: Instance | undefined;
  for (const inst of instances) {
    if (inst.status !== 'ready' && inst.status !== 'starting') continue;
    if (!isSubset(inst.groups, groups)) continue;
    if (inst.status === 'ready') return inst;
    starting ??= inst;
  }
  return starting;
}

/** Both sorted ascending: is every element of `sub` in `sup`? */
export function isSubset(sub: readonly string[], sup: readonly string[]): boolean {
  let j = 0;
  for (const s of sub) {
    while (j < sup.length && (sup[j] as string) < s) j++;
    if (sup[j] !== s) return false;
    j++;
  }
  return true;
}
