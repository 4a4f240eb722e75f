/**
 * The `process` provider: wakes a local command. Each instance (resource id + instance key)
 * is one child process, spawned detached so that it leads its own process group: a stop
 * signals the whole group (the command and whatever it spawned), SIGTERM first, SIGKILL
 * after `stopGraceMs`.
 *
 * States (see docs/providers/process.md):
 * - `running` while the spawned process is alive, with endpoint `http://{host}:{port}`. The
 *   provider never says ready: the core's probe decides when the service answers.
 * - `failed` once the process exits without a stop having been asked for, at any time (during
 *   boot or after ready), with the exit code or signal and the tail of its output as reason.
 *   The exit is seen at once through the child's `exit` event. A later `start` spawns afresh.
 * - `stopped` for what it does not know, and after a stop.
 *
 * Re-adoption: a small state file per instance in `stateDir` records pid, process group, port
 * and the process start time from /proc; a new provider (after a proxy restart) adopts the
 * process when that pid still runs with the same start time (guarding against pid reuse).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ProviderError } from '../../core/errors.ts';
import type { InspectResult, InstanceRef, ListedInstance, Logger, Provider, StartResult } from '../../core/ports.ts';
import { LogRing } from './log-ring.ts';
import { allocatePort, groupAlive, processStartTime, signalGroup } from './os-process.ts';
import { safePlaceholderValue } from '../safe-values.ts';
import { readAllRecords, readRecord, removeRecord, writeRecord, type ProcessRecord } from './state-file.ts';

/** Options of one `process` provider. Placeholders are listed in {@link placeholderNames}. */
export interface ProcessProviderOptions {
  /** Program and arguments (no shell). Placeholders like `{port}` are replaced in each. */
  readonly command: readonly string[];
  /** Variables added to the child's environment (values may hold placeholders). */
  readonly env?: Readonly<Record<string, string>> | undefined;
  /** The environment the child starts from before `env` is applied (the proxy's own, passed in by main). */
  readonly baseEnv?: Readonly<Record<string, string | undefined>> | undefined;
  /** Working directory of the child (may hold placeholders); default: the proxy's. */
  readonly cwd?: string | undefined;
  /** Address the child is told to listen on, and the endpoint's host. Default 127.0.0.1. */
  readonly host?: string | undefined;
  /** A fixed port; 0 or absent: a free port is picked per start. */
  readonly port?: number | undefined;
  /** Where the per-instance state files live (re-adoption after a restart). */
  readonly stateDir: string;
  /** From SIGTERM to SIGKILL of the process group. Default 5000. */
  readonly stopGraceMs?: number | undefined;
  /** Output kept in memory per instance (stdout and stderr together). Default 64 KiB. */
  readonly logMaxBytes?: number | undefined;
  /** Also append the output to this file (may hold placeholders). */
  readonly logFile?: string | undefined;
  readonly logger?: Logger | undefined;
}

/** Placeholders allowed in command, env values, cwd and logFile. */
export const placeholderNames = ['port', 'host', 'resourceId', 'instanceKey', 'groups', 'user'] as const;

interface Entry {
  readonly resourceId: string;
  readonly instanceKey: string;
  readonly record: ProcessRecord;
  /** Undefined when adopted from a state file: no exit event and no output then. */
  readonly child: ChildProcess | undefined;
  readonly log: LogRing;
  logFile: WriteStream | undefined;
  exit: { readonly code: number | null; readonly signal: NodeJS.Signals | null; readonly known: boolean } | undefined;
  stopRequested: boolean;
  stopping: Promise<void> | undefined;
  /** Ending what the command left in its process group after it exited on its own. */
  reaping: Promise<void> | undefined;
  /** File writes for this entry, in order (the exit's removal must not overtake the first write). */
  fileOps: Promise<void>;
}

const GROUP_POLL_MS = 25;
/** Instances whose last run's output is kept after it ended (see #lastRuns). */
const LAST_RUNS = 64;
/** After SIGKILL, how long the group may take to disappear before stop reports an error. */
const KILL_WAIT_MS = 5_000;

export class ProcessProvider implements Provider {
  readonly kind = 'process';
  readonly #opts: ProcessProviderOptions;
  readonly #host: string;
  readonly #stopGraceMs: number;
  readonly #logMaxBytes: number;
  readonly #entries = new Map<string, Entry>();
  /**
   * The output of runs that ended (crashed, or stopped), by instance, newest last: what an
   * operator asks for after a crash is exactly what the process printed before it went.
   * Bounded by LAST_RUNS instances (each by logMaxBytes); a new run of an instance replaces it.
   */
  readonly #lastRuns = new Map<string, { readonly text: string; readonly droppedBytes: number }>();
  readonly #starting = new Map<string, Promise<Entry>>();
  readonly #log: Logger | undefined;

  constructor(options: ProcessProviderOptions) {
    if (options.command.length === 0 || options.command[0] === '') {
      throw new Error('process provider: command must name a program');
    }
    for (const t of [...options.command, ...Object.values(options.env ?? {}), options.cwd ?? '', options.logFile ?? '']) {
      checkPlaceholders(t);
    }
    this.#opts = options;
    this.#host = options.host ?? '127.0.0.1';
    this.#stopGraceMs = options.stopGraceMs ?? 5_000;
    this.#logMaxBytes = options.logMaxBytes ?? 64 * 1024;
    this.#log = options.logger;
  }

  async start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    throwIfAborted(signal, 'start');
    const key = keyOf(ref);
    // Single flight inside the provider: two starts for one key share one spawn.
    let pending = this.#starting.get(key);
    if (pending === undefined) {
      pending = this.#startOnce(ref).finally(() => this.#starting.delete(key));
      this.#starting.set(key, pending);
    }
    const entry = await raceAbort(pending, signal, 'start');
    return { handle: String(entry.record.pid) };
  }

  async #startOnce(ref: InstanceRef): Promise<Entry> {
    const key = keyOf(ref);
    const current = this.#entries.get(key);
    if (current !== undefined) {
      if (current.stopping !== undefined) await current.stopping.catch(() => undefined);
      else if (current.exit === undefined && !current.stopRequested && await this.#alive(current)) return current;
      // What the last run left behind (a child that outlived it) may hold the port: gone first.
      if (current.exit !== undefined) await this.#reap(current).catch(() => undefined);
      this.#forget(current);
    }
    const adopted = await this.#adoptFromFile(ref.resourceId, ref.instanceKey);
    if (adopted !== undefined) return adopted;
    return this.#spawn(ref);
  }

  async #spawn(ref: InstanceRef): Promise<Entry> {
    const port = this.#opts.port !== undefined && this.#opts.port > 0 ? this.#opts.port : await allocatePort(this.#host);
    // Values from requests go in only in their safe form (safe-values.ts): they cannot climb
    // out of a directory or become an option. {resourceId} comes from the config, checked there.
    const vars: Record<string, string> = {
      port: String(port), host: this.#host, resourceId: ref.resourceId, instanceKey: safePlaceholderValue(ref.instanceKey),
      groups: ref.groups.length === 0 ? '' : safePlaceholderValue(ref.groups.join(',')), user: ref.user === undefined ? '' : safePlaceholderValue(ref.user),
    };
    const argv = this.#opts.command.map((a) => fill(a, vars));
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(this.#opts.baseEnv ?? {})) if (v !== undefined) env[k] = v;
    for (const [k, v] of Object.entries(this.#opts.env ?? {})) env[k] = fill(v, vars);
    const cwd = this.#opts.cwd === undefined ? undefined : fill(this.#opts.cwd, vars);
    const [program, ...args] = argv as [string, ...string[]];

    const child = spawn(program, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env, cwd });
    // Output is read from the first byte: a child that exits before anyone reads makes Node
    // drain its pipes unread, and its last words (the reason a start failed) would be lost.
    const log = new LogRing(this.#logMaxBytes);
    let logFile = (): WriteStream | undefined => undefined;
    const onOutput = (chunk: Buffer): void => {
      log.append(chunk);
      logFile()?.write(chunk);
    };
    child.stdout?.on('data', onOutput);
    child.stderr?.on('data', onOutput);
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (err) {
      throw new ProviderError(`cannot run ${JSON.stringify(program)}${cwd === undefined ? '' : ` in ${cwd}`}: ${(err as Error).message}`, { retryable: false, cause: err });
    }
    const pid = child.pid as number;
    // Listened for at once: a command that exits at once (a shell that puts its server in the
    // background, a bad flag) is gone before the start time below is read, and an 'exit'
    // emitted before anyone listens is lost; the instance would say running for ever.
    const exit: { early?: { readonly code: number | null; readonly sig: NodeJS.Signals | null }; to?: (code: number | null, sig: NodeJS.Signals | null) => void } = {};
    child.once('exit', (code, sig) => {
      if (exit.to === undefined) exit.early = { code, sig };
      else exit.to(code, sig);
    });
    const record: ProcessRecord = {
      resourceId: ref.resourceId, instanceKey: ref.instanceKey, pid, pgid: pid, port,
      endpoint: `http://${this.#host.includes(':') ? `[${this.#host}]` : this.#host}:${port}`,
      startedAt: Date.now(), procStartTime: (await processStartTime(pid)) ?? '',
    };
    const entry: Entry = {
      resourceId: ref.resourceId, instanceKey: ref.instanceKey, record, child, log,
      logFile: undefined, exit: undefined, stopRequested: false, stopping: undefined, reaping: undefined, fileOps: Promise.resolve(),
    };
    this.#entries.set(keyOf(ref), entry);
    logFile = () => entry.logFile;
    // A spawned child can still emit 'error' (e.g. a failed kill); it must never crash the proxy.
    child.on('error', (err) => this.#log?.warn({ resource: ref.resourceId, instance: ref.instanceKey, pid, err: err.message }, 'child process error'));
    exit.to = (code, sig) => this.#onExit(entry, code, sig);
    if (exit.early !== undefined) this.#onExit(entry, exit.early.code, exit.early.sig);
    if (this.#opts.logFile !== undefined) await this.#openLogFile(entry, fill(this.#opts.logFile, vars));

    entry.fileOps = entry.fileOps.then(async () => {
      if (entry.exit === undefined) await writeRecord(this.#opts.stateDir, record);
    });
    try {
      await entry.fileOps;
    } catch (err) {
      // Without a state file a restarted proxy would start a second copy: refuse to run unrecorded.
      signalGroup(pid, 'SIGKILL');
      this.#entries.delete(keyOf(ref));
      throw new ProviderError(`cannot write the state file in ${this.#opts.stateDir}: ${(err as Error).message}`, { retryable: false, cause: err });
    }
    this.#log?.info({ resource: ref.resourceId, instance: ref.instanceKey, pid, port, argv }, 'process started');
    return entry;
  }

  async #openLogFile(entry: Entry, file: string): Promise<void> {
    try {
      await mkdir(dirname(file), { recursive: true });
      const stream = createWriteStream(file, { flags: 'a' });
      stream.on('error', (err) => {
        this.#log?.warn({ resource: entry.resourceId, instance: entry.instanceKey, file, err: err.message }, 'process log file failed; output kept in memory only');
        entry.logFile = undefined;
      });
      entry.logFile = stream;
    } catch (err) {
      this.#log?.warn({ resource: entry.resourceId, instance: entry.instanceKey, file, err: (err as Error).message }, 'cannot open process log file');
    }
  }

  #onExit(entry: Entry, code: number | null, sig: NodeJS.Signals | null): void {
    entry.exit = { code, signal: sig, known: true };
    const fields = { resource: entry.resourceId, instance: entry.instanceKey, pid: entry.record.pid, code, signal: sig };
    if (entry.stopRequested) this.#log?.info(fields, 'process exited after stop');
    else this.#log?.warn({ ...fields, output: entry.log.tail(2000) }, 'process exited unexpectedly');
    entry.logFile?.end();
    entry.logFile = undefined;
    entry.fileOps = entry.fileOps.catch(() => undefined).then(() => removeRecord(this.#opts.stateDir, entry.resourceId, entry.instanceKey))
      .catch((err: unknown) => this.#log?.warn({ ...fields, err: (err as Error).message }, 'cannot remove state file'));
    // The instance is over when its command is: whatever it started in its process group
    // (a server it put in the background, a worker) is ended too, as systemd does with a
    // service's control group, instead of living on unseen, holding the port.
    if (!entry.stopRequested) this.#reap(entry).catch((err: unknown) => this.#log?.warn({ ...fields, err: (err as Error).message }, 'cannot end what the process left behind'));
  }

  /**
   * Ends what is left of the process group of a command that has exited: SIGTERM, SIGKILL
   * after `stopGraceMs`. One run per entry; resolves at once when the group is empty.
   */
  #reap(entry: Entry): Promise<void> {
    entry.reaping ??= (async () => {
      const { pgid } = entry.record;
      if (!groupAlive(pgid)) return;
      const fields = { resource: entry.resourceId, instance: entry.instanceKey, pid: entry.record.pid };
      this.#log?.warn(fields, 'process exited; ending what it left running in its process group');
      signalGroup(pgid, 'SIGTERM');
      if (await this.#waitGone(entry, this.#stopGraceMs)) return;
      signalGroup(pgid, 'SIGKILL');
      if (!await this.#waitGone(entry, KILL_WAIT_MS)) {
        throw new ProviderError(`process group ${pgid} is still alive ${KILL_WAIT_MS} ms after SIGKILL`, { retryable: true });
      }
    })();
    return entry.reaping;
  }

  async inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    throwIfAborted(signal, 'inspect');
    const entry = this.#entries.get(keyOf(ref)) ?? await this.#adoptFromFile(ref.resourceId, ref.instanceKey);
    throwIfAborted(signal, 'inspect');
    if (entry === undefined) return { state: 'stopped' };
    const handle = String(entry.record.pid);
    if (entry.stopping !== undefined) return { state: 'stopping', handle };
    if (entry.exit === undefined && entry.child === undefined && !await this.#alive(entry)) {
      // An adopted process has no exit event: its absence from /proc is the exit.
      entry.exit = { code: null, signal: null, known: false };
      await removeRecord(this.#opts.stateDir, entry.resourceId, entry.instanceKey).catch(() => undefined);
    }
    if (entry.exit !== undefined) {
      if (entry.stopRequested) return { state: 'stopped' };
      return { state: 'failed', handle, reason: this.#exitReason(entry) };
    }
    return { state: 'running', endpoint: entry.record.endpoint, handle };
  }

  #exitReason(entry: Entry): string {
    const e = entry.exit;
    if (e === undefined) return '';
    let what: string;
    if (!e.known) what = `process ${entry.record.pid} is gone (adopted after a restart: exit status unknown)`;
    else if (e.signal !== null) what = `process ${entry.record.pid} was killed by ${e.signal}`;
    else what = `process ${entry.record.pid} exited with code ${e.code ?? '?'}`;
    const tail = entry.log.tail(500).trim();
    return tail === '' ? what : `${what}; last output: ${tail}`;
  }

  async stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal, 'stop');
    // A start still spawning (its caller gave up waiting, say) would leave a process nobody
    // stops: the stop waits for it, then stops what it started.
    const spawning = this.#starting.get(keyOf(ref));
    if (spawning !== undefined) await raceAbort(spawning.catch(() => undefined), signal, 'stop');
    const entry = this.#entries.get(keyOf(ref)) ?? await this.#adoptFromFile(ref.resourceId, ref.instanceKey);
    if (entry === undefined) return;
    entry.stopRequested = true;
    if (entry.exit !== undefined) {
      // The command is gone; what it left in its group is not (or is being ended).
      await raceAbort(this.#reap(entry), signal, 'stop');
      this.#forget(entry);
      return;
    }
    entry.stopping ??= this.#terminate(entry).finally(() => {
      entry.stopping = undefined;
    });
    await raceAbort(entry.stopping, signal, 'stop');
  }

  /** SIGTERM to the group, SIGKILL after the grace period, until no process of the group is left. */
  async #terminate(entry: Entry): Promise<void> {
    const { pgid } = entry.record;
    const fields = { resource: entry.resourceId, instance: entry.instanceKey, pid: entry.record.pid };
    signalGroup(pgid, 'SIGTERM');
    if (!await this.#waitGone(entry, this.#stopGraceMs)) {
      this.#log?.warn({ ...fields, stopGraceMs: this.#stopGraceMs }, 'process group ignored SIGTERM; sending SIGKILL');
      signalGroup(pgid, 'SIGKILL');
      if (!await this.#waitGone(entry, KILL_WAIT_MS)) {
        throw new ProviderError(`process group ${pgid} is still alive ${KILL_WAIT_MS} ms after SIGKILL`, { retryable: true });
      }
    }
    entry.exit ??= { code: null, signal: 'SIGTERM', known: false };
    await entry.fileOps.catch(() => undefined);
    await removeRecord(this.#opts.stateDir, entry.resourceId, entry.instanceKey);
    this.#forget(entry);
  }

  /** Resolves true once the leader has exited (own child) and the group is empty, false after `ms`. */
  async #waitGone(entry: Entry, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    for (;;) {
      const leaderDone = entry.child === undefined || entry.exit !== undefined;
      if (leaderDone && !groupAlive(entry.record.pgid)) return true;
      if (Date.now() >= until) return false;
      await new Promise<void>((resolve) => setTimeout(resolve, GROUP_POLL_MS));
    }
  }

  async list(signal: AbortSignal): Promise<ListedInstance[]> {
    throwIfAborted(signal, 'list');
    const records = await readAllRecords(this.#opts.stateDir, (file, why) => this.#log?.warn({ file, why }, 'ignoring a malformed process state file'));
    const out: ListedInstance[] = [];
    for (const rec of records) {
      throwIfAborted(signal, 'list');
      const entry = this.#entries.get(`${rec.resourceId}\0${rec.instanceKey}`) ?? await this.#adoptFromFile(rec.resourceId, rec.instanceKey);
      if (entry === undefined || entry.exit !== undefined || entry.stopping !== undefined) continue;
      out.push({ resourceId: entry.resourceId, instanceKey: entry.instanceKey, state: 'running', endpoint: entry.record.endpoint, handle: String(entry.record.pid) });
    }
    return out;
  }

  /** The output kept in memory for an instance (diagnostics, admin API). */
  output(ref: InstanceRef): { readonly text: string; readonly droppedBytes: number } | undefined {
    const key = keyOf(ref);
    const entry = this.#entries.get(key);
    if (entry === undefined) return this.#lastRuns.get(key);
    return { text: entry.log.text(), droppedBytes: entry.log.droppedBytes };
  }

  /** Releases pipes and listeners so the proxy can exit; the processes keep running. */
  async close(): Promise<void> {
    for (const entry of this.#entries.values()) {
      entry.child?.unref();
      for (const s of [entry.child?.stdout, entry.child?.stderr]) {
        (s as { unref?: () => void } | null | undefined)?.unref?.();
      }
      entry.logFile?.end();
      entry.logFile = undefined;
      await entry.fileOps.catch(() => undefined);
    }
  }

  /** Adopts the process a state file names, if it still runs as the same process; else cleans up. */
  async #adoptFromFile(resourceId: string, instanceKey: string): Promise<Entry | undefined> {
    const record = await readRecord(this.#opts.stateDir, resourceId, instanceKey);
    if (record === undefined) return undefined;
    const existing = this.#entries.get(`${resourceId}\0${instanceKey}`);
    if (existing !== undefined) return existing;
    const startTime = await processStartTime(record.pid);
    if (startTime === undefined || record.procStartTime === '' || startTime !== record.procStartTime) {
      // Gone, or the pid now names another program (pid reuse): never signal it.
      await removeRecord(this.#opts.stateDir, resourceId, instanceKey).catch(() => undefined);
      return undefined;
    }
    const entry: Entry = {
      resourceId, instanceKey, record, child: undefined, log: new LogRing(0), logFile: undefined,
      exit: undefined, stopRequested: false, stopping: undefined, reaping: undefined, fileOps: Promise.resolve(),
    };
    this.#entries.set(`${resourceId}\0${instanceKey}`, entry);
    this.#log?.info({ resource: resourceId, instance: instanceKey, pid: record.pid, port: record.port }, 'process re-adopted');
    return entry;
  }

  async #alive(entry: Entry): Promise<boolean> {
    if (entry.child !== undefined) return entry.exit === undefined;
    return (await processStartTime(entry.record.pid)) === entry.record.procStartTime;
  }

  #forget(entry: Entry): void {
    const key = `${entry.resourceId}\0${entry.instanceKey}`;
    if (this.#entries.get(key) === entry) this.#entries.delete(key);
    // An adopted process has no output of ours to keep.
    if (entry.child !== undefined) {
      const how = entry.exit === undefined ? 'ended' : entry.exit.code !== null ? `exited with code ${entry.exit.code}` : `ended by ${entry.exit.signal ?? 'a signal'}`;
      this.#lastRuns.delete(key);
      const text = entry.log.text();
      this.#lastRuns.set(key, { text: `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}[smart-proxy: this run ${how}; pid ${entry.record.pid}]\n`, droppedBytes: entry.log.droppedBytes });
      if (this.#lastRuns.size > LAST_RUNS) this.#lastRuns.delete(this.#lastRuns.keys().next().value!);
    }
    entry.child?.stdout?.destroy();
    entry.child?.stderr?.destroy();
    entry.logFile?.end();
    entry.logFile = undefined;
  }
}

export function createProcessProvider(options: ProcessProviderOptions): ProcessProvider {
  return new ProcessProvider(options);
}

function keyOf(ref: InstanceRef): string {
  return `${ref.resourceId}\0${ref.instanceKey}`;
}

const placeholderRe = /\{([A-Za-z]+)\}/g;

function checkPlaceholders(template: string): void {
  for (const m of template.matchAll(placeholderRe)) {
    if (!(placeholderNames as readonly string[]).includes(m[1] as string)) {
      throw new Error(`process provider: unknown placeholder {${m[1]}} in ${JSON.stringify(template)} (known: ${placeholderNames.map((n) => `{${n}}`).join(', ')})`);
    }
  }
}

function fill(template: string, vars: Readonly<Record<string, string>>): string {
  return template.replace(placeholderRe, (whole, name: string) => vars[name] ?? whole);
}

function abortError(what: string, signal: AbortSignal): ProviderError {
  return new ProviderError(`process provider: ${what} aborted`, { retryable: true, cause: signal.reason });
}

function throwIfAborted(signal: AbortSignal, what: string): void {
  if (signal.aborted) throw abortError(what, signal);
}

/** Awaits `p` unless `signal` aborts first; the work behind `p` goes on (it is shared). */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(what, signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(what, signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
