/**
 * Keeps the idle reaper from stopping what the front proxy is serving. A front proxy
 * reports a request only when it ends (access logs), and a WebSocket or a long download
 * may last far longer than idleStopMs. So before an instance can become idle, Smart Proxy
 * asks the front proxy's control server whether the resource has requests open right now:
 * nginx counts them per resource in shared memory (`limit_conn`), HAProxy in a stick table
 * (`conn_cur`), both at no cost per request. "Busy" marks activity, which pushes the idle
 * stop a full idleStopMs away; the next check comes before that.
 *
 * Only instances within two check periods of their idle stop are asked about, so the
 * checks grow with the stops about to happen, not with traffic or the number of resources.
 * A check that fails (front proxy unreachable) counts as busy: not knowing is no reason to
 * cut someone off. It is logged, and nothing stops until the front proxy answers again.
 */
import { EventEmitter } from 'node:events';
import { request, Agent } from 'node:http';
import type { Clock, Logger, TimerHandle } from '../core/ports.ts';
import type { ResourceManager } from '../core/resource-manager.ts';
import { BUSY_PATH } from './protocol.ts';

export interface BusyCheckerOptions {
  readonly manager: ResourceManager;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The front proxy's control server: `host:port` or `unix:/path`. */
  readonly control: string;
  readonly intervalMs: number;
}

export type BusyAnswer = 'busy' | 'idle' | 'unknown';

export class BusyChecker {
  readonly #o: BusyCheckerOptions;
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 4 });
  /** Resources the front proxy was granted (only those can be served behind our back). */
  readonly #watched = new Set<string>();
  #timer: TimerHandle | undefined;
  #closed = false;
  #lastWarnAt = 0;
  #running = false;
  /** Checks done, by answer (tests and the benchmark read these). */
  readonly counts = { busy: 0, idle: 0, unknown: 0 };
  /** Emits `check` (resourceId, answer) after each check. */
  readonly events = new EventEmitter();

  constructor(options: BusyCheckerOptions) {
    this.#o = options;
  }

  watch(resourceId: string): void {
    this.#watched.add(resourceId);
  }

  start(): void {
    this.#schedule();
  }

  close(): void {
    this.#closed = true;
    this.#timer?.cancel();
    this.#agent.destroy();
  }

  #intervalFor(idleStopMs: number): number {
    return Math.max(50, Math.min(this.#o.intervalMs, Math.floor(idleStopMs / 3)));
  }

  #schedule(): void {
    if (this.#closed) return;
    let next = this.#o.intervalMs;
    for (const id of this.#watched) {
      for (const inst of this.#o.manager.instancesOf(id)) {
        if (inst.resource.idleStopMs > 0) next = Math.min(next, this.#intervalFor(inst.resource.idleStopMs));
        break;
      }
    }
    this.#timer = this.#o.clock.setTimeout(() => {
      void this.tick().finally(() => this.#schedule());
    }, next);
  }

  /** One round of checks (exported for tests that drive a manual clock). */
  async tick(): Promise<void> {
    if (this.#running || this.#closed) return;
    this.#running = true;
    try {
      const now = this.#o.clock.now();
      const due: string[] = [];
      for (const id of this.#watched) {
        for (const inst of this.#o.manager.instancesOf(id)) {
          const idleMs = inst.resource.idleStopMs;
          if (inst.status !== 'ready' || idleMs <= 0) continue;
          if (inst.lastActivityAt + idleMs - now <= 2 * this.#intervalFor(idleMs)) {
            due.push(id);
            break;
          }
        }
      }
      await Promise.all(due.map(async (id) => {
        const answer = await this.check(id);
        this.counts[answer]++;
        this.events.emit('check', id, answer);
        if (answer === 'idle') return;
        const at = this.#o.clock.now();
        for (const inst of this.#o.manager.instancesOf(id)) if (inst.status === 'ready') this.#o.manager.touch(inst, at);
      }));
    } finally {
      this.#running = false;
    }
  }

  /** Asks the front proxy whether `resourceId` has requests open now. */
  check(resourceId: string): Promise<BusyAnswer> {
    const control = this.#o.control;
    const path = `${BUSY_PATH}?r=${encodeURIComponent(resourceId)}`;
    const target = control.startsWith('unix:')
      ? { socketPath: control.slice(5) }
      : { host: control.slice(0, control.lastIndexOf(':')).replace(/^\[|\]$/g, ''), port: Number(control.slice(control.lastIndexOf(':') + 1)) };
    return new Promise<BusyAnswer>((resolve) => {
      const fail = (why: string): void => {
        const now = this.#o.clock.now();
        if (now - this.#lastWarnAt > 60_000) {
          this.#lastWarnAt = now;
          this.#o.logger.warn({ control, resource: resourceId, why }, 'front proxy busy check failed: idle stops wait until it answers');
        }
        resolve('unknown');
      };
      const req = request({ ...target, path, method: 'GET', agent: this.#agent, timeout: Math.max(1_000, this.#o.intervalMs) }, (res) => {
        res.resume();
        const status = res.statusCode ?? 0;
        if (status === 409) resolve('busy');
        else if (status >= 200 && status < 300) resolve('idle');
        else fail(`status ${status}`);
      });
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => fail(err.message));
      req.end();
    });
  }
}
