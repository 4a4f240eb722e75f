/**
 * The `atmosphere` provider: starts, inspects and stops VMs through the 2012 "Atmosphere"
 * cloud API of the original proof of concept (seed/ORIGINAL.md), and uses the additions of the
 * embedded mock cloud (`/vms`, stop, Location) when the cloud has them. Reference:
 * docs/providers/atmosphere.md.
 *
 * Instance model (the original's): a VM remembers the groups it was started for, and serves
 * any caller holding all of them. So an instance for groups G may *borrow* a VM started for a
 * subset of G. A VM is *owned* by the instance that spanned it (or whose groups equal the VM's
 * groups); only the owner switches it off, so stopping a borrower never cuts another
 * instance's VM.
 *
 * Per-user instances (`sharing: user`, the ref carries a `user`) never borrow: the cloud
 * records groups, not users, so a VM whose groups fit says nothing about whose it is, and
 * alice must never be handed carol's VM because carol's groups are a subset of hers. Such an
 * instance uses only the VM it spanned itself (its handle); the original 2012 API, which has
 * no VM ids, cannot tell them apart, so user instances need the extended API.
 */
import { Pool } from 'undici';
import type { Dispatcher } from 'undici';
import { ProviderError } from '../../core/errors.ts';
import type {
  InspectResult,
  InstanceRef,
  ListedInstance,
  Logger,
  Provider,
  ProviderState,
  StartResult,
} from '../../core/ports.ts';
import { parseRetryAfter } from '../retry-after.ts';

export interface AtmosphereProviderOptions {
  /** Cloud API base URL, e.g. `http://127.0.0.1:5000` (a path prefix is kept). */
  baseUrl: string;
  /** Bound on each cloud API call, body included. */
  requestTimeoutMs: number;
  /** Maps a resource id to the cloud's atomic-service id. Default: identity. */
  serviceId?: ((resourceId: string) => string) | undefined;
  /**
   * The reverse of `serviceId`, for `list()`: the resource id of an atomic service, or
   * undefined when the service is none of ours (its VMs are then not listed). Default: identity.
   */
  resourceIdOf?: ((serviceId: string) => string | undefined) | undefined;
  /**
   * Which API the cloud speaks. `auto` (default) asks `GET /vms` once: a JSON array means the
   * extended API (status, stop, list), 404/405 the original 2012 one.
   */
  api?: 'auto' | 'original' | 'extended' | undefined;
  /**
   * How long after a span an instance the cloud does not show yet counts as `starting`, not
   * `stopped`. The original mock registered a VM only after its 202, so an immediate get_vm
   * could miss it. Default 10 000 ms.
   */
  spanGraceMs?: number | undefined;
  /** Most connections to the cloud API. Default 8. */
  connections?: number | undefined;
  logger?: Logger | undefined;
}

/** The most bytes read from one cloud answer: a cloud API answer is small; more is nonsense. */
const MAX_ANSWER_BYTES = 1024 * 1024;

type VmState = 'booting' | 'running' | 'failed' | 'stopped';

interface VmStatus {
  readonly id: string;
  readonly asId: string;
  readonly groups: readonly string[];
  readonly state: VmState;
  readonly url?: string | undefined;
  readonly reason?: string | undefined;
}

interface Answer {
  readonly status: number;
  readonly headers: Dispatcher.ResponseData['headers'];
  readonly text: string;
  readonly method: string;
  readonly path: string;
}

/** What this provider did for an instance key, in this process. */
interface InstanceRecord {
  handle?: string | undefined;
  /** When this provider spanned the VM (ms since epoch), for the grace window. */
  spannedAt?: number | undefined;
  /** Whether this instance may switch the VM off (see the module comment). */
  owned: boolean;
}

const USER_NEEDS_EXTENDED = 'sharing: user needs the extended Atmosphere API (VM ids): the original API finds VMs by groups only and could hand one user another user\'s VM';

const noopLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Creates the provider. It opens no connection until the first call. */
export function createAtmosphereProvider(options: AtmosphereProviderOptions): Provider {
  return new AtmosphereProvider(options);
}

/**
 * Asks a cloud which API it speaks (`GET /vms` once), without a provider to keep: the
 * start-up and check-config warnings about resources that cannot work with it.
 */
export async function detectAtmosphereApi(baseUrl: string, requestTimeoutMs: number, signal: AbortSignal): Promise<'original' | 'extended'> {
  const p = new AtmosphereProvider({ baseUrl, requestTimeoutMs, connections: 1 });
  try {
    return await p.detectApi(signal);
  } finally {
    await p.close();
  }
}

/**
 * The instance key the cloud's own data implies for a VM: its sorted groups, or `*` for a VM
 * started without groups (the core's key of a shared instance).
 */
export function instanceKeyOfGroups(groups: readonly string[]): string {
  const key = [...new Set(groups)].sort().join(',');
  return key === '' ? '*' : key;
}

class AtmosphereProvider implements Provider {
  readonly kind = 'atmosphere';
  readonly #pool: Pool;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #serviceId: (resourceId: string) => string;
  readonly #resourceIdOf: (serviceId: string) => string | undefined;
  readonly #graceMs: number;
  readonly #logger: Logger;
  #api: 'original' | 'extended' | undefined;
  readonly #records = new Map<string, InstanceRecord>();
  /**
   * Instances the core stopped, whose VM may live on (borrowed, or a cloud without stop):
   * `inspect` says stopped for them until the next `start`, so the core's view stays coherent.
   */
  readonly #released = new Set<string>();
  readonly #starting = new Map<string, { promise: Promise<StartResult>; signal: AbortSignal }>();
  #stopUnsupportedLogged = false;
  #badListLogged = false;
  #closing: Promise<void> | undefined;

  constructor(options: AtmosphereProviderOptions) {
    let base: URL;
    try {
      base = new URL(options.baseUrl);
    } catch {
      throw new TypeError(`atmosphere provider: baseUrl is not a URL: ${options.baseUrl}`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new TypeError('atmosphere provider: baseUrl must be http: or https:');
    }
    if (!(options.requestTimeoutMs > 0)) throw new RangeError('atmosphere provider: requestTimeoutMs must be > 0');
    this.#pool = new Pool(base.origin, { connections: options.connections ?? 8 });
    this.#prefix = base.pathname.replace(/\/+$/, '');
    this.#timeoutMs = options.requestTimeoutMs;
    this.#serviceId = options.serviceId ?? ((id) => id);
    this.#resourceIdOf = options.resourceIdOf ?? ((id) => id);
    this.#graceMs = options.spanGraceMs ?? 10_000;
    this.#logger = options.logger ?? noopLogger;
    this.#api = options.api === 'auto' ? undefined : options.api;
  }

  // ------------------------------------------------------------------ Provider

  start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    if (signal.aborted) return Promise.reject(abortReason(signal));
    const key = keyOf(ref);
    // Concurrent starts of one key join: two get_vm → 404 → span_as would make two VMs.
    const joined = this.#starting.get(key);
    if (joined !== undefined) {
      return raceAbort(joined.promise, signal).catch((err: unknown) => {
        // The flight ran on its first caller's signal: if that caller went away, we did not.
        if (joined.signal.aborted && !signal.aborted) return this.start(ref, signal);
        throw err;
      });
    }
    const promise = this.#start(ref, signal).finally(() => this.#starting.delete(key));
    this.#starting.set(key, { promise, signal });
    return promise;
  }

  async inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    throwIfAborted(signal);
    const key = keyOf(ref);
    if (this.#released.has(key)) return { state: 'stopped' };
    const record = this.#records.get(key);
    if ((await this.#apiKind(signal)) === 'extended') {
      const handle = ref.handle ?? record?.handle;
      if (handle !== undefined) {
        const vm = await this.#vmStatus(handle, signal);
        if (vm !== undefined) return { ...toInspect(vm), handle };
        return this.#withinGrace(record) ? { state: 'starting', handle } : { state: 'stopped' };
      }
      // A user's VM is known by its handle only (see the module comment).
      const vm = ref.user === undefined ? pick(ref, this.#serviceId(ref.resourceId), await this.#listVms(signal, this.#serviceId(ref.resourceId))) : undefined;
      if (vm !== undefined) return { ...toInspect(vm), handle: vm.id };
      return this.#withinGrace(record) ? { state: 'starting' } : { state: 'stopped' };
    }
    if (ref.user !== undefined) return { state: 'failed', reason: USER_NEEDS_EXTENDED };
    const entries = await this.#getVm(ref, signal);
    if (entries === undefined) return this.#withinGrace(record) ? { state: 'starting' } : { state: 'stopped' };
    // Any URL means a booted VM serves these groups; the original proxy took the first one.
    const url = entries.find((e) => e !== 'booting');
    return url === undefined ? { state: 'starting' } : { state: 'running', endpoint: url };
  }

  async stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    const key = keyOf(ref);
    const record = this.#records.get(key);
    if ((await this.#apiKind(signal)) === 'extended') {
      let handle = ref.handle ?? record?.handle;
      let owned = record?.owned;
      if (ref.user !== undefined) {
        // Only ever the VM this user's instance spanned: never one found by its groups.
        owned = handle !== undefined;
      } else if (handle === undefined || owned === undefined) {
        // Unknown to this process (e.g. after a restart): the owner is the instance whose
        // groups are exactly the VM's.
        const vm = handle !== undefined
          ? await this.#vmStatus(handle, signal)
          : pickOwn(ref, this.#serviceId(ref.resourceId), await this.#listVms(signal, this.#serviceId(ref.resourceId)));
        handle = vm?.id;
        owned = vm !== undefined && instanceKeyOfGroups(vm.groups) === instanceKeyOfGroups(ref.groups);
      }
      if (handle !== undefined && owned) {
        await this.#deleteVm(handle, signal);
      } else if (handle !== undefined) {
        this.#logger.info({ resourceId: ref.resourceId, instanceKey: ref.instanceKey, vm: handle }, 'atmosphere: leaving a borrowed VM running for its owner');
      }
    } else {
      this.#logStopUnsupported(ref);
    }
    this.#records.delete(key);
    this.#released.add(key);
  }

  async list(signal: AbortSignal): Promise<ListedInstance[]> {
    throwIfAborted(signal);
    if ((await this.#apiKind(signal)) !== 'extended') return [];
    const listed: ListedInstance[] = [];
    for (const vm of await this.#listVms(signal)) {
      if (vm.state !== 'booting' && vm.state !== 'running') continue;
      const resourceId = this.#resourceIdOf(vm.asId);
      if (resourceId === undefined) continue;
      listed.push({ resourceId, instanceKey: instanceKeyOfGroups(vm.groups), ...toInspect(vm), handle: vm.id });
    }
    return listed;
  }

  /** Closes the connection pool (idempotent). VMs are left as they are. */
  close(): Promise<void> {
    this.#closing ??= this.#pool.close();
    return this.#closing;
  }

  // ------------------------------------------------------------------ start

  async #start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    const key = keyOf(ref);
    const record = this.#records.get(key);
    const serviceId = this.#serviceId(ref.resourceId);
    this.#released.delete(key);

    if ((await this.#apiKind(signal)) === 'extended') {
      const handle = ref.handle ?? record?.handle;
      if (handle !== undefined) {
        const vm = await this.#vmStatus(handle, signal);
        if (vm !== undefined && isLive(vm)) return { handle };
        if (vm === undefined && this.#withinGrace(record)) return { handle };
      }
      const existing = ref.user === undefined ? pick(ref, serviceId, await this.#listVms(signal, serviceId)) : undefined;
      if (existing !== undefined) {
        this.#records.set(key, { handle: existing.id, owned: instanceKeyOfGroups(existing.groups) === instanceKeyOfGroups(ref.groups) });
        return { handle: existing.id };
      }
    } else {
      if (ref.user !== undefined) throw new ProviderError(`atmosphere: ${USER_NEEDS_EXTENDED}`, { retryable: false, data: { provider: 'atmosphere' } });
      // The original API registers a VM late: trust our own recent span over a 404.
      if (this.#withinGrace(record)) return {};
      if ((await this.#getVm(ref, signal)) !== undefined) {
        this.#records.set(key, { owned: false });
        return {};
      }
    }
    return this.#span(ref, serviceId, signal);
  }

  async #span(ref: InstanceRef, serviceId: string, signal: AbortSignal): Promise<StartResult> {
    const answer = await this.#call('POST', `/span_as/${segment(serviceId)}/for_user_with_groups/${groupsSegment(ref.groups)}`, signal);
    if (answer.status < 200 || answer.status > 299) throw statusError(answer, 'span_as');
    const handle = handleFromLocation(answer.headers.location);
    // A Location on span_as is the extended API's mark (the 2012 mock sent none).
    if (handle !== undefined) this.#api ??= 'extended';
    this.#records.set(keyOf(ref), { handle, spannedAt: Date.now(), owned: true });
    this.#logger.info({ resourceId: ref.resourceId, instanceKey: ref.instanceKey, serviceId, vm: handle }, 'atmosphere: spanned a VM');
    return { handle };
  }

  #withinGrace(record: InstanceRecord | undefined): boolean {
    return record?.spannedAt !== undefined && Date.now() - record.spannedAt < this.#graceMs;
  }

  #logStopUnsupported(ref: InstanceRef): void {
    const fields = { resourceId: ref.resourceId, instanceKey: ref.instanceKey };
    if (this.#stopUnsupportedLogged) {
      this.#logger.debug(fields, 'atmosphere: stop unsupported by this cloud, VM left running');
      return;
    }
    this.#stopUnsupportedLogged = true;
    this.#logger.warn(fields, 'atmosphere: this cloud has no stop (original 2012 API); VMs are left running');
  }

  /** Which API the cloud speaks (asked once, then remembered): start-up checks use it. */
  detectApi(signal: AbortSignal): Promise<'original' | 'extended'> {
    return this.#apiKind(signal);
  }

  // ------------------------------------------------------------------ cloud API calls

  async #apiKind(signal: AbortSignal): Promise<'original' | 'extended'> {
    if (this.#api !== undefined) return this.#api;
    const answer = await this.#call('GET', '/vms', signal);
    if (answer.status === 404 || answer.status === 405) {
      this.#api = 'original';
    } else if (answer.status === 200 && Array.isArray(parseJsonOrUndefined(answer.text))) {
      this.#api = 'extended';
    } else if (answer.status === 200) {
      // Some server answers 200 for every path (an HTML catch-all): not the extended API.
      this.#api = 'original';
    } else {
      // 5xx, 429…: say nothing about the API yet; the caller may retry.
      throw statusError(answer, 'the API probe GET /vms');
    }
    this.#logger.info({ api: this.#api }, 'atmosphere: detected the cloud API');
    return this.#api;
  }

  /** The get_vm entries for these groups, or undefined when the cloud answers 404. */
  async #getVm(ref: InstanceRef, signal: AbortSignal): Promise<string[] | undefined> {
    const path = `/get_vm/${segment(this.#serviceId(ref.resourceId))}/for_user_with_groups/${groupsSegment(ref.groups)}`;
    const answer = await this.#call('GET', path, signal);
    if (answer.status === 404) return undefined;
    if (answer.status !== 200) throw statusError(answer, 'get_vm');
    // The original sent JSON as text/html: parse the body whatever the content type says.
    const value = parseJsonOrUndefined(answer.text);
    if (!Array.isArray(value) || value.length === 0) throw malformed(answer, 'get_vm did not answer a non-empty JSON array');
    for (const entry of value) {
      if (entry === 'booting') continue;
      if (typeof entry !== 'string' || !isHttpUrl(entry)) throw malformed(answer, 'get_vm answered an entry that is neither "booting" nor an http(s) URL');
    }
    return value as string[];
  }

  /** A VM's status, or undefined when the cloud does not know it (404). */
  async #vmStatus(handle: string, signal: AbortSignal): Promise<VmStatus | undefined> {
    const answer = await this.#call('GET', `/vms/${segment(handle)}`, signal);
    if (answer.status === 404) return undefined;
    if (answer.status !== 200) throw statusError(answer, 'GET /vms/<id>');
    return parseVm(parseJsonOrUndefined(answer.text), answer);
  }

  /**
   * The cloud's VMs. With `serviceId`, for one resource: an entry of another service that does
   * not parse is left out (one VM in a state nobody knows must not fail every resource's
   * starts), one that may be this service's is an error. Without it (re-adoption), an entry
   * that does not parse is left out and logged.
   */
  async #listVms(signal: AbortSignal, serviceId?: string): Promise<VmStatus[]> {
    const answer = await this.#call('GET', '/vms', signal);
    if (answer.status !== 200) throw statusError(answer, 'GET /vms');
    const value = parseJsonOrUndefined(answer.text);
    if (!Array.isArray(value)) throw malformed(answer, 'GET /vms did not answer a JSON array');
    const vms: VmStatus[] = [];
    let skipped = 0;
    let firstProblem = '';
    for (const v of value) {
      try {
        vms.push(parseVm(v, answer));
      } catch (err) {
        const asId = typeof v === 'object' && v !== null ? (v as { asId?: unknown }).asId : undefined;
        const ours = serviceId === undefined ? false : typeof asId !== 'string' || asId === serviceId;
        if (ours) throw err;
        skipped++;
        firstProblem ||= (err as Error).message;
      }
    }
    if (skipped > 0) {
      // Once at warn: the list is read on every poll of every start.
      const fields = { skipped, serviceId, problem: firstProblem };
      if (this.#badListLogged) this.#logger.debug(fields, 'atmosphere: GET /vms listed VMs that do not parse; ignored');
      else this.#logger.warn(fields, 'atmosphere: GET /vms listed VMs that do not parse; ignored (logged once)');
      this.#badListLogged = true;
    }
    return vms;
  }

  async #deleteVm(handle: string, signal: AbortSignal): Promise<void> {
    const answer = await this.#call('DELETE', `/vms/${segment(handle)}`, signal);
    if (answer.status >= 200 && answer.status <= 299) return;
    if (answer.status === 404 && parseJsonOrUndefined(answer.text) !== undefined) return; // already gone
    if (answer.status === 404 || answer.status === 405 || answer.status === 501) {
      this.#logger.warn({ vm: handle, status: answer.status }, 'atmosphere: the cloud does not support stopping VMs; VM left running');
      return;
    }
    throw statusError(answer, 'DELETE /vms/<id>');
  }

  /**
   * One cloud API call, bounded by `requestTimeoutMs` (body included) and by `signal`.
   * Rejects with the signal's reason when the caller aborts, a retryable ProviderError on
   * timeouts and connection failures; statuses are left to the caller.
   */
  async #call(method: 'GET' | 'POST' | 'DELETE', path: string, signal: AbortSignal): Promise<Answer> {
    throwIfAborted(signal);
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.#timeoutMs);
    const onAbort = (): void => controller.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    const fullPath = this.#prefix + path;
    const data = { provider: 'atmosphere', method, path };
    try {
      const res = await this.#pool.request({ method, path: fullPath, signal: controller.signal, headers: { accept: 'application/json, */*;q=0.5' } });
      const chunks: Buffer[] = [];
      let bytes = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > MAX_ANSWER_BYTES) {
          res.body.destroy();
          throw new ProviderError(`atmosphere: ${method} ${path} answered more than ${MAX_ANSWER_BYTES} bytes`, { retryable: false, data });
        }
        chunks.push(chunk);
      }
      return { status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString('utf8'), method, path };
    } catch (err) {
      if (signal.aborted) throw abortReason(signal);
      if (err instanceof ProviderError) throw err;
      if (timedOut) {
        throw new ProviderError(`atmosphere: ${method} ${path} timed out after ${this.#timeoutMs} ms`, { retryable: true, data, cause: err });
      }
      const code = (err as { code?: unknown }).code;
      throw new ProviderError(`atmosphere: ${method} ${path} failed: ${typeof code === 'string' ? code : String(err)}`, { retryable: true, data, cause: err });
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
  }
}

// -------------------------------------------------------------------- helpers

function keyOf(ref: InstanceRef): string {
  return `${ref.resourceId}\u0000${ref.instanceKey}`;
}

function isLive(vm: VmStatus): boolean {
  return vm.state === 'booting' || vm.state === 'running';
}

/**
 * The VM an instance uses among the cloud's: one of its service whose groups are a subset of
 * the instance's (the original's rule), preferring an exact match, then a running one, then
 * the oldest (lowest id), so that every replica picks the same.
 */
function pick(ref: InstanceRef, serviceId: string, vms: readonly VmStatus[]): VmStatus | undefined {
  const have = new Set(ref.groups);
  const wanted = instanceKeyOfGroups(ref.groups);
  const rank = (vm: VmStatus): number => (instanceKeyOfGroups(vm.groups) === wanted ? 0 : 2) + (vm.state === 'running' ? 0 : 1);
  return vms
    .filter((vm) => vm.asId === serviceId && isLive(vm) && vm.groups.every((g) => have.has(g)))
    .sort((a, b) => rank(a) - rank(b) || compareIds(a.id, b.id))[0];
}

/** The VM this instance owns: same service, exactly its groups. */
function pickOwn(ref: InstanceRef, serviceId: string, vms: readonly VmStatus[]): VmStatus | undefined {
  const wanted = instanceKeyOfGroups(ref.groups);
  return vms
    .filter((vm) => vm.asId === serviceId && isLive(vm) && instanceKeyOfGroups(vm.groups) === wanted)
    .sort((a, b) => compareIds(a.id, b.id))[0];
}

function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function toInspect(vm: VmStatus): InspectResult {
  const states: Record<VmState, ProviderState> = { booting: 'starting', running: 'running', failed: 'failed', stopped: 'stopped' };
  const state = states[vm.state];
  if (state === 'running') return { state, endpoint: vm.url };
  if (state === 'failed') return { state, reason: vm.reason ?? 'the cloud reports the VM failed' };
  return { state };
}

function parseVm(value: unknown, answer: Answer): VmStatus {
  if (typeof value !== 'object' || value === null) throw malformed(answer, 'a VM status is not a JSON object');
  const v = value as Record<string, unknown>;
  const states: readonly unknown[] = ['booting', 'running', 'failed', 'stopped'];
  if (typeof v.id !== 'string' || typeof v.asId !== 'string') throw malformed(answer, 'a VM status lacks a string id or asId');
  if (!Array.isArray(v.groups) || !v.groups.every((g) => typeof g === 'string')) throw malformed(answer, 'a VM status lacks a string array of groups');
  if (!states.includes(v.state)) throw malformed(answer, `a VM status has an unknown state ${JSON.stringify(v.state)}`);
  const state = v.state as VmState;
  if (state === 'running' && (typeof v.url !== 'string' || !isHttpUrl(v.url))) throw malformed(answer, 'a running VM has no http(s) url');
  return {
    id: v.id,
    asId: v.asId,
    groups: v.groups,
    state,
    url: typeof v.url === 'string' ? v.url : undefined,
    reason: typeof v.reason === 'string' ? v.reason : undefined,
  };
}

function parseJsonOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

/** `/vms/<id>` from a Location header (relative or absolute), else undefined. */
function handleFromLocation(location: string | string[] | undefined): string | undefined {
  if (typeof location !== 'string') return undefined;
  try {
    const match = /\/vms\/([^/]+)$/.exec(new URL(location, 'http://x').pathname);
    return match?.[1] === undefined ? undefined : decodeURIComponent(match[1]);
  } catch {
    return undefined;
  }
}

function segment(s: string): string {
  return encodeURIComponent(s);
}

/** The comma-joined group list; a comma inside a group name cannot be said in this API. */
function groupsSegment(groups: readonly string[]): string {
  for (const g of groups) {
    if (g.includes(',')) throw new ProviderError(`atmosphere: group name ${JSON.stringify(g)} holds a comma, which the cloud API cannot express`, { retryable: false, data: { provider: 'atmosphere' } });
  }
  return groups.map(encodeURIComponent).join(',');
}

function statusError(answer: Answer, what: string): ProviderError {
  const { status } = answer;
  // Timeouts, 5xx and 429 may pass; anything else will answer the same again.
  const retryable = status >= 500 || status === 429;
  const retryAfter = parseRetryAfter(answer.headers['retry-after']);
  return new ProviderError(`atmosphere: ${what} answered HTTP ${status}`, {
    retryable,
    data: { provider: 'atmosphere', method: answer.method, path: answer.path, status },
    ...(retryAfter === undefined ? {} : { retryAfterS: retryAfter }),
  });
}

function malformed(answer: Answer, message: string): ProviderError {
  return new ProviderError(`atmosphere: malformed answer: ${message}`, {
    retryable: false,
    data: { provider: 'atmosphere', method: answer.method, path: answer.path, status: answer.status, body: answer.text.slice(0, 200) },
  });
}

/** The caller's abort reason (an AbortError unless the caller gave its own Error). */
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new DOMException('The operation was aborted', 'AbortError');
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortReason(signal);
}

/** Settles with `promise`, or rejects as soon as `signal` aborts (the promise runs on). */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
