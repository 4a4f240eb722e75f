/**
 * The `qemu` provider: each instance is a real virtual machine, a `qemu-system-x86_64` child
 * with user-mode networking that forwards a proxy-chosen host port to the guest's service.
 *
 * - `start` queues the boot behind a small semaphore (cold boots are CPU-bound) and resolves
 *   at once; the VM is `starting` until QMP says `running` (and, when a console marker is
 *   configured, the guest has printed it). Readiness stays the core's job: QEMU's forwarder
 *   accepts TCP ~0.1 s after launch, long before the guest listens, so only the core's HTTP
 *   probe says ready.
 * - `inspect` of a VM that is launching, booting or restoring waits (up to `inspectHoldMs`)
 *   for its next change, so the core's polling learns of `running` at once.
 * - `stop`: QMP `system_powerdown`, then `quit` after a grace period, then SIGKILL. With
 *   `suspendOnStop`, guest RAM is a shared file: stop saves only the device state
 *   (`x-ignore-shared`, ~60 KiB, tens of ms) and the next `start` restores it with
 *   `-incoming defer` + `migrate-incoming`, mapping the same RAM file (no copy either way).
 * - Each VM has a directory under `stateDir` with its pid, port and sockets (vm.json), so a
 *   restarted proxy finds it again (`list`, or `inspect` by instance key).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { ProviderError } from '../../core/errors.ts';
import type { InspectResult, InstanceRef, ListedInstance, Logger, Provider, ProviderState, StartResult } from '../../core/ports.ts';
import { BootGate } from './boot-gate.ts';
import { buildQemuArgs, shellQuote, type QemuMachineOptions } from './command-line.ts';
import { ConsoleBuffer } from './console-buffer.ts';
import { QmpClient, QmpError } from './qmp-client.ts';
import { pidAlive } from './pid.ts';

export interface QemuProviderOptions extends QemuMachineOptions {
  /** Per-VM directories (pid, sockets, console log, suspend state) live here. */
  readonly stateDir: string;
  /** Boots (cold or restore) in progress at once; the rest wait in order. */
  readonly maxConcurrentBoots: number;
  /**
   * A boot gives its slot back when the console marker appears, when a restore reaches
   * `running`, when the VM exits, or after this long, whichever is first.
   */
  readonly bootSlotMaxMs: number;
  /** After QMP `system_powerdown`, how long the guest gets to power off before `quit`. */
  readonly powerdownGraceMs: number;
  /** Substring of the serial console that must appear before a cold-booted VM is `running`. */
  readonly consoleReadyMarker?: string | undefined;
  /** Serial console bytes kept per VM (the tail). */
  readonly consoleMaxBytes: number;
  /** On stop, save the VM's state to a file and restore it on the next start. */
  readonly suspendOnStop: boolean;
  /** Longest wait for a state save (`migrate`) before falling back to a plain stop. */
  readonly suspendTimeoutMs: number;
  /** Each QMP command is cut after this long. */
  readonly qmpTimeoutMs: number;
  /**
   * While a VM boots or restores, `inspect` answers `starting` only after waiting up to this
   * long for a change (console marker, restore done, exit), and answers at once when one
   * comes: the core, which polls with backoff (up to 250 ms between polls), learns of
   * `running` within milliseconds instead of at its next poll. Keep it well under the
   * resource's `providerCallTimeoutMs` (default 10 s). 0 turns the wait off.
   */
  readonly inspectHoldMs: number;
  readonly logger?: Logger | undefined;
  /** Measurements and lifecycle moments, for tests and metrics. */
  readonly onVmEvent?: ((event: QemuVmEvent) => void) | undefined;
}

export type QemuVmEvent =
  | { readonly type: 'launched'; readonly vm: string; readonly pid: number; readonly hostPort: number; readonly restore: boolean }
  | { readonly type: 'console-marker'; readonly vm: string; readonly afterMs: number }
  | { readonly type: 'restored'; readonly vm: string; readonly wakeMs: number }
  | { readonly type: 'suspended'; readonly vm: string; readonly suspendMs: number; readonly stateBytes: number }
  | { readonly type: 'exited'; readonly vm: string; readonly expected: boolean; readonly reason: string };

export const qemuProviderDefaults = {
  qemuBinary: 'qemu-system-x86_64',
  machine: 'microvm',
  accel: 'tcg',
  cpu: 'max',
  memoryMiB: 256,
  guestPort: 80,
  hostAddress: '127.0.0.1',
  extraArgs: [] as readonly string[],
  maxConcurrentBoots: 2,
  bootSlotMaxMs: 10_000,
  powerdownGraceMs: 3_000,
  consoleMaxBytes: 64 * 1024,
  suspendOnStop: false,
  suspendTimeoutMs: 30_000,
  qmpTimeoutMs: 5_000,
  inspectHoldMs: 4_000,
} as const;

type Phase = 'queued' | 'launching' | 'up' | 'exited';

interface VmRecord {
  readonly version: 1;
  readonly resourceId: string;
  readonly instanceKey: string;
  readonly pid: number;
  readonly hostPort: number;
  readonly qmpSocketPath: string;
  readonly consoleSocketPath: string;
  readonly startedAt: number;
  readonly restored: boolean;
  /** Guest RAM file (see VmLaunch.ramFilePath), when the VM was launched with one. */
  readonly ramFilePath?: string | undefined;
}

interface Vm {
  readonly name: string;
  readonly dir: string;
  readonly resourceId: string;
  readonly instanceKey: string;
  phase: Phase;
  pid?: number | undefined;
  child?: ChildProcess | undefined;
  qmp?: QmpClient | undefined;
  consoleSocket?: Socket | undefined;
  readonly console: ConsoleBuffer;
  hostPort: number;
  /** A cold-booted VM is `running` only after the console marker; a restored one is not. */
  needsMarker: boolean;
  restoring: boolean;
  stopRequested: boolean;
  stopping?: Promise<void> | undefined;
  exitReason?: string | undefined;
  readonly exitWaiters: Array<() => void>;
  releaseSlot?: (() => void) | undefined;
  readonly cancel: AbortController;
  launchedAt: number;
  /** Guest RAM file, when the VM runs with one (suspendOnStop). */
  ramFilePath?: string | undefined;
  /** Called on every change an `inspect` may be waiting for (see inspectHoldMs). */
  readonly changeWaiters: Set<() => void>;
}

const QEMU_LOG = 'qemu.log';
const RECORD = 'vm.json';
const SUSPEND_STATE = 'suspend.state';
const SUSPEND_META = 'suspend.json';
const RAM_FILE = 'ram';
/** sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export function createQemuProvider(options: Partial<QemuProviderOptions> & { readonly stateDir: string }): QemuProvider {
  return new QemuProvider({ ...qemuProviderDefaults, ...options, stateDir: resolve(options.stateDir) });
}

export class QemuProvider implements Provider {
  readonly kind = 'qemu';
  readonly #o: QemuProviderOptions;
  readonly #gate: BootGate;
  readonly #vms = new Map<string, Vm>();
  readonly #log: Logger | undefined;
  #closed = false;
  /** After close(): exits of VMs we let go of are no longer ours to report. */
  #detached = false;

  /**
   * Present only with `suspendOnStop`: only a VM launched with its RAM in a file can be
   * suspended, and such a VM's every stop is a suspend (see `#stopVm`), so an operator's
   * suspend is that stop.
   */
  readonly suspend?: (ref: InstanceRef, signal: AbortSignal) => Promise<void>;

  constructor(options: QemuProviderOptions) {
    this.#o = options;
    this.#gate = new BootGate(options.maxConcurrentBoots);
    this.#log = options.logger;
    if (options.suspendOnStop) this.suspend = (ref, signal) => this.stop(ref, signal);
  }

  /** Boots waiting for a slot right now (for tests and metrics). */
  get queuedBoots(): number {
    return this.#gate.queued;
  }

  /** Holds new boots queued until the returned function is called (see BootGate.pause). */
  holdBoots(): () => void {
    return this.#gate.pause();
  }

  /** The VMs this provider knows and has not seen exit (for tests, metrics, an admin view). */
  vms(): Array<{ readonly name: string; readonly resourceId: string; readonly instanceKey: string; readonly phase: string; readonly pid: number | undefined; readonly hostPort: number }> {
    return [...this.#vms.values()].filter((vm) => vm.phase !== 'exited')
      .map((vm) => ({ name: vm.name, resourceId: vm.resourceId, instanceKey: vm.instanceKey, phase: vm.phase, pid: vm.pid, hostPort: vm.hostPort }));
  }

  /** The kept serial console of an instance's VM, or undefined when none is known. */
  consoleText(ref: Pick<InstanceRef, 'resourceId' | 'instanceKey'>): string | undefined {
    return this.#vms.get(vmNameOf(ref.resourceId, ref.instanceKey))?.console.text();
  }

  /** The serial console as the Provider port's `output` (admin API, `smart-proxy logs`). */
  output(ref: InstanceRef): { readonly text: string; readonly droppedBytes: number } | undefined {
    const vm = this.#vms.get(vmNameOf(ref.resourceId, ref.instanceKey));
    if (vm === undefined) return undefined;
    const text = vm.console.text();
    return { text, droppedBytes: Math.max(0, vm.console.totalBytes - Buffer.byteLength(text)) };
  }

  start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    if (signal.aborted) return Promise.reject(aborted('start'));
    if (this.#closed) return Promise.reject(new ProviderError('qemu provider is closed', { retryable: false }));
    return this.#start(ref);
  }

  async #start(ref: InstanceRef): Promise<StartResult> {
    const name = vmNameOf(ref.resourceId, ref.instanceKey);
    let vm = this.#vms.get(name) ?? await this.#adoptFromDisk(name);
    if (vm !== undefined && vm.stopping !== undefined) {
      // A start while the same instance stops: let the stop finish (its state file, if
      // suspending, is what this start restores), then boot anew.
      await vm.stopping.catch(() => undefined);
      vm = this.#vms.get(name);
    }
    if (vm !== undefined && phaseOf(vm) !== 'exited') return { handle: name }; // idempotent
    if (vm !== undefined) this.#forget(vm);
    await this.#checkFiles();
    const dir = join(this.#o.stateDir, name);
    const created: Vm = {
      name, dir, resourceId: ref.resourceId, instanceKey: ref.instanceKey, phase: 'queued',
      console: new ConsoleBuffer(this.#o.consoleMaxBytes, this.#o.consoleReadyMarker),
      hostPort: 0, needsMarker: false, restoring: false, stopRequested: false, exitWaiters: [],
      cancel: new AbortController(), launchedAt: 0, changeWaiters: new Set(),
    };
    if (this.#vms.has(name)) return { handle: name }; // a concurrent start won the race
    this.#vms.set(name, created);
    void this.#launch(created);
    return { handle: name };
  }

  inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    if (signal.aborted) return Promise.reject(aborted('inspect'));
    return this.#inspect(ref, signal);
  }

  async #inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    const name = vmNameOf(ref.resourceId, ref.instanceKey);
    const vm = this.#vms.get(name) ?? await this.#adoptFromDisk(name);
    if (vm === undefined) return { state: 'stopped' };
    const deadline = Date.now() + this.#o.inspectHoldMs;
    for (;;) {
      const result = await this.#stateOf(vm, signal);
      // Only a VM that is really booting is waited on: a queued one may wait for a slot
      // for long, and every other state is final for this call.
      if (result.state !== 'starting' || phaseOf(vm) === 'queued') return result;
      const leftMs = deadline - Date.now();
      if (leftMs <= 0 || !await this.#awaitChange(vm, leftMs, signal)) return result;
      if (signal.aborted) throw aborted('inspect');
    }
  }

  /** True when the VM changed (or the call's signal aborted) within `ms`; false on timeout. */
  #awaitChange(vm: Vm, ms: number, signal: AbortSignal): Promise<boolean> {
    return new Promise<boolean>((resolveChange) => {
      const done = (changed: boolean): void => {
        clearTimeout(timer);
        vm.changeWaiters.delete(onChange);
        signal.removeEventListener('abort', onAbort);
        resolveChange(changed);
      };
      const onChange = (): void => done(true);
      const onAbort = (): void => done(true); // the caller sees signal.aborted and rejects
      const timer = setTimeout(() => done(false), ms);
      vm.changeWaiters.add(onChange);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #notifyChange(vm: Vm): void {
    for (const w of [...vm.changeWaiters]) w();
  }

  async #stateOf(vm: Vm, signal: AbortSignal): Promise<InspectResult> {
    const handle = vm.name;
    if (vm.stopping !== undefined) return { state: 'stopping', handle };
    switch (vm.phase) {
      case 'queued':
      case 'launching':
        return { state: 'starting', handle };
      case 'exited':
        return vm.stopRequested
          ? { state: 'stopped', handle }
          : { state: 'failed', handle, reason: vm.exitReason ?? 'QEMU exited' };
      case 'up':
        break;
    }
    const qmp = vm.qmp;
    if (qmp === undefined || qmp.closed) {
      // QMP drops when QEMU exits; the exit handler is about to record why.
      return { state: 'starting', handle };
    }
    let status: string;
    try {
      const answer = await qmp.execute('query-status', undefined, { timeoutMs: this.#o.qmpTimeoutMs, signal });
      status = qmpStatus(answer);
    } catch (err) {
      if (err instanceof QmpError && err.qmpClass === 'Disconnected') return { state: 'starting', handle };
      throw new ProviderError(`QMP query-status failed: ${(err as Error).message}`, { retryable: true, cause: err });
    }
    const state = stateFromQmp(status);
    if (state === 'failed') return { state, handle, reason: `QEMU reports the VM ${status}` };
    if (state === 'running') {
      if (vm.needsMarker && !vm.console.markerSeen) return { state: 'starting', handle };
      return { state, handle, endpoint: `http://${urlHost(this.#o.hostAddress)}:${vm.hostPort}` };
    }
    return { state, handle };
  }

  stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(aborted('stop'));
    return this.#stopRef(ref, signal);
  }

  async #stopRef(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    const name = vmNameOf(ref.resourceId, ref.instanceKey);
    const vm = this.#vms.get(name) ?? await this.#adoptFromDisk(name);
    if (vm === undefined) return;
    if (vm.stopping === undefined) {
      vm.stopping = this.#stopVm(vm).finally(() => {
        vm.stopping = undefined;
      });
      this.#notifyChange(vm);
    }
    // The stop goes on when this call's signal aborts; a retried stop joins it.
    await raceAbort(vm.stopping, signal, 'stop');
  }

  async list(signal: AbortSignal): Promise<ListedInstance[]> {
    if (signal.aborted) throw aborted('list');
    let names: string[] = [];
    try {
      names = await readdir(this.#o.stateDir);
    } catch {
      // no state dir yet: nothing ever ran
    }
    for (const name of names) {
      if (!this.#vms.has(name)) await this.#adoptFromDisk(name);
    }
    const out: ListedInstance[] = [];
    for (const vm of [...this.#vms.values()]) {
      if (phaseOf(vm) === 'exited') continue;
      const r = await this.#stateOf(vm, signal);
      out.push({ ...r, resourceId: vm.resourceId, instanceKey: vm.instanceKey, handle: vm.name });
    }
    return out;
  }

  /**
   * Lets go of sockets and timers. Running VMs keep running (a new proxy re-adopts them);
   * a VM still being set up has no record to be re-adopted by, so it is killed.
   */
  async close(): Promise<void> {
    this.#closed = true;
    const halfLaunched = [...this.#vms.values()].filter((vm) => phaseOf(vm) === 'launching' && vm.pid !== undefined);
    for (const vm of this.#vms.values()) vm.cancel.abort(new Error('provider closed'));
    await Promise.all(halfLaunched.map((vm) => this.#kill(vm, 'SIGKILL')));
    this.#detached = true;
    for (const vm of this.#vms.values()) {
      vm.qmp?.close();
      vm.consoleSocket?.destroy();
      vm.releaseSlot?.();
      vm.child?.unref();
    }
    this.#vms.clear();
  }

  // -- launch ---------------------------------------------------------------------------

  async #launch(vm: Vm): Promise<void> {
    let release: (() => void) | undefined;
    try {
      release = await this.#gate.acquire(vm.cancel.signal);
    } catch {
      return; // stopped (or provider closed) while queued
    }
    vm.releaseSlot = release;
    vm.phase = 'launching';
    const slotTimer = setTimeout(() => this.#releaseSlot(vm), this.#o.bootSlotMaxMs);
    slotTimer.unref();
    try {
      await mkdir(vm.dir, { recursive: true });
      const incoming = await this.#usableSuspendState(vm);
      // A cold boot starts from fresh RAM: a RAM file left behind would only hold stale pages.
      if (incoming === undefined) await rm(join(vm.dir, RAM_FILE), { force: true });
      // A port picked by binding port 0 can be taken again before QEMU binds it; QEMU then
      // exits at once with a hostfwd error, and another port is tried.
      for (let attempt = 1; ; attempt++) {
        const ok = await this.#spawnOnce(vm, incoming);
        if (ok || attempt >= 3 || vm.stopRequested || !/host ?forward/i.test(vm.exitReason ?? '')) break;
        this.#log?.warn({ vm: vm.name, reason: vm.exitReason }, 'qemu could not bind its forwarded port; retrying');
      }
    } catch (err) {
      // Set-up failed with QEMU possibly running (a socket never appeared): do not leak it.
      if (vm.pid !== undefined && phaseOf(vm) !== 'exited') await this.#kill(vm, 'SIGKILL');
      this.#markExited(vm, `launch failed: ${(err as Error).message}`);
    } finally {
      if (phaseOf(vm) !== 'up') {
        clearTimeout(slotTimer);
        this.#releaseSlot(vm);
      } else {
        vm.console.onMarker(() => clearTimeout(slotTimer));
        this.#onExit(vm, () => clearTimeout(slotTimer));
      }
    }
  }

  /** Spawns QEMU once and attaches console and QMP. False when QEMU exited during set-up. */
  async #spawnOnce(vm: Vm, incoming: string | undefined): Promise<boolean> {
    const qmpSocketPath = join(vm.dir, 'qmp');
    const consoleSocketPath = join(vm.dir, 'con');
    // Independent of each other: done together, they cost one round of I/O before the spawn.
    const [hostPort] = await Promise.all([
      freePort(this.#o.hostAddress), rm(qmpSocketPath, { force: true }), rm(consoleSocketPath, { force: true }),
    ]);
    vm.hostPort = hostPort;
    vm.phase = 'launching';
    vm.exitReason = undefined;
    vm.restoring = incoming !== undefined;
    vm.needsMarker = incoming === undefined && this.#o.consoleReadyMarker !== undefined;
    // With suspendOnStop, guest RAM lives in a file, so that suspend and restore copy none of it.
    vm.ramFilePath = this.#o.suspendOnStop ? join(vm.dir, RAM_FILE) : undefined;
    const args = buildQemuArgs(this.#o, {
      vmName: vm.name, qmpSocketPath, consoleSocketPath, hostPort: vm.hostPort, ramFilePath: vm.ramFilePath, incoming: incoming !== undefined,
    });
    if (vm.cancel.signal.aborted) return true; // stopped during set-up: nothing to launch
    const logFd = openSync(join(vm.dir, QEMU_LOG), 'w');
    let child: ChildProcess;
    try {
      // detached: its own process group, so a Ctrl-C on the proxy's terminal does not kill
      // the VMs, and they survive a proxy restart to be re-adopted.
      child = spawn(this.#o.qemuBinary, args, { detached: true, stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    vm.child = child;
    vm.launchedAt = Date.now();
    const exited = new Promise<void>((resolveExit) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'ENOENT' ? `${this.#o.qemuBinary} not found (install qemu-system-x86)` : err.message;
        this.#markExited(vm, why);
        resolveExit();
      });
      child.once('exit', (code, sig) => {
        this.#markExited(vm, `QEMU exited (${sig ?? `code ${code}`}): ${this.#qemuLogTail(vm)}`);
        resolveExit();
      });
    });
    child.unref();
    if (child.pid === undefined) {
      await exited;
      return false;
    }
    vm.pid = child.pid;
    const setupDeadline = Date.now() + Math.max(10_000, this.#o.qmpTimeoutMs);
    const gone = (): boolean => phaseOf(vm) === 'exited' || vm.cancel.signal.aborted;
    await this.#attachConsole(vm, consoleSocketPath, setupDeadline, gone);
    if (gone()) return phaseOf(vm) !== 'exited';
    vm.qmp = await this.#attachQmp(vm, qmpSocketPath, setupDeadline, gone);
    if (gone()) return phaseOf(vm) !== 'exited';
    let restoreDone: Promise<void> | undefined;
    if (incoming !== undefined && vm.qmp !== undefined) {
      // Listen before the restore begins: QEMU announces the end of the restore with RESUME.
      restoreDone = this.#restoreEvent(vm.qmp);
      await this.#beginRestore(vm.qmp, incoming);
      if (gone()) return phaseOf(vm) !== 'exited';
    }
    await this.#writeRecord(vm, { qmpSocketPath, consoleSocketPath, restored: vm.restoring });
    if (gone()) return phaseOf(vm) !== 'exited';
    vm.phase = 'up';
    this.#notifyChange(vm);
    this.#log?.info({ vm: vm.name, resource: vm.resourceId, instance: vm.instanceKey, pid: vm.pid, hostPort: vm.hostPort, restore: vm.restoring }, 'qemu VM launched');
    // Now QEMU is past its set-up (console attached, QMP answering): its forwarder listens.
    this.#o.onVmEvent?.({ type: 'launched', vm: vm.name, pid: child.pid, hostPort: vm.hostPort, restore: vm.restoring });
    if (vm.restoring && incoming !== undefined) void this.#awaitRestore(vm, incoming, restoreDone);
    return true;
  }

  async #attachConsole(vm: Vm, path: string, deadline: number, gone: () => boolean): Promise<void> {
    const socket = await retryConnect(() => connectUnix(path), deadline, gone);
    if (socket === undefined) return;
    vm.consoleSocket = socket;
    socket.on('data', (chunk: Buffer) => vm.console.write(chunk));
    socket.on('error', () => undefined); // closes with the VM; exit is handled elsewhere
    vm.console.onMarker(() => {
      this.#o.onVmEvent?.({ type: 'console-marker', vm: vm.name, afterMs: Date.now() - vm.launchedAt });
      this.#releaseSlot(vm);
      this.#notifyChange(vm);
    });
  }

  async #attachQmp(vm: Vm, path: string, deadline: number, gone: () => boolean): Promise<QmpClient | undefined> {
    const qmp = await retryConnect(() => QmpClient.connect(path, { timeoutMs: this.#o.qmpTimeoutMs }), deadline, gone);
    if (qmp === undefined) return undefined;
    qmp.onClose(() => {
      // An adopted VM is not our child: QMP closing is how we learn that it is gone.
      if (vm.child === undefined && vm.pid !== undefined && !pidAlive(vm.pid)) this.#markExited(vm, 'QEMU exited');
    });
    return qmp;
  }

  /**
   * Starts loading the state file into a QEMU launched with `-incoming defer`. With a RAM
   * file, only device state is in the state file: `x-ignore-shared` says so on this side too.
   */
  async #beginRestore(qmp: QmpClient, statePath: string): Promise<void> {
    const opts = { timeoutMs: this.#o.qmpTimeoutMs };
    if (this.#o.suspendOnStop) {
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, opts);
    }
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` }, opts);
  }

  /** Resolves on QEMU's RESUME event (the restored guest runs again); never rejects. */
  #restoreEvent(qmp: QmpClient): Promise<void> {
    return new Promise((resolveEvent) => {
      const previous = qmp.onEvent;
      qmp.onEvent = (e) => {
        previous?.(e);
        if (e.event === 'RESUME') resolveEvent();
      };
      qmp.onClose(() => resolveEvent());
    });
  }

  /**
   * After `migrate-incoming`: wait for `running` (QEMU's RESUME event, with a slow poll as a
   * safety net), record the wake time, drop the state file.
   */
  async #awaitRestore(vm: Vm, statePath: string, resumed: Promise<void> | undefined): Promise<void> {
    try {
      let event = false;
      void resumed?.then(() => {
        event = true;
      });
      for (;;) {
        if (phaseOf(vm) !== 'up' || vm.qmp === undefined) return;
        const s = await vm.qmp.execute('query-status', undefined, { timeoutMs: this.#o.qmpTimeoutMs });
        const status = qmpStatus(s);
        if (status === 'running') break;
        if (stateFromQmp(status) === 'failed') return;
        // Until RESUME: wake on it (or every 100 ms). After it: QMP may lag the event a little.
        await Promise.race([event ? delay(10) : resumed, delay(100)]);
      }
      const wakeMs = Date.now() - vm.launchedAt;
      vm.restoring = false;
      this.#releaseSlot(vm);
      this.#notifyChange(vm);
      this.#log?.info({ vm: vm.name, resource: vm.resourceId, wakeMs }, 'qemu VM restored from suspend state');
      this.#o.onVmEvent?.({ type: 'restored', vm: vm.name, wakeMs });
      // The guest now runs ahead of the file; a later stop writes a fresh one.
      await rm(statePath, { force: true });
      await rm(join(vm.dir, SUSPEND_META), { force: true });
    } catch (err) {
      this.#log?.warn({ vm: vm.name, err: (err as Error).message }, 'waiting for a restore failed');
    }
  }

  // -- stop -----------------------------------------------------------------------------

  async #stopVm(vm: Vm): Promise<void> {
    vm.stopRequested = true;
    vm.cancel.abort(new Error('stopped'));
    if (phaseOf(vm) === 'queued' || phaseOf(vm) === 'exited' || vm.pid === undefined) {
      this.#forget(vm);
      return;
    }
    if (phaseOf(vm) === 'launching') {
      // Set-up is cut short by the abort above; what is left is a process to end.
      await this.#kill(vm, 'SIGKILL');
      // A restore cut short may already have let the guest run and write to the RAM file:
      // the state file no longer matches it, so the next start boots cold.
      const files = vm.restoring ? [RAM_FILE, SUSPEND_STATE, SUSPEND_META] : [RAM_FILE];
      await Promise.all(files.map((f) => rm(join(vm.dir, f), { force: true })));
      this.#forget(vm);
      return;
    }
    const qmp = vm.qmp;
    const t0 = Date.now();
    let how = 'quit';
    // A guest still booting has nothing to save or shut down cleanly (and may not yet
    // handle the power button): quit it. Without a marker there is no way to tell.
    const booted = !vm.needsMarker || vm.console.markerSeen;
    if (booted && this.#o.suspendOnStop && qmp !== undefined && !qmp.closed && await this.#suspend(vm, qmp)) {
      how = 'suspend';
    }
    if (booted && how !== 'suspend' && qmp !== undefined && !qmp.closed) {
      try {
        await qmp.execute('system_powerdown', undefined, { timeoutMs: this.#o.qmpTimeoutMs });
        how = 'powerdown';
      } catch {
        // no ACPI, or QMP already gone: fall through to quit
      }
      if (how === 'powerdown' && !await this.#waitExit(vm, this.#o.powerdownGraceMs)) how = 'quit';
    }
    if (phaseOf(vm) !== 'exited' && qmp !== undefined && !qmp.closed) {
      await qmp.execute('quit', undefined, { timeoutMs: this.#o.qmpTimeoutMs }).catch(() => undefined);
      if (!await this.#waitExit(vm, 2_000)) how = 'kill';
    }
    if (phaseOf(vm) !== 'exited') {
      await this.#kill(vm, 'SIGKILL');
      how = 'kill';
    }
    if (how !== 'suspend') await rm(join(vm.dir, RAM_FILE), { force: true });
    this.#log?.info({ vm: vm.name, resource: vm.resourceId, how, stopMs: Date.now() - t0 }, 'qemu VM stopped');
    this.#forget(vm);
  }

  /**
   * Migrates the VM's device state to a file; its RAM stays in the RAM file (x-ignore-shared),
   * so this takes milliseconds and a few tens of KiB. True when the file is complete.
   */
  async #suspend(vm: Vm, qmp: QmpClient): Promise<boolean> {
    const statePath = join(vm.dir, SUSPEND_STATE);
    const tmp = `${statePath}.partial`;
    const t0 = Date.now();
    const opts = { timeoutMs: this.#o.qmpTimeoutMs };
    if (vm.ramFilePath === undefined) {
      // Launched without a RAM file (by a proxy that had suspendOnStop off): nothing to keep.
      this.#log?.info({ vm: vm.name }, 'VM runs without a RAM file; stopping it instead of suspending');
      return false;
    }
    try {
      await rm(tmp, { force: true });
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, opts);
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(tmp)}` }, opts);
      for (;;) {
        const info = await qmp.execute('query-migrate', undefined, opts) as { status?: string; error_desc?: string } | undefined;
        const status = info?.status;
        if (status === 'completed') break;
        if (status === 'failed' || status === 'cancelled') throw new Error(info?.error_desc ?? `migration ${status}`);
        if (Date.now() - t0 > this.#o.suspendTimeoutMs) {
          await qmp.execute('migrate_cancel', undefined, opts).catch(() => undefined);
          throw new Error(`state save took over ${this.#o.suspendTimeoutMs} ms`);
        }
        await delay(5);
      }
      await rename(tmp, statePath);
      await writeFile(join(vm.dir, SUSPEND_META), JSON.stringify({ compat: this.#compatKey(), savedAt: Date.now(), ramFilePath: vm.ramFilePath }));
      const stateBytes = (await stat(statePath)).size;
      const suspendMs = Date.now() - t0;
      this.#log?.info({ vm: vm.name, resource: vm.resourceId, suspendMs, stateBytes }, 'qemu VM suspended to a state file');
      this.#o.onVmEvent?.({ type: 'suspended', vm: vm.name, suspendMs, stateBytes });
      return true;
    } catch (err) {
      this.#log?.warn({ vm: vm.name, err: (err as Error).message }, 'suspend failed; stopping the VM instead');
      await rm(tmp, { force: true });
      // A failed migration leaves the guest paused or running: the plain stop handles both.
      return false;
    }
  }

  /** The state file to restore from, when there is one this configuration can load. */
  async #usableSuspendState(vm: Vm): Promise<string | undefined> {
    const statePath = join(vm.dir, SUSPEND_STATE);
    let meta: { compat?: unknown; ramFilePath?: unknown };
    try {
      meta = JSON.parse(await readFile(join(vm.dir, SUSPEND_META), 'utf8')) as { compat?: unknown; ramFilePath?: unknown };
      await access(statePath);
    } catch {
      return undefined;
    }
    // The state file holds the devices only; the guest's memory is the RAM file beside it.
    const ramOk = meta.ramFilePath === join(vm.dir, RAM_FILE) && await access(meta.ramFilePath).then(() => true, () => false);
    if (meta.compat !== this.#compatKey() || !ramOk) {
      // Machine, memory, devices and QEMU build must match the saved state, or the restore fails.
      this.#log?.warn({ vm: vm.name, ramFile: ramOk }, 'suspend state was saved with another VM configuration, or its RAM file is gone; cold booting');
      await rm(statePath, { force: true });
      await rm(join(vm.dir, SUSPEND_META), { force: true });
      return undefined;
    }
    if (!this.#o.suspendOnStop) return undefined;
    return statePath;
  }

  #compatKey(): string {
    const o = this.#o;
    return JSON.stringify(['ram-file', o.qemuBinary, o.machine, o.accel, o.cpu, o.memoryMiB, o.kernelPath, o.initrdPath, o.diskImagePath, o.extraArgs]);
  }

  // -- process bookkeeping ----------------------------------------------------------------

  #markExited(vm: Vm, reason: string): void {
    if (phaseOf(vm) === 'exited' || this.#detached) return;
    vm.phase = 'exited';
    if (!vm.stopRequested && vm.restoring) {
      // A restore that failed would fail again: drop the state file, boot cold next time.
      void rm(join(vm.dir, SUSPEND_STATE), { force: true });
      void rm(join(vm.dir, SUSPEND_META), { force: true });
    }
    if (!vm.stopRequested) {
      // The guest's memory is of no use without a state file to go with it.
      void rm(join(vm.dir, RAM_FILE), { force: true });
    }
    vm.exitReason = reason;
    vm.qmp?.close();
    vm.consoleSocket?.destroy();
    this.#releaseSlot(vm);
    this.#notifyChange(vm);
    void rm(join(vm.dir, RECORD), { force: true });
    if (!vm.stopRequested) {
      this.#log?.warn({ vm: vm.name, resource: vm.resourceId, reason, console: vm.console.tail(500) }, 'qemu VM exited unexpectedly');
    }
    this.#o.onVmEvent?.({ type: 'exited', vm: vm.name, expected: vm.stopRequested, reason });
    for (const w of vm.exitWaiters.splice(0)) w();
  }

  #onExit(vm: Vm, fn: () => void): void {
    if (phaseOf(vm) === 'exited') fn();
    else vm.exitWaiters.push(fn);
  }

  /** True when the VM exited within `ms`. */
  async #waitExit(vm: Vm, ms: number): Promise<boolean> {
    if (phaseOf(vm) === 'exited') return true;
    return new Promise<boolean>((resolveWait) => {
      const timer = setTimeout(() => resolveWait(false), ms);
      // An adopted VM is not our child: no exit event, so its pid is polled.
      const poll = vm.child === undefined ? setInterval(() => {
        if (vm.pid !== undefined && !pidAlive(vm.pid)) this.#markExited(vm, 'QEMU exited');
      }, 20) : undefined;
      this.#onExit(vm, () => {
        clearTimeout(timer);
        if (poll !== undefined) clearInterval(poll);
        resolveWait(true);
      });
    });
  }

  async #kill(vm: Vm, sig: NodeJS.Signals): Promise<void> {
    if (vm.pid === undefined || phaseOf(vm) === 'exited') return;
    try {
      process.kill(vm.pid, sig);
    } catch {
      // already gone
    }
    if (!await this.#waitExit(vm, 5_000)) this.#markExited(vm, `did not exit after ${sig}`);
  }

  #releaseSlot(vm: Vm): void {
    const release = vm.releaseSlot;
    vm.releaseSlot = undefined;
    release?.();
  }

  #forget(vm: Vm): void {
    vm.qmp?.close();
    vm.consoleSocket?.destroy();
    this.#releaseSlot(vm);
    if (this.#vms.get(vm.name) === vm) this.#vms.delete(vm.name);
    void rm(join(vm.dir, RECORD), { force: true });
  }

  #qemuLogTail(vm: Vm): string {
    try {
      // QEMU's own note about waiting for the console client is not a cause.
      const text = readFileSync(join(vm.dir, QEMU_LOG), 'utf8').split('\n')
        .filter((l) => !l.includes('QEMU waiting for connection')).join('\n').trim();
      return text === '' ? '(no output)' : text.slice(-400);
    } catch {
      return '(no log)';
    }
  }

  async #writeRecord(vm: Vm, r: { qmpSocketPath: string; consoleSocketPath: string; restored: boolean }): Promise<void> {
    const record: VmRecord = {
      version: 1, resourceId: vm.resourceId, instanceKey: vm.instanceKey, pid: vm.pid ?? 0, hostPort: vm.hostPort,
      qmpSocketPath: r.qmpSocketPath, consoleSocketPath: r.consoleSocketPath, startedAt: vm.launchedAt, restored: r.restored,
      ramFilePath: vm.ramFilePath,
    };
    await writeFile(join(vm.dir, `${RECORD}.tmp`), JSON.stringify(record));
    await rename(join(vm.dir, `${RECORD}.tmp`), join(vm.dir, RECORD));
  }

  /**
   * Re-adopts a VM a previous proxy process started: its record names a pid that still runs
   * QEMU on the recorded QMP socket (checked in /proc, so a recycled pid is not mistaken).
   */
  async #adoptFromDisk(name: string): Promise<Vm | undefined> {
    if (this.#closed || !/^[0-9a-f]{16}$/.test(name)) return undefined;
    const dir = join(this.#o.stateDir, name);
    let record: VmRecord;
    try {
      record = JSON.parse(await readFile(join(dir, RECORD), 'utf8')) as VmRecord;
    } catch {
      return undefined;
    }
    if (this.#vms.has(name)) return this.#vms.get(name);
    if (record.version !== 1 || !pidRunsQemuWith(record.pid, record.qmpSocketPath)) {
      await rm(join(dir, RECORD), { force: true });
      return undefined;
    }
    const vm: Vm = {
      name, dir, resourceId: record.resourceId, instanceKey: record.instanceKey, phase: 'launching', pid: record.pid,
      console: new ConsoleBuffer(this.#o.consoleMaxBytes, this.#o.consoleReadyMarker),
      // The console before re-adoption is lost, so the marker cannot gate an adopted VM.
      hostPort: record.hostPort, needsMarker: false, restoring: false, stopRequested: false, exitWaiters: [],
      cancel: new AbortController(), launchedAt: record.startedAt, ramFilePath: record.ramFilePath, changeWaiters: new Set(),
    };
    this.#vms.set(name, vm);
    const deadline = Date.now() + this.#o.qmpTimeoutMs;
    const gone = (): boolean => phaseOf(vm) === 'exited' || vm.cancel.signal.aborted || !pidAlive(record.pid);
    await this.#attachConsole(vm, record.consoleSocketPath, deadline, gone).catch(() => undefined);
    vm.qmp = await this.#attachQmp(vm, record.qmpSocketPath, deadline, gone).catch(() => undefined);
    if (vm.qmp === undefined) {
      this.#vms.delete(name);
      vm.consoleSocket?.destroy();
      this.#log?.warn({ vm: name, pid: record.pid }, 'found a QEMU process from an earlier run but could not reach its QMP socket');
      return undefined;
    }
    vm.phase = 'up';
    this.#log?.info({ vm: name, resource: vm.resourceId, instance: vm.instanceKey, pid: vm.pid, hostPort: vm.hostPort }, 'qemu VM re-adopted');
    return vm;
  }

  async #checkFiles(): Promise<void> {
    const o = this.#o;
    const probe = join(o.stateDir, '0123456789abcdef', 'qmp');
    if (Buffer.byteLength(probe) > MAX_SOCKET_PATH) {
      throw new ProviderError(`qemu stateDir "${o.stateDir}" is too long for unix socket paths (max ${MAX_SOCKET_PATH - 22} bytes)`, { retryable: false });
    }
    for (const [what, path] of [['kernel', o.kernelPath], ['initrd', o.initrdPath], ['disk image', o.diskImagePath]] as const) {
      if (path === undefined) continue;
      try {
        await access(path);
      } catch {
        throw new ProviderError(`qemu ${what} ${path} is missing (for the test VM, run scripts/build-test-vm.sh)`, { retryable: false });
      }
    }
  }
}

/** Directory and VM name: short (unix socket paths are limited) and stable per instance. */
export function vmNameOf(resourceId: string, instanceKey: string): string {
  return createHash('sha256').update(`${resourceId}\0${instanceKey}`).digest('hex').slice(0, 16);
}

/** Reads the phase afresh: other callbacks change it while a method awaits. */
function phaseOf(vm: Vm): Phase {
  return vm.phase;
}

/** The `status` of a QMP query-status answer. */
function qmpStatus(answer: unknown): string {
  const s = (answer as { status?: unknown } | null | undefined)?.status;
  return typeof s === 'string' ? s : 'unknown';
}

function stateFromQmp(status: string): ProviderState {
  switch (status) {
    case 'running':
      return 'running';
    case 'inmigrate':
    case 'prelaunch':
    case 'restore-vm':
    case 'debug':
    case 'paused':
    case 'suspended':
      return 'starting';
    case 'postmigrate':
    case 'finish-migrate':
    case 'save-vm':
    case 'shutdown':
    case 'colo':
      return 'stopping';
    default: // internal-error, io-error, guest-panicked, watchdog
      return 'failed';
  }
}

function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function aborted(what: string): ProviderError {
  return new ProviderError(`qemu ${what}: aborted`, { retryable: true });
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  return new Promise<T>((resolveRace, reject) => {
    const onAbort = (): void => reject(aborted(what));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then((v) => {
      signal.removeEventListener('abort', onAbort);
      resolveRace(v);
    }, (err: unknown) => {
      signal.removeEventListener('abort', onAbort);
      reject(err instanceof Error ? err : new Error(String(err)));
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A free TCP port on `host` right now (bind port 0, read it, close). */
function freePort(host: string): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolveConn, reject) => {
    const s = connect({ path });
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolveConn(s);
    });
    s.once('error', reject);
  });
}

/** QEMU creates its sockets a few ms after exec: retry until connected, gone or too late. */
async function retryConnect<T>(attempt: () => Promise<T>, deadline: number, gone: () => boolean): Promise<T | undefined> {
  // QEMU waits for the console client (wait=on) before it goes on: every ms between its
  // socket appearing and our connect is a ms of boot. A refused unix connect costs ~20 µs.
  let waitMs = 2;
  for (;;) {
    if (gone()) return undefined;
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() >= deadline) throw new Error(`could not connect: ${(err as Error).message}`, { cause: err });
    }
    await delay(waitMs);
    waitMs = Math.min(10, waitMs * 2);
  }
}

function pidRunsQemuWith(pid: number, qmpSocketPath: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(qmpSocketPath);
  } catch {
    return false;
  }
}
