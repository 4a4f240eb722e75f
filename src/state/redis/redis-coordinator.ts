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
 * - `c:act:<id>`: hash, one field per replica: `{a: lastActivityAt, c: openConnections, t}`,
 *   flushed on a timer with an expiry; a replica that stops flushing stops counting.
 * - channel `c:events`: `{id, state}` after each record write that others wait for.
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
/** KEYS: record, fence. ARGV: token ('' = take a new one), record JSON without token, channel, message. */
const WRITE = `
local token = tonumber(ARGV[1])
if token == nil then token = redis.call('INCR', KEYS[2]) end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, o = pcall(cjson.decode, cur)
  if ok and type(o) == 'table' and tonumber(o.token) ~= nil and tonumber(o.token) > token then return 0 end
end
local rec = cjson.decode(ARGV[2])
rec.token = token
redis.call('SET', KEYS[1], cjson.encode(rec))
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1`;

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
  #local: LocalControlPlane | undefined;
  #flushTimer: NodeJS.Timeout | undefined;
  #flushing = false;
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

  /** Connects the local control plane; starts flushing activity. */
  attach(local: LocalControlPlane): void {
    this.#local = local;
    const every = Math.max(10, this.#opts.activityFlushIntervalMs);
    this.#flushTimer = setInterval(() => void this.flushActivity(), every);
    this.#flushTimer.unref();
  }

  async claimStart(ref: InstanceRef, signal: AbortSignal, options: ClaimOptions = {}): Promise<StartClaim> {
    const { notEndpoint, failureCooldownMs = 0 } = options;
    const id = idOf(ref);
    const since = Date.now();
    for (;;) {
      if (signal.aborted) throw asError(signal.reason);
      if (this.#closed) throw new SmartProxyError('SP_SHUTTING_DOWN');
      try {
        if (this.#down) throw new Error(`redis connection is ${this.#redis.status}`);
        const rec = await this.readRecord(ref);
        if (rec?.state === 'ready' && rec.endpoint !== undefined && rec.endpoint !== notEndpoint) {
          return { kind: 'ready', endpoint: rec.endpoint, handle: rec.handle };
        }
        if (rec?.state === 'failed' && rec.at > since) {
          throw new SmartProxyError('SP_START_FAILED', `the start on another replica failed: ${rec.reason ?? 'no reason given'}`, { data: { resource: ref.resourceId } });
        }
        const coolingMs = rec?.state === 'failed' ? rec.at + failureCooldownMs - Date.now() : 0;
        if (coolingMs > 0) {
          throw new SmartProxyError('SP_RESOURCE_FAILED', undefined, {
            data: { resource: ref.resourceId, cause: rec?.reason }, retryAfterS: Math.ceil(coolingMs / 1000),
          });
        }
        // A stop in progress elsewhere: wait for it to end rather than start under it.
        const stopping = rec?.state === 'stopping' && Date.now() - rec.at < this.#opts.leaseMs * 3;
        if (!stopping) {
          const lease = await this.#acquire('start', id);
          if (lease !== undefined) {
            const takeover = rec?.state === 'starting';
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
    if (await this.#inUse(id, local())) {
      await this.#release('stop', id, lease.value);
      return 'keep';
    }
    // Activity reaches Redis once per flush: wait two flushes and look again, so a connection
    // opened on another replica just before this decision is seen.
    const settleMs = Math.min(this.#opts.activityFlushIntervalMs * 2 + 20, Math.floor(this.#opts.leaseMs / 2));
    await new Promise((r) => setTimeout(r, settleMs).unref());
    if (this.#closed || await this.#inUse(id, local())) {
      await this.#release('stop', id, lease.value).catch(() => undefined);
      return 'keep';
    }
    await this.#write(id, lease.token, { state: 'stopping' });
    return 'stop';
  }

  /** Any open connection on a live replica, or activity within idleStopMs anywhere? */
  async #inUse(id: string, local: LocalActivity): Promise<boolean> {
    const now = Date.now();
    let lastActivityAt = local.lastActivityAt;
    let connections = local.activeConnections;
    const fresh = now - this.#freshForMs();
    for (const [replica, text] of Object.entries(await this.#redis.hgetall(this.#key(`c:act:${id}`)))) {
      if (replica === this.replicaId) continue;
      const a = parseActivity(text);
      if (a === undefined) continue;
      lastActivityAt = Math.max(lastActivityAt, a.a);
      // A replica that stopped flushing (dead) holds no connection any more.
      if (a.t >= fresh) connections += a.c;
    }
    return connections > 0 || now - lastActivityAt < local.idleStopMs;
  }

  stopped(ref: InstanceRef): void {
    const id = idOf(ref);
    this.#write(id, undefined, { state: 'stopped' }, true)
      .then(() => this.#redis.del(this.#key(`c:act:${id}`)))
      .catch((err: unknown) => this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, err: errMessage(err) }, 'cluster: could not record a stop'));
  }

  /** Writes this replica's activity per ready instance (one pipeline). Errors are logged. */
  async flushActivity(): Promise<void> {
    if (this.#local === undefined || this.#flushing || this.#closed || this.#redis.status !== 'ready') return;
    this.#flushing = true;
    try {
      const ttlMs = Math.max(10_000, this.#freshForMs() * 4);
      const p = this.#redis.pipeline();
      const now = Date.now();
      let n = 0;
      for (const i of this.#local.readyInstances()) {
        const key = this.#key(`c:act:${idOf(i.ref)}`);
        p.hset(key, this.replicaId, JSON.stringify({ a: i.lastActivityAt, c: i.activeConnections, t: now }));
        p.pexpire(key, ttlMs);
        n++;
      }
      if (n > 0) await p.exec();
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

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#flushTimer);
    this.#wakeAll();
    const held = [...this.#held];
    this.#held.clear();
    for (const [, h] of held) clearInterval(h.renew);
    await Promise.allSettled(held.map(([value, h]) => this.#release('start', h.id, value)));
    this.#redis.disconnect();
    this.#sub.disconnect();
  }

  // -- internals ------------------------------------------------------------------------

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
    const body = JSON.stringify({ v: CLUSTER_RECORD_VERSION, owner: this.replicaId, at: Date.now(), ...fields });
    const message = JSON.stringify({ id, state: fields.state });
    const ok = await this.#redis.eval(WRITE, 2, this.#key(`c:rec:${id}`), this.#key(`c:fence:${id}`),
      token === undefined ? '' : String(token), body, publish ? this.#key('c:events') : '', message);
    return ok === 1;
  }

  #startLease(ref: InstanceRef, id: string, lease: { token: number; value: string }, takeover: boolean): StartLease {
    const leaseKey = this.#key(`c:lease:start:${id}`);
    const renew = setInterval(() => {
      this.#redis.eval(RENEW, 1, leaseKey, lease.value, String(this.#opts.leaseMs)).then((ok) => {
        if (ok !== 1) {
          clearInterval(renew);
          this.#log.warn({ resource: ref.resourceId, instance: ref.instanceKey, token: lease.token }, 'cluster: start lease lost (another replica may take over the watch)');
        }
      }, (err: unknown) => this.#log.debug({ err: errMessage(err) }, 'cluster: lease renewal failed; retrying'));
    }, Math.max(10, Math.floor(this.#opts.leaseMs / 3)));
    renew.unref();
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

function parseActivity(text: string): { a: number; c: number; t: number } | undefined {
  try {
    const o = JSON.parse(text) as { a?: unknown; c?: unknown; t?: unknown };
    if (typeof o.a === 'number' && typeof o.c === 'number' && typeof o.t === 'number') return { a: o.a, c: o.c, t: o.t };
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
