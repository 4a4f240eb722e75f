/**
 * Coordination of replicas on Redis (core/coordination.ts): one start per instance
 * cluster-wide, readiness fanned out to every replica, activity summed over replicas, one
 * idle stop.
 *
 * Keys, under the prefix, per instance `<id>` = `<resourceId>/<instanceKey>` (URI-encoded):
 * - `c:lease:start:<id>` / `c:lease:stop:<id>`: `<replicaId>:<token>`, SET NX PX, renewed by
 *   Lua compare-and-PEXPIRE, released by Lua compare-and-DEL (never someone else's lease).
 * - `c:fence:<id>`: INCR counter; every lease takes the next value as its fencing token.
 * - `c:rec:<id>`: the cluster's record of the instance (versioned JSON: state, endpoint,
 *   handle, token, owner, at). Written by Lua that refuses a token older than the stored one,
 *   so a replica that lost its lease (paused, partitioned) cannot overwrite its successor.
 * - `c:act:<id>`: hash, one field per replica: `{i: idleForMs, c: openConnections, r}`,
 *   flushed on a timer with an expiry; a replica that stops flushing stops counting.
 * - channel `c:events`: `{id, state}` after each record write that others wait for.
 *
 * Clocks: no replica's clock is compared with another's. A replica reports durations measured
 * on its own clock (idle for, as of the flush); Redis stamps each write with its own `TIME`
 * (`r` of an activity field, `at` of a record), and readers compare those stamps with Redis's
 * `TIME` read in the same script. A stop in progress is recognised by its renewed stop lease,
 * not by the age of the record.
 *
 * Waiting replicas wake on the channel *and* re-read the record every `pollIntervalMs`:
 * pub/sub drops messages sent while a subscriber is disconnected.
 */
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import type { ClaimOptions, Coordinator, LocalActivity, StartClaim, StartLease, StopDecision } from '../../core/coordination.ts';
import { SmartProxyError, isSmartProxyError } from '../../core/errors.ts';
import type { InstanceRef, Logger } from '../../core/ports.ts';
import { openRedis, type RedisSpec } from './client.ts';

export const CLUSTER_RECORD_VERSION = 1;

export interface RedisCoordinatorOptions extends RedisSpec {
  readonly keyPrefix: string;
  readonly logger: Logger;
  /** Unique per process; default `<hostname>-<pid>-<random>`. */
  readonly replicaId?: string | undefined;
  /** Lease lifetime; renewed every third of it. A dead holder is replaced after at most this. */
  readonly leaseMs: number;
  /** Waiting replicas re-read the instance record this often (pub/sub may lose messages). */
  readonly pollIntervalMs: number;
  /** Local activity and open connections are written this often. */
  readonly activityFlushIntervalMs: number;
  /** Redis unreachable: start locally (single flight per replica) instead of answering 503. */
  readonly fallbackToLocal: boolean;
  /**
   * This replica's clock (default `Date.now`), the one its `lastActivityAt` values are read
   * on. Used only for local durations, never compared with another replica's.
   */
  readonly now?: (() => number) | undefined;
}

/** What the coordinator reads of the local control plane, and tells it. */
export interface LocalControlPlane {
  /** Instances this replica has ready now, with their local activity. */
  readyInstances(): Iterable<{ readonly ref: InstanceRef; readonly lastActivityAt: number; readonly activeConnections: number }>;
  /** Another replica stopped this instance. */
  stoppedElsewhere(resourceId: string, instanceKey: string): void;
}

export type ClusterState = 'starting' | 'ready' | 'failed' | 'stopping' | 'stopped';

export interface ClusterRecord {
  readonly v: number;
  readonly state: ClusterState;
  readonly token: number;
  readonly owner: string;
  readonly at: number;
  readonly endpoint?: string | undefined;
  readonly handle?: string | undefined;
  readonly reason?: string | undefined;
}

const ACQUIRE = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
  return t
end
return false`;
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;
/** Redis's own clock in ms (scripts only: one clock for every replica). */
const NOW_MS = `local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)`;
/** KEYS: record, fence. ARGV: token ('' = take a new one), record JSON without token, channel, message. */
const WRITE = `${NOW_MS}
local token = tonumber(ARGV[1])
if token == nil then token = redis.call('INCR', KEYS[2]) end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, o = pcall(cjson.decode, cur)
  if ok and type(o) == 'table' and tonumber(o.token) ~= nil and tonumber(o.token) > token then return 0 end
end
local rec = cjson.decode(ARGV[2])
rec.token = token
rec.at = now
redis.call('SET', KEYS[1], cjson.encode(rec))
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1`;
/** KEYS: record, stop lease. Returns [record or false, Redis now (ms), stop lease held (0/1)]. */
const READ = `${NOW_MS}
return { redis.call('GET', KEYS[1]), now, redis.call('EXISTS', KEYS[2]) }`;
/** KEYS: activity hash. Returns [Redis now (ms), HGETALL]. */
const READ_ACTIVITY = `${NOW_MS}
return { now, redis.call('HGETALL', KEYS[1]) }`;
/** KEYS: activity hashes. ARGV: replica, ttl ms, then one JSON prefix per key (closed here with r = Redis now). */
const FLUSH = `${NOW_MS}
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, ARGV[1], ARGV[i + 2] .. ',"r":' .. string.format('%d', now) .. '}')
  redis.call('PEXPIRE', key, ARGV[2])
end
return #KEYS`;

export class RedisCoordinator implements Coordinator {
  readonly replicaId: string;
  readonly #redis: Redis;
  readonly #sub: Redis;
  readonly #prefix: string;
  readonly #log: Logger;
  readonly #opts: RedisCoordinatorOptions;
  readonly #wakers = new Map<string, Set<() => void>>();
  /** Start leases held now, so that close() gives them up (a successor takes over at once). */
  readonly #held = new Map<string, { readonly id: string; readonly renew: NodeJS.Timeout }>();
  /** Stop leases held now, by instance id: `stopped()` writes with this token (fencing). */
  readonly #stopLeases = new Map<string, { readonly token: number; readonly value: string; readonly renew: NodeJS.Timeout }>();
  /**
   * The fencing token of the record this replica last knew each instance by (its own start,
   * or a ready record it joined): a stop without a stop lease (shutdown, an operator) writes
   * with it, so it can never overwrite a newer start's record.
   */
  readonly #knownTokens = new Map<string, number>();
  #local: LocalControlPlane | undefined;
  #flushTimer: NodeJS.Timeout | undefined;
  #flushing = false;
  /** The last flush found no ready instance here: nothing to write until one becomes ready. */
  #nothingToFlush = false;
  #closed = false;
  /**
   * The command connection failed and has not come back: a claim fails at once instead of
   * waiting for a command timeout (a cold request gets its 503 now, not 1.5 s later).
   * Cleared when ioredis reconnects (its own backoff is the half-open timer).
   */
  #down = false;

  constructor(options: RedisCoordinatorOptions) {
    this.#opts = options;
    this.#prefix = options.keyPrefix;
    this.#log = options.logger;
    this.replicaId = options.replicaId ?? `${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    this.#redis = openRedis(options, options.logger, 'coordinator');
    const markDown = (): void => { this.#down = true; };
    this.#redis.on('error', markDown);
    this.#redis.on('close', markDown);
    this.#redis.on('ready', () => { this.#down = false; });
    // The subscriber queues its SUBSCRIBE until connected; ioredis re-subscribes on reconnect.
    this.#sub = openRedis(options, options.logger, 'subscriber', { maxRetriesPerRequest: null, commandTimeout: undefined });
    this.#sub.on('message', (_channel: string, message: string) => this.#onMessage(message));
    // Messages sent while we were away are lost: every waiter re-reads the record now.
    this.#sub.on('ready', () => this.#wakeAll());
    this.#sub.subscribe(this.#key('c:events')).catch((err: unknown) => {
      if (!this.#closed) this.#log.warn({ err: errMessage(err) }, 'redis: subscribe failed');
    });
  }

  /** Claims parked waiting for another replica's start (tests await this instead of sleeping). */
  get waiting(): number {
    let n = 0;
    for (const set of this.#wakers.values()) n += set.size;
    return n;
  }

  /** Connects the local control plane; flushes activity while it has ready instances. */
  attach(local: LocalControlPlane): void {
    this.#local = local;
    if (local.readyInstances()[Symbol.iterator]().next().done !== true) this.#armFlush();
  }

  /**
   * An instance became ready here: the activity flush runs again. It stops by itself once a
   * flush finds none ready, so an idle replica (nothing ready) never wakes for it.
   */
  activityExpected(): void {
    this.#armFlush();
  }

  /** Whether the activity flush timer is armed (tests). */
  get flushArmed(): boolean {
    return this.#flushTimer !== undefined;
  }

  #armFlush(): void {
    if (this.#flushTimer !== undefined || this.#closed || this.#local === undefined) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      this.#nothingToFlush = false;
      void this.flushActivity().finally(() => {
        // A flush that could not run (Redis down) re-arms too: the activity is still owed.
        if (!this.#nothingToFlush) this.#armFlush();
      });
    }, Math.max(10, this.#opts.activityFlushIntervalMs));
    this.#flushTimer.unref();
  }

  async claimStart(ref: InstanceRef, signal: AbortSignal, options: ClaimOptions = {}): Promise<StartClaim> {
    const { notEndpoint, failureCooldownMs = 0 } = options;
    const id = idOf(ref);
    let since: number | undefined;
    for (;;) {
      if (signal.aborted) throw asError(signal.reason);
      if (this.#closed) throw new SmartProxyError('SP_SHUTTING_DOWN');
      try {
        if (this.#down) throw new Error(`redis connection is ${this.#redis.status}`);
        const { rec, nowMs, stopLeaseHeld } = await this.#read(id);
        since ??= nowMs;
        if (rec?.state === 'ready' && rec.endpoint !== undefined && rec.endpoint !== notEndpoint) {
          this.#knownTokens.set(id, rec.token);
          return { kind: 'ready', endpoint: rec.endpoint, handle: rec.handle };
        }
        if (rec?.state === 'failed' && rec.at > since) {
          throw new SmartProxyError('SP_START_FAILED', `the start on another replica failed: ${rec.reason ?? 'no reason given'}`, { data: { resource: ref.resourceId } });
        }
        const coolingMs = rec?.state === 'failed' ? rec.at + failureCooldownMs - nowMs : 0;
        if (coolingMs > 0) {
          throw new SmartProxyError('SP_RESOURCE_FAILED', undefined, {
            data: { resource: ref.resourceId, cause: rec?.reason }, retryAfterS: Math.ceil(coolingMs / 1000),
          });
        }
        // A stop in progress elsewhere (its stop lease is renewed while it runs): wait for it
        // to end rather than start under it. A stopper that died lets its lease expire.
        const stopping = rec?.state === 'stopping' && stopLeaseHeld;
        if (!stopping) {
          const lease = await this.#acquire('start', id);
          if (lease !== undefined) {
            const takeover = rec?.state === 'starting';
            this.#knownTokens.set(id, lease.token);
            await this.#write(id, lease.token, { state: 'starting' });
            if (takeover) this.#log.info({ resource: ref.resourceId, instance: ref.instanceKey, previousOwner: rec.owner, token: lease.token }, 'cluster: took over a start whose lease expired');
            return { kind: 'lead', lease: this.#startLease(ref, id, lease, takeover) };
          }
        }
      } catch (err) {
        if (isSmartProxyError(err)) throw err;
        if (this.#opts.fallbackToLocal) {
          this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, err: errMessage(err) }, 'cluster: redis unreachable; starting locally (fallbackToLocal)');
          return { kind: 'lead', lease: localLease };
        }
        throw new SmartProxyError('SP_CLUSTER_UNAVAILABLE', undefined, { data: { resource: ref.resourceId }, retryAfterS: 1, cause: err });
      }
      await this.#wait(id, this.#opts.pollIntervalMs, signal);
    }
  }

  async decideStop(ref: InstanceRef, local: () => LocalActivity): Promise<StopDecision> {
    const id = idOf(ref);
    const rec = await this.readRecord(ref);
    if (rec !== undefined && (rec.state === 'stopped' || rec.state === 'stopping' || (rec.state === 'ready' && rec.endpoint !== local().endpoint))) {
      return 'gone';
    }
    const lease = await this.#acquire('stop', id);
    if (lease === undefined) return 'keep';
    // Renewed until stopped() or cancelStop(): a slow provider stop keeps it, so no start
    // begins under it, and a replica that dies mid-stop lets it expire.
    const renew = this.#renewEvery('stop', id, lease.value, ref, lease.token);
    const giveUp = async (): Promise<'keep'> => {
      clearInterval(renew);
      await this.#release('stop', id, lease.value).catch(() => undefined);
      return 'keep';
    };
    try {
      if (await this.#inUse(id, local())) return await giveUp();
      // Activity reaches Redis once per flush: wait two flushes and look again, so a connection
      // opened on another replica just before this decision is seen.
      const settleMs = Math.min(this.#opts.activityFlushIntervalMs * 2 + 20, Math.floor(this.#opts.leaseMs / 2));
      await new Promise((r) => setTimeout(r, settleMs).unref());
      if (this.#closed || await this.#inUse(id, local())) return await giveUp();
      const written = await this.#write(id, lease.token, { state: 'stopping' });
      if (!written) return await giveUp();
    } catch (err) {
      await giveUp();
      throw err;
    }
    this.#stopLeases.set(id, { token: lease.token, value: lease.value, renew });
    return 'stop';
  }

  /**
   * Any open connection on a live replica, or activity within idleStopMs anywhere? Idle
   * times are durations: this replica's on its own clock, the others' as flushed plus the
   * age of their flush on Redis's clock.
   */
  async #inUse(id: string, local: LocalActivity): Promise<boolean> {
    let idleForMs = Math.max(0, this.#now() - local.lastActivityAt);
    let connections = local.activeConnections;
    const [nowMs, flat] = await this.#redis.eval(READ_ACTIVITY, 1, this.#key(`c:act:${id}`)) as [number, string[]];
    for (let k = 0; k + 1 < flat.length; k += 2) {
      const replica = flat[k] as string;
      if (replica === this.replicaId) continue;
      const a = parseActivity(flat[k + 1] as string);
      if (a === undefined) continue;
      const ageMs = Math.max(0, nowMs - a.r);
      idleForMs = Math.min(idleForMs, a.i + ageMs);
      // A replica that stopped flushing (dead) holds no connection any more.
      if (ageMs <= this.#freshForMs()) connections += a.c;
    }
    return connections > 0 || idleForMs < local.idleStopMs;
  }

  /**
   * The stop decided here went through (or a stop without a decision: shutdown, an
   * operator). Written with the stop lease's token, or the token this replica knew the
   * instance by: a slow or stale stop never overwrites a newer start's record.
   */
  stopped(ref: InstanceRef): void {
    const id = idOf(ref);
    const lease = this.#stopLeases.get(id);
    this.#stopLeases.delete(id);
    if (lease !== undefined) clearInterval(lease.renew);
    const token = lease?.token ?? this.#knownTokens.get(id) ?? 0;
    this.#knownTokens.delete(id);
    this.#write(id, token, { state: 'stopped' }, true)
      .then(async (written) => {
        if (!written) this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, token }, 'cluster: a newer start owns the record; this stop is not recorded over it');
        else await this.#redis.del(this.#key(`c:act:${id}`));
        if (lease !== undefined) await this.#release('stop', id, lease.value);
      })
      .catch((err: unknown) => this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, err: errMessage(err) }, 'cluster: could not record a stop'));
  }

  /**
   * A stop decided here did not happen after all (the instance was used again meanwhile, or
   * the provider stop failed): the record goes back to ready at `endpoint` (or to stopped
   * without one), fenced by the stop lease, and the lease is given up.
   */
  cancelStop(ref: InstanceRef, endpoint: string | undefined): void {
    const id = idOf(ref);
    const lease = this.#stopLeases.get(id);
    if (lease === undefined) return;
    this.#stopLeases.delete(id);
    clearInterval(lease.renew);
    const fields = endpoint === undefined ? { state: 'stopped' as const } : { state: 'ready' as const, endpoint };
    this.#write(id, lease.token, fields, true)
      .then(() => this.#release('stop', id, lease.value))
      .catch((err: unknown) => this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, err: errMessage(err) }, 'cluster: could not undo a stop decision; its lease expires on its own'));
  }

  /** Writes this replica's activity per ready instance (one pipeline). Errors are logged. */
  async flushActivity(): Promise<void> {
    if (this.#local === undefined || this.#flushing || this.#closed || this.#redis.status !== 'ready') return;
    this.#flushing = true;
    try {
      const ttlMs = Math.max(10_000, this.#freshForMs() * 4);
      const now = this.#now();
      const keys: string[] = [];
      const values: string[] = [];
      for (const i of this.#local.readyInstances()) {
        keys.push(this.#key(`c:act:${idOf(i.ref)}`));
        // A duration on this replica's clock; Redis adds its own time stamp (FLUSH).
        values.push(`{"i":${Math.max(0, Math.round(now - i.lastActivityAt))},"c":${Math.max(0, Math.round(i.activeConnections))}`);
      }
      if (keys.length > 0) await this.#redis.eval(FLUSH, keys.length, ...keys, this.replicaId, String(ttlMs), ...values);
      else this.#nothingToFlush = true;
    } catch (err) {
      this.#log.debug({ err: errMessage(err) }, 'cluster: activity flush failed');
    } finally {
      this.#flushing = false;
    }
  }

  async readRecord(ref: InstanceRef): Promise<ClusterRecord | undefined> {
    const text = await this.#redis.get(this.#key(`c:rec:${idOf(ref)}`));
    return text === null ? undefined : decodeClusterRecord(text);
  }

  /** The record with Redis's time and whether a stop lease is held, in one round trip. */
  async #read(id: string): Promise<{ rec: ClusterRecord | undefined; nowMs: number; stopLeaseHeld: boolean }> {
    const [text, nowMs, held] = await this.#redis.eval(READ, 2, this.#key(`c:rec:${id}`), this.#key(`c:lease:stop:${id}`)) as [string | null, number, number];
    return { rec: typeof text === 'string' ? decodeClusterRecord(text) : undefined, nowMs: Number(nowMs), stopLeaseHeld: held === 1 };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    this.#wakeAll();
    const held = [...this.#held];
    this.#held.clear();
    for (const [, h] of held) clearInterval(h.renew);
    for (const s of this.#stopLeases.values()) clearInterval(s.renew);
    this.#stopLeases.clear();
    this.#knownTokens.clear();
    await Promise.allSettled(held.map(([value, h]) => this.#release('start', h.id, value)));
    this.#redis.disconnect();
    this.#sub.disconnect();
  }

  // -- internals ------------------------------------------------------------------------

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  #freshForMs(): number {
    return this.#opts.activityFlushIntervalMs * 3 + 1_000;
  }

  #key(suffix: string): string {
    return `${this.#prefix}${suffix}`;
  }

  async #acquire(kind: 'start' | 'stop', id: string): Promise<{ token: number; value: string } | undefined> {
    const token = await this.#redis.eval(ACQUIRE, 2, this.#key(`c:lease:${kind}:${id}`), this.#key(`c:fence:${id}`), this.replicaId, String(this.#opts.leaseMs));
    if (typeof token !== 'number') return undefined;
    return { token, value: `${this.replicaId}:${token}` };
  }

  async #release(kind: 'start' | 'stop', id: string, value: string): Promise<void> {
    await this.#redis.eval(RELEASE, 1, this.#key(`c:lease:${kind}:${id}`), value);
  }

  async #write(id: string, token: number | undefined, fields: Partial<ClusterRecord> & { state: ClusterState }, publish = false): Promise<boolean> {
    // `at` is stamped by the script with Redis's clock (WRITE).
    const body = JSON.stringify({ v: CLUSTER_RECORD_VERSION, owner: this.replicaId, ...fields });
    const message = JSON.stringify({ id, state: fields.state });
    const ok = await this.#redis.eval(WRITE, 2, this.#key(`c:rec:${id}`), this.#key(`c:fence:${id}`),
      token === undefined ? '' : String(token), body, publish ? this.#key('c:events') : '', message);
    return ok === 1;
  }

  /** Renews a lease every third of its lifetime until cleared (or lost: then logged). */
  #renewEvery(kind: 'start' | 'stop', id: string, value: string, ref: InstanceRef, token: number): NodeJS.Timeout {
    const leaseKey = this.#key(`c:lease:${kind}:${id}`);
    const renew = setInterval(() => {
      this.#redis.eval(RENEW, 1, leaseKey, value, String(this.#opts.leaseMs)).then((ok) => {
        if (ok !== 1) {
          clearInterval(renew);
          this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, token }, kind === 'start'
            ? 'cluster: start lease lost (another replica may take over the watch)'
            : 'cluster: stop lease lost (a start elsewhere may begin; this stop will not be recorded over it)');
        }
      }, (err: unknown) => this.#log.debug({ err: errMessage(err) }, 'cluster: lease renewal failed; retrying'));
    }, Math.max(10, Math.floor(this.#opts.leaseMs / 3)));
    renew.unref();
    return renew;
  }

  #startLease(ref: InstanceRef, id: string, lease: { token: number; value: string }, takeover: boolean): StartLease {
    const renew = this.#renewEvery('start', id, lease.value, ref, lease.token);
    this.#held.set(lease.value, { id, renew });
    let handle: string | undefined;
    const finish = async (fields: Partial<ClusterRecord> & { state: ClusterState }): Promise<void> => {
      clearInterval(renew);
      if (!this.#held.delete(lease.value)) return;
      try {
        const written = await this.#write(id, lease.token, { handle, ...fields }, true);
        if (!written) this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, token: lease.token }, 'cluster: a newer lease holder owns the record; not overwritten');
        await this.#release('start', id, lease.value);
      } catch (err) {
        // The lease expires on its own; waiting replicas then take over and find it running.
        this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, state: fields.state, err: errMessage(err) }, 'cluster: could not publish the outcome of a start');
      }
    };
    return {
      token: lease.token,
      takeover,
      started: (h) => {
        handle = h;
        if (h !== undefined) this.#write(id, lease.token, { state: 'starting', handle: h }).catch(() => undefined);
      },
      ready: (endpoint, h) => finish({ state: 'ready', endpoint, handle: h ?? handle }),
      failed: (reason) => finish({ state: 'failed', reason }),
      release: async () => {
        clearInterval(renew);
        if (!this.#held.delete(lease.value)) return;
        await this.#release('start', id, lease.value).catch((err: unknown) => {
          this.#log.debug({ err: errMessage(err) }, 'cluster: could not release a start lease; it expires on its own');
        });
      },
    };
  }

  #wait(id: string, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      let set = this.#wakers.get(id);
      if (set === undefined) {
        set = new Set();
        this.#wakers.set(id, set);
      }
      const wakers = set;
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        wakers.delete(done);
        if (wakers.size === 0) this.#wakers.delete(id);
        resolve();
      };
      const timer = setTimeout(done, ms);
      wakers.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  #wakeAll(): void {
    for (const set of [...this.#wakers.values()]) for (const w of [...set]) w();
  }

  #onMessage(message: string): void {
    let m: { id?: unknown; state?: unknown };
    try {
      m = JSON.parse(message) as { id?: unknown; state?: unknown };
    } catch {
      return;
    }
    if (typeof m.id !== 'string') return;
    for (const w of [...(this.#wakers.get(m.id) ?? [])]) w();
    if (m.state === 'stopped') this.#knownTokens.delete(m.id);
    if (m.state === 'stopped' && this.#local !== undefined) {
      const [res, key] = m.id.split('/').map((s) => decodeURIComponent(s));
      if (res !== undefined && key !== undefined) this.#local.stoppedElsewhere(res, key);
    }
  }
}

/** The lease of a local start while Redis is away (fallbackToLocal): nothing to publish. */
const localLease: StartLease = {
  token: 0, takeover: false, started: () => undefined, ready: async () => undefined, failed: async () => undefined, release: async () => undefined,
};

export function idOf(ref: { readonly resourceId: string; readonly instanceKey: string }): string {
  return `${encodeURIComponent(ref.resourceId)}/${encodeURIComponent(ref.instanceKey)}`;
}

const states = new Set<string>(['starting', 'ready', 'failed', 'stopping', 'stopped']);

export function decodeClusterRecord(text: string): ClusterRecord | undefined {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  // A record of another format version is not guessed at: treated as absent.
  if (o.v !== CLUSTER_RECORD_VERSION || typeof o.state !== 'string' || !states.has(o.state)) return undefined;
  return {
    v: CLUSTER_RECORD_VERSION, state: o.state as ClusterState, token: Number(o.token), owner: String(o.owner), at: Number(o.at),
    endpoint: typeof o.endpoint === 'string' ? o.endpoint : undefined,
    handle: typeof o.handle === 'string' ? o.handle : undefined,
    reason: typeof o.reason === 'string' ? o.reason : undefined,
  };
}

/** An activity field: idle for `i` ms and `c` open connections, as of Redis time `r`. */
function parseActivity(text: string): { i: number; c: number; r: number } | undefined {
  try {
    const o = JSON.parse(text) as { i?: unknown; c?: unknown; r?: unknown };
    if (typeof o.i === 'number' && typeof o.c === 'number' && typeof o.r === 'number') return { i: o.i, c: o.c, r: o.r };
  } catch {
    // ignored: a malformed field counts as nothing
  }
  return undefined;
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
