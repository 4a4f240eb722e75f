/**
 * The embedded stand-in cloud: speaks the 2012 "Atmosphere" mock API of the original proof of
 * concept exactly (seed/ORIGINAL.md), fixes its defects, and adds what a real cloud has (VM
 * status, stop, list, failures) on new routes only. Every VM is a real HTTP server on its own
 * 127.0.0.1 port that starts listening only when its boot completes. Reference: docs/mock-cloud.md.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../core/ports.ts';
import { createPrng } from './prng.ts';
import type { Prng } from './prng.ts';
import { answerClientError, startVmServer } from './vm-server.ts';
import type { VmServer } from './vm-server.ts';

export interface MockCloudOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  bootTimeMinMs: number;
  bootTimeMaxMs: number;
  /** Seed of the PRNG that decides boot times and outcomes: the same seed, the same run. */
  seed?: number | undefined;
  /** 0..1: share of boots that end in `failed` (the VM's server never starts). */
  failureRate: number;
  /** 0..1: share of boots that never finish (the VM stays `booting`). */
  hangRate: number;
  /** Create the original's VMs: as1 → 1 (g1,g2), 2 (g2); as2 → 3 (group3); all running. */
  seedData: boolean;
  /** Most VMs booting or running at once; past it span_as answers 429. Default 256. */
  maxLiveVms?: number | undefined;
}

export type MockVmState = 'booting' | 'running' | 'failed' | 'stopped';

/** A VM as `GET /vms/<id>` shows it (JSON), plus its port for tests. */
export interface MockVmInfo {
  readonly id: string;
  readonly asId: string;
  readonly groups: readonly string[];
  readonly state: MockVmState;
  /** `http://127.0.0.1:<port>`, once running. */
  readonly url?: string | undefined;
  readonly port?: number | undefined;
  /** ISO-8601 timestamps. */
  readonly createdAt: string;
  readonly readyAt?: string | undefined;
  readonly stoppedAt?: string | undefined;
  /** Why the VM failed or stopped. */
  readonly reason?: string | undefined;
  /** Test view only (not in the HTTP API): the boot's drawn fate and duration; seed VMs have none. */
  readonly fate?: BootFate | undefined;
  readonly bootMs?: number | undefined;
}

export type BootFate = 'run' | 'fail' | 'hang';

/** A fault the cloud API injects into its next answers (VM servers are not affected). */
export type ApiFault =
  | { readonly kind: 'status'; readonly status: number; readonly retryAfterS?: number }
  /** The request is held open and never answered (until close()). */
  | { readonly kind: 'hang' }
  /** 200 with this body, whatever the route: a cloud that answers nonsense. */
  | { readonly kind: 'garbage'; readonly body: string };

export interface MockCloud {
  /** `http://<host>:<port>` of the cloud API. */
  readonly url: string;
  readonly port: number;
  /** Stops every VM, closes every server and socket. Idempotent. */
  close(): Promise<void>;
  /** `apiRequests`: every request the cloud API received, faults included (how hard a client pressed). */
  readonly stats: { readonly spans: number; readonly stops: number; readonly apiRequests: number };
  /** All VMs ever created, in id order (stopped and failed ones included). */
  vms(): readonly MockVmInfo[];
  vm(id: string): MockVmInfo | undefined;
  /**
   * Kills a running VM's server (its sockets are destroyed, its port refuses), as a crash
   * would. `report: 'running'` keeps the API saying running (a process dead inside a live VM);
   * the default `'failed'` is what a cloud that notices reports.
   */
  crash(id: string, options?: { report?: 'running' | 'failed' }): Promise<void>;
  /** Stops a VM as `DELETE /vms/<id>` does. Resolves false when the id is unknown. */
  stopVm(id: string, reason?: string): Promise<boolean>;
  /**
   * Resolves with the first VM (present or future) that satisfies `predicate`, so that tests
   * await a state change instead of sleeping. Rejects when `signal` aborts or the cloud closes.
   */
  waitForVm(predicate: (vm: MockVmInfo) => boolean, signal?: AbortSignal): Promise<MockVmInfo>;
  /**
   * Holds every boot that completes from now on at the end of its boot time (still
   * `booting`, port closed) until the returned function is called. Makes "start resolves
   * before the backend is up" deterministic.
   */
  holdBoots(): () => void;
  /** The next `count` cloud-API requests answer with `fault`. */
  failNextApiCalls(count: number, fault: ApiFault): void;
  /**
   * Resolves with `METHOD /target` when the next cloud-API request arrives (before it is
   * answered), so a test can act while a call is provably in flight. Rejects on close().
   */
  nextApiRequest(): Promise<string>;
  /** Changes boot timing and fate for spans from now on (VMs already booting keep theirs). */
  configure(changes: Partial<Pick<MockCloudOptions, 'bootTimeMinMs' | 'bootTimeMaxMs' | 'failureRate' | 'hangRate'>>): void;
}

/** Limits on untrusted input: past them the answer is a clear 4xx, never a crash. */
const MAX_TARGET_LENGTH = 4096;
const MAX_GROUPS = 64;
const MAX_NAME_LENGTH = 128;
// Control characters cannot be part of an id or a group name (they end up in logs and URLs).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

const noopLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Flask's default content type for a string body; the original sent JSON with it. */
const FLASK_TEXT = 'text/html; charset=utf-8';

interface Vm {
  readonly id: string;
  readonly asId: string;
  readonly groups: readonly string[];
  state: MockVmState;
  readonly createdAt: number;
  readyAt?: number;
  stoppedAt?: number;
  reason?: string;
  server?: VmServer;
  timer?: NodeJS.Timeout;
  fate?: BootFate;
  bootMs?: number;
}

class HttpError extends Error {
  readonly status: number;
  /** For a 405: the methods the route allows (RFC 9110 §15.5.6 requires an Allow header). */
  readonly allow: readonly string[] | undefined;
  constructor(status: number, message: string, allow?: readonly string[]) {
    super(message);
    this.status = status;
    this.allow = allow;
  }
}

/**
 * Starts the mock cloud. Resolves once its API accepts connections (and the seed VMs, when
 * asked for, are running).
 */
export async function startMockCloud(options: MockCloudOptions, logger: Logger = noopLogger): Promise<MockCloud> {
  validate(options);
  const cloud = new MockCloudImpl(options, logger);
  await cloud.start();
  return cloud;
}

function validate(o: MockCloudOptions): void {
  const rate = (name: string, v: number): void => {
    if (!(v >= 0 && v <= 1)) throw new RangeError(`mock cloud: ${name} must be within 0..1, got ${v}`);
  };
  rate('failureRate', o.failureRate);
  rate('hangRate', o.hangRate);
  if (o.failureRate + o.hangRate > 1) throw new RangeError('mock cloud: failureRate + hangRate must not exceed 1');
  if (!(o.bootTimeMinMs >= 0 && o.bootTimeMaxMs >= o.bootTimeMinMs)) {
    throw new RangeError('mock cloud: need 0 <= bootTimeMinMs <= bootTimeMaxMs');
  }
}

class MockCloudImpl implements MockCloud {
  #options: MockCloudOptions;
  readonly #logger: Logger;
  readonly #random: Prng;
  readonly #server: Server;
  readonly #vms = new Map<string, Vm>();
  readonly #waiters = new Set<() => void>();
  #arrivals: { resolve: (request: string) => void; reject: (err: Error) => void }[] = [];
  // A counter, not the original's string maximum: after VM 9 come 10, 11, … (ORIGINAL.md).
  #nextId = 1;
  #held: (() => void)[] | undefined;
  #faults: { fault: ApiFault; left: number } | undefined;
  #closing: Promise<void> | undefined;
  #url = '';
  #port = 0;
  readonly stats = { spans: 0, stops: 0, apiRequests: 0 };

  constructor(options: MockCloudOptions, logger: Logger) {
    this.#options = options;
    this.#logger = logger;
    this.#random = createPrng(options.seed);
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      this.#logger.debug({ err }, 'mock cloud: client error');
      answerClientError(err, socket);
    });
  }

  get url(): string {
    return this.#url;
  }

  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#options.port, this.#options.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const address = this.#server.address() as AddressInfo;
    this.#port = address.port;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    this.#url = `http://${host}:${this.#port}`;
    try {
      if (this.#options.seedData) {
        await this.#seed('as1', ['g1', 'g2']);
        await this.#seed('as1', ['g2']);
        await this.#seed('as2', ['group3']);
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#logger.info({ url: this.#url, seedData: this.#options.seedData }, 'mock cloud listening');
  }

  async #seed(asId: string, groups: string[]): Promise<void> {
    const vm = this.#create(asId, groups);
    vm.server = await startVmServer(vm, this.#logger);
    vm.state = 'running';
    vm.readyAt = Date.now();
  }

  // ---------------------------------------------------------------- test hooks

  vms(): readonly MockVmInfo[] {
    return [...this.#vms.values()].map(info);
  }

  vm(id: string): MockVmInfo | undefined {
    const vm = this.#vms.get(id);
    return vm && info(vm);
  }

  async crash(id: string, options: { report?: 'running' | 'failed' } = {}): Promise<void> {
    const vm = this.#vms.get(id);
    if (vm?.server === undefined) throw new Error(`mock cloud: VM ${id} has no running server to crash`);
    const server = vm.server;
    if (options.report !== 'running') {
      vm.server = undefined;
      this.#transition(vm, 'failed', 'crashed');
    }
    await server.close();
  }

  stopVm(id: string, reason = 'stopped by request'): Promise<boolean> {
    const vm = this.#vms.get(id);
    if (vm === undefined) return Promise.resolve(false);
    return this.#stop(vm, reason).then(() => true);
  }

  waitForVm(predicate: (vm: MockVmInfo) => boolean, signal?: AbortSignal): Promise<MockVmInfo> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.#closing !== undefined) {
          done();
          reject(new Error('mock cloud closed'));
          return;
        }
        for (const vm of this.#vms.values()) {
          const i = info(vm);
          if (predicate(i)) {
            done();
            resolve(i);
            return;
          }
        }
      };
      const onAbort = (): void => {
        done();
        reject(signal?.reason as Error);
      };
      const done = (): void => {
        this.#waiters.delete(check);
        signal?.removeEventListener('abort', onAbort);
      };
      if (signal?.aborted) {
        reject(signal.reason as Error);
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(check);
      check();
    });
  }

  holdBoots(): () => void {
    this.#held ??= [];
    return () => {
      const held = this.#held ?? [];
      this.#held = undefined;
      for (const finish of held) finish();
    };
  }

  failNextApiCalls(count: number, fault: ApiFault): void {
    this.#faults = count > 0 ? { fault, left: count } : undefined;
  }

  nextApiRequest(): Promise<string> {
    if (this.#closing) return Promise.reject(new Error('mock cloud closed'));
    return new Promise((resolve, reject) => this.#arrivals.push({ resolve, reject }));
  }

  configure(changes: Partial<Pick<MockCloudOptions, 'bootTimeMinMs' | 'bootTimeMaxMs' | 'failureRate' | 'hangRate'>>): void {
    const next = { ...this.#options, ...changes };
    validate(next);
    this.#options = next;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const check of [...this.#waiters]) check();
      for (const arrival of this.#arrivals.splice(0)) arrival.reject(new Error('mock cloud closed'));
      const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#server.closeAllConnections();
      this.#held = undefined;
      await Promise.all([...this.#vms.values()].map((vm) => this.#stop(vm, 'cloud closed')));
      await serverClosed;
    })();
    return this.#closing;
  }

  // ---------------------------------------------------------------- VM lifecycle

  #create(asId: string, groups: readonly string[]): Vm {
    const vm: Vm = { id: String(this.#nextId++), asId, groups, state: 'booting', createdAt: Date.now() };
    this.#vms.set(vm.id, vm);
    this.#notify();
    return vm;
  }

  /**
   * Registers the VM *before* the caller gets its 202 (the original registered it after, so
   * an immediate get_vm could miss it), then boots it in the background.
   */
  #span(asId: string, groups: readonly string[]): Vm {
    const vm = this.#create(asId, groups);
    this.stats.spans++;
    // Two draws per span, always in this order, so that a seed reproduces the whole run.
    const fate = this.#random();
    const { bootTimeMinMs: min, bootTimeMaxMs: max } = this.#options;
    const bootMs = Math.round(min + this.#random() * (max - min));
    const { failureRate, hangRate } = this.#options;
    const outcome: BootFate = fate < failureRate ? 'fail' : fate < failureRate + hangRate ? 'hang' : 'run';
    vm.fate = outcome;
    vm.bootMs = bootMs;
    this.#logger.debug({ vm: vm.id, asId, groups, bootMs, outcome }, 'mock cloud: spanning VM');
    if (outcome !== 'hang') {
      vm.timer = setTimeout(() => {
        vm.timer = undefined;
        const finish = (): void => void this.#finishBoot(vm, outcome);
        if (this.#held) this.#held.push(finish);
        else finish();
      }, bootMs);
    }
    return vm;
  }

  async #finishBoot(vm: Vm, outcome: 'fail' | 'run'): Promise<void> {
    if (vm.state !== 'booting' || this.#closing) return;
    if (outcome === 'fail') {
      this.#transition(vm, 'failed', 'boot failed (simulated)');
      return;
    }
    let server: VmServer;
    try {
      server = await startVmServer(vm, this.#logger);
    } catch (err) {
      this.#logger.warn({ vm: vm.id, err }, 'mock cloud: VM server did not start');
      this.#transition(vm, 'failed', `server did not start: ${String(err)}`);
      return;
    }
    // Stopped (or the cloud closed) while the server was binding: switch it off again.
    if (vm.state !== 'booting' || this.#closing) {
      await server.close();
      return;
    }
    vm.server = server;
    vm.readyAt = Date.now();
    this.#transition(vm, 'running');
  }

  async #stop(vm: Vm, reason: string): Promise<void> {
    if (vm.timer) clearTimeout(vm.timer);
    vm.timer = undefined;
    const server = vm.server;
    vm.server = undefined;
    if (vm.state !== 'stopped') {
      vm.stoppedAt = Date.now();
      this.#transition(vm, 'stopped', reason);
      this.stats.stops++;
    }
    await server?.close();
  }

  #transition(vm: Vm, state: MockVmState, reason?: string): void {
    vm.state = state;
    vm.reason = reason;
    this.#logger.debug({ vm: vm.id, state, reason }, 'mock cloud: VM state changed');
    this.#notify();
  }

  #notify(): void {
    for (const check of [...this.#waiters]) check();
  }

  #liveCount(): number {
    let n = 0;
    for (const vm of this.#vms.values()) if (vm.state === 'booting' || vm.state === 'running') n++;
    return n;
  }

  // ---------------------------------------------------------------- HTTP

  #handle(req: IncomingMessage, res: ServerResponse): void {
    // The API reads no request body: drain it so that keep-alive connections stay usable.
    req.resume();
    this.stats.apiRequests++;
    for (const arrival of this.#arrivals.splice(0)) arrival.resolve(`${req.method ?? 'GET'} ${req.url ?? ''}`);
    try {
      if (this.#faults !== undefined && this.#injectFault(res)) return;
      this.#route(req, res);
    } catch (err) {
      if (err instanceof HttpError) {
        if (err.allow) res.setHeader('allow', err.allow.join(', '));
        send(res, err.status, 'text/plain; charset=utf-8', `${err.message}\n`);
        return;
      }
      this.#logger.error({ err }, 'mock cloud: request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    }
  }

  #injectFault(res: ServerResponse): boolean {
    const f = this.#faults;
    if (f === undefined) return false;
    if (--f.left <= 0) this.#faults = undefined;
    const fault = f.fault;
    switch (fault.kind) {
      case 'hang':
        return true;
      case 'garbage':
        send(res, 200, FLASK_TEXT, fault.body);
        return true;
      case 'status':
        if (fault.retryAfterS !== undefined) res.setHeader('retry-after', String(fault.retryAfterS));
        send(res, fault.status, 'text/plain; charset=utf-8', `injected fault ${fault.status}\n`);
        return true;
    }
  }

  #route(req: IncomingMessage, res: ServerResponse): void {
    const method = req.method ?? 'GET';
    const segments = parseTarget(req.url ?? '');
    const [head, a, b, c, ...rest] = segments;

    // ---- the original 2012 API, byte for byte where the original defined it
    if ((head === 'get_vm' || head === 'span_as') && b === 'for_user_with_groups' && c !== undefined && rest.length === 0) {
      const asId = checkName(a ?? '', 'atomic service id');
      const groups = parseGroups(c);
      if (head === 'get_vm') {
        allow(method, ['GET', 'HEAD']);
        return this.#getVm(res, asId, groups);
      }
      allow(method, ['POST']);
      return this.#spanAs(res, asId, groups);
    }
    if (head === 'vm' && a !== undefined && segments.length === 2) {
      allow(method, ['GET', 'HEAD']);
      const vm = this.#vms.get(a);
      if (vm?.state !== 'running') return flaskNotFound(res);
      return send(res, 200, FLASK_TEXT, `Hello from ${vm.id} vm`);
    }

    // ---- additions a real cloud has (never reachable through the original routes)
    if (head === 'vms' && segments.length === 1) {
      allow(method, ['GET', 'HEAD']);
      return sendJson(res, 200, [...this.#vms.values()].map(status));
    }
    if (head === 'vms' && a !== undefined && segments.length === 2) {
      allow(method, ['GET', 'HEAD', 'DELETE']);
      const vm = this.#vms.get(a);
      if (vm === undefined) return sendJson(res, 404, { error: 'vm_not_found', id: a });
      if (method === 'DELETE') {
        void this.#stop(vm, 'stopped by request');
        res.writeHead(204).end();
        return;
      }
      return sendJson(res, 200, status(vm));
    }
    if (head === 'vms' && a !== undefined && b === 'stop' && segments.length === 3) {
      allow(method, ['POST']);
      const vm = this.#vms.get(a);
      if (vm === undefined) return sendJson(res, 404, { error: 'vm_not_found', id: a });
      void this.#stop(vm, 'stopped by request');
      return sendJson(res, 200, status(vm));
    }
    flaskNotFound(res);
  }

  #getVm(res: ServerResponse, asId: string, groups: readonly string[]): void {
    const caller = new Set(groups);
    const entries: string[] = [];
    for (const vm of this.#vms.values()) {
      if (vm.asId !== asId) continue;
      // Failed and stopped VMs are not offered: the original knew only booting and running.
      if (vm.state !== 'booting' && vm.state !== 'running') continue;
      // The subset rule: a VM started for groups G serves any caller who holds all of G.
      if (!vm.groups.every((g) => caller.has(g))) continue;
      entries.push(vm.state === 'running' && vm.server ? vm.server.url : 'booting');
    }
    if (entries.length === 0) return flaskNotFound(res);
    // Python's json.dumps separators (", "), as the original's body looked.
    send(res, 200, FLASK_TEXT, `[${entries.map((e) => JSON.stringify(e)).join(', ')}]`);
  }

  #spanAs(res: ServerResponse, asId: string, groups: readonly string[]): void {
    const max = this.#options.maxLiveVms ?? 256;
    if (this.#liveCount() >= max) {
      res.setHeader('retry-after', '1');
      return send(res, 429, 'text/plain; charset=utf-8', `quota exceeded: at most ${max} VMs booting or running\n`);
    }
    const vm = this.#span(asId, groups);
    // Location is an addition: the original 202 carried only the body "booting".
    res.setHeader('location', `/vms/${vm.id}`);
    send(res, 202, FLASK_TEXT, 'booting');
  }
}

/** The HTTP view of a VM (`GET /vms/<id>`): the test-only fields left out. */
function status(vm: Vm): Omit<MockVmInfo, 'fate' | 'bootMs'> {
  const { fate: _fate, bootMs: _bootMs, ...rest } = info(vm);
  return rest;
}

function info(vm: Vm): MockVmInfo {
  const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());
  return {
    id: vm.id,
    asId: vm.asId,
    groups: vm.groups,
    state: vm.state,
    url: vm.state === 'running' ? vm.server?.url : undefined,
    port: vm.state === 'running' ? vm.server?.port : undefined,
    createdAt: new Date(vm.createdAt).toISOString(),
    readyAt: iso(vm.readyAt),
    stoppedAt: iso(vm.stoppedAt),
    reason: vm.reason,
    fate: vm.fate,
    bootMs: vm.bootMs,
  };
}

/** Splits an origin-form target into decoded path segments; anything else is a 4xx. */
function parseTarget(target: string): string[] {
  if (target.length > MAX_TARGET_LENGTH) throw new HttpError(414, `request target longer than ${MAX_TARGET_LENGTH} characters`);
  if (!target.startsWith('/')) throw new HttpError(400, 'request target must be a path (origin-form)');
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  return path
    .slice(1)
    .split('/')
    .map((segment) => {
      try {
        return decodeURIComponent(segment);
      } catch {
        throw new HttpError(400, 'bad percent-encoding in the path');
      }
    });
}

function checkName(name: string, what: string): string {
  if (name === '') throw new HttpError(404, `empty ${what}`);
  if (name.length > MAX_NAME_LENGTH) throw new HttpError(400, `${what} longer than ${MAX_NAME_LENGTH} characters`);
  if (CONTROL.test(name)) throw new HttpError(400, `${what} holds a control character`);
  return name;
}

/**
 * The comma-separated group list, unique. An empty segment is the empty set (an addition:
 * the original's Flask route did not match it), so shared resources can ask without groups.
 */
function parseGroups(segment: string): string[] {
  if (segment === '') return [];
  const parts = segment.split(',');
  if (parts.length > MAX_GROUPS) throw new HttpError(400, `too many groups (at most ${MAX_GROUPS})`);
  const groups = new Set<string>();
  for (const g of parts) {
    if (g === '') continue; // "g1,,g2": Python's split gave '', which matched no VM group anyway.
    if (g.length > MAX_NAME_LENGTH) throw new HttpError(400, `group name longer than ${MAX_NAME_LENGTH} characters`);
    if (CONTROL.test(g)) throw new HttpError(400, 'group name holds a control character');
    groups.add(g);
  }
  return [...groups];
}

function allow(method: string, methods: readonly string[]): void {
  if (!methods.includes(method)) {
    throw new HttpError(405, `method ${method} not allowed`, methods);
  }
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  send(res, status, 'application/json', JSON.stringify(value));
}

/** Flask's own 404 page, which is what the original answered for an unknown VM or resource. */
function flaskNotFound(res: ServerResponse): void {
  send(
    res,
    404,
    FLASK_TEXT,
    '<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n' +
      '<p>The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.</p>\n',
  );
}
