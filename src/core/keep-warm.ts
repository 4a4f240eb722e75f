/**
 * Keep-warm: a floor on the number of running instances of a resource, always
 * (`minInstances`) and inside cron-like time windows (`windows`).
 *
 * A window is the set of minutes its 5-field cron expression matches (minute hour
 * day-of-month month day-of-week), so `* 8-17 * * 1-5` keeps a resource warm on weekdays
 * from 08:00 to 17:59. When a window opens the resource is pre-started; while it is open the
 * idle reaper does not stop below the floor; when it closes, the ordinary idle stop applies
 * again (counted from the last real activity, so a resource unused all day stops at once).
 *
 * Time comes from the injected Clock, so tests drive windows with a ManualClock. Cron
 * matching (and time zones) is croner's job.
 */
import { Cron } from 'croner';
import type { Clock, Logger, TimerHandle } from './ports.ts';

export interface KeepWarmWindowSpec {
  /** 5-field cron expression; the window is every minute it matches. */
  readonly cron: string;
  /** Instances kept running while the window is open. */
  readonly minInstances: number;
}

export interface KeepWarmSpec {
  /** Instances kept running at all times (0: none). */
  readonly minInstances: number;
  readonly windows: readonly KeepWarmWindowSpec[];
  /** IANA time zone the windows are read in; undefined: the machine's local time (as cron). */
  readonly timeZone?: string | undefined;
  /** Groups of the instance that keep-warm starts (for `groups` sharing); [] by default. */
  readonly groups: readonly string[];
}

const MINUTE_MS = 60_000;

/** Returns a message when `expr` is not a valid 5-field cron expression (for config checks). */
export function cronProblem(expr: string, timeZone?: string): string | undefined {
  if (expr.trim().split(/\s+/).length !== 5) return 'expected 5 fields: minute hour day-of-month month day-of-week';
  try {
    // nextRun makes croner check the time zone too, which the constructor does not.
    new Cron(expr, { paused: true, ...(timeZone === undefined ? {} : { timezone: timeZone }) }).nextRun();
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** The keep-warm rules of one resource, answering "how many now?" and "when next to look?". */
export class KeepWarmPolicy {
  readonly spec: KeepWarmSpec;
  readonly #windows: Array<{ readonly cron: Cron; readonly minInstances: number }>;

  constructor(spec: KeepWarmSpec) {
    this.spec = spec;
    this.#windows = spec.windows.map((w) => {
      const problem = cronProblem(w.cron, spec.timeZone);
      if (problem !== undefined) throw new Error(`keep-warm window "${w.cron}": ${problem}`);
      return { cron: new Cron(w.cron, { paused: true, ...(spec.timeZone === undefined ? {} : { timezone: spec.timeZone }) }), minInstances: w.minInstances };
    });
  }

  /** Instances that must be running at `nowMs`. */
  minInstancesAt(nowMs: number): number {
    let min = this.spec.minInstances;
    if (this.#windows.length === 0) return min;
    const minute = new Date(nowMs - (nowMs % MINUTE_MS));
    for (const w of this.#windows) {
      if (w.minInstances > min && w.cron.match(minute)) min = w.minInstances;
    }
    return min;
  }

  /**
   * The next time `minInstancesAt` may change: the next minute while a window is open (it
   * may close then), else the opening of the next window. Undefined: never changes.
   */
  nextChangeAt(nowMs: number): number | undefined {
    if (this.#windows.length === 0) return undefined;
    const nextMinute = nowMs - (nowMs % MINUTE_MS) + MINUTE_MS;
    const minute = new Date(nowMs - (nowMs % MINUTE_MS));
    let next: number | undefined;
    for (const w of this.#windows) {
      if (w.cron.match(minute)) return nextMinute;
      const run = w.cron.nextRun(new Date(nowMs))?.getTime();
      if (run !== undefined && (next === undefined || run < next)) next = run;
    }
    return next;
  }
}

/** What the scheduler needs of the control plane (the ResourceManager provides it). */
export interface KeepWarmTarget {
  /** Instances of the resource that are ready or starting. */
  runningCount(resourceId: string): number;
  /** Starts the keep-warm instance of the resource unless it already runs; returns why not. */
  startKeptWarm(resourceId: string, groups: readonly string[]): string | undefined;
}

/**
 * Pre-starts resources whose keep-warm floor is not met, at start-up and whenever a window
 * opens. Stopping is the idle reaper's job (it consults the same policy).
 */
export class KeepWarmScheduler {
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #target: KeepWarmTarget;
  readonly #policies: ReadonlyMap<string, KeepWarmPolicy>;
  readonly #timers = new Map<string, TimerHandle>();
  #closed = false;

  constructor(options: { clock: Clock; logger: Logger; target: KeepWarmTarget; policies: ReadonlyMap<string, KeepWarmPolicy> }) {
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#target = options.target;
    this.#policies = options.policies;
  }

  start(): void {
    for (const id of this.#policies.keys()) this.#evaluate(id);
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#timers.values()) t.cancel();
    this.#timers.clear();
  }

  #evaluate(resourceId: string): void {
    this.#timers.delete(resourceId);
    if (this.#closed) return;
    const policy = this.#policies.get(resourceId);
    if (policy === undefined) return;
    const now = this.#clock.now();
    const want = policy.minInstancesAt(now);
    if (want > 0 && this.#target.runningCount(resourceId) < want) {
      const refused = this.#target.startKeptWarm(resourceId, policy.spec.groups);
      if (refused === undefined) this.#log.info({ resource: resourceId, minInstances: want }, 'keep-warm: starting');
      else this.#log.warn({ resource: resourceId, reason: refused }, 'keep-warm: could not start');
    }
    const next = policy.nextChangeAt(now);
    if (next === undefined) return;
    this.#timers.set(resourceId, this.#clock.setTimeout(() => this.#evaluate(resourceId), Math.max(1, next - now)));
  }
}
