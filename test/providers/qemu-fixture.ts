/**
 * Shared set-up for the qemu tests: the test VM (built by scripts/build-test-vm.sh, cached in
 * var/vm), a short state directory per test (unix socket paths are limited to 107 bytes), and
 * a /proc scan that finds every QEMU process a test started, so none outlives the test.
 *
 * When QEMU or the kernel package is missing, `ensureTestVm` throws with the fix: these
 * tests fail loudly rather than pass without having run a VM.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from '../../src/core/ports.ts';
import { requireBinary } from '../helpers/system.ts';
import { createQemuProvider, type QemuProvider, type QemuProviderOptions, type QemuVmEvent } from '../../src/providers/qemu/qemu-provider.ts';

const run = promisify(execFile);
const repoRoot = resolve(import.meta.dirname, '../..');

export interface TestVm {
  readonly kernelPath: string;
  readonly initrdPath: string;
  readonly consoleReadyMarker: string;
  readonly guestPort: number;
}

let built: Promise<TestVm> | undefined;

/** Builds (or reuses) the test VM once per test process. */
export function ensureTestVm(): Promise<TestVm> {
  built ??= (async () => {
    requireBinary('qemu-system-x86_64', 'qemu-system-x86');
    try {
      await run('qemu-system-x86_64', ['--version'], { timeout: 30_000 });
    } catch (err) {
      throw new Error(`the qemu tests need qemu-system-x86_64 (Debian package qemu-system-x86); run scripts/install-system-deps.sh as root. (${(err as Error).message})`, { cause: err });
    }
    try {
      await run('bash', [join(repoRoot, 'scripts/build-test-vm.sh')], { timeout: 180_000 });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`scripts/build-test-vm.sh failed; the qemu tests need linux-image-cloud-amd64, busybox-static, cpio and lz4 (run scripts/install-system-deps.sh as root): ${e.stderr?.trim() || e.message}`, { cause: err });
    }
    const dir = join(repoRoot, 'var/vm');
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { kernel: string; initrd: string; guestPort: number; consoleReadyMarker: string };
    return {
      kernelPath: join(dir, manifest.kernel),
      initrdPath: join(dir, manifest.initrd),
      consoleReadyMarker: manifest.consoleReadyMarker,
      guestPort: manifest.guestPort,
    };
  })();
  return built;
}

/** A provider on the test VM with its own state directory, and the tools to clean up after it. */
export interface QemuSubject {
  readonly provider: QemuProvider;
  readonly stateDir: string;
  readonly events: QemuVmEvent[];
  readonly logs: Array<{ level: string; obj: Record<string, unknown>; msg: string | undefined }>;
  /** Resolves with the first VM event (past or future) that matches. */
  nextEvent<T extends QemuVmEvent['type']>(type: T, match?: (e: Extract<QemuVmEvent, { type: T }>) => boolean, after?: number): Promise<Extract<QemuVmEvent, { type: T }>>;
  /** Another provider on the same state directory (a restarted proxy). */
  reopen(overrides?: Partial<QemuProviderOptions>): QemuProvider;
  /** Stops every VM, kills any QEMU left in the state dir, closes providers, removes the dir. */
  teardown(): Promise<void>;
}

export async function qemuSubject(overrides: Partial<QemuProviderOptions> = {}): Promise<QemuSubject> {
  const vm = await ensureTestVm();
  const stateDir = await mkdtemp(join(tmpdir(), 'spq-'));
  const events: QemuVmEvent[] = [];
  const eventWaiters = new Set<() => void>();
  const logs: QemuSubject['logs'] = [];
  const logger: Logger = Object.fromEntries((['debug', 'info', 'warn', 'error'] as const).map((level) =>
    [level, (obj: object, msg?: string) => { logs.push({ level, obj: obj as Record<string, unknown>, msg }); }])) as unknown as Logger;
  const options = (extra: Partial<QemuProviderOptions>): Partial<QemuProviderOptions> & { stateDir: string } => ({
    stateDir,
    kernelPath: vm.kernelPath,
    initrdPath: vm.initrdPath,
    guestPort: vm.guestPort,
    consoleReadyMarker: vm.consoleReadyMarker,
    accel: 'tcg',
    logger,
    onVmEvent: (e) => {
      events.push(e);
      for (const w of [...eventWaiters]) w();
    },
    ...overrides,
    ...extra,
  });
  const providers: QemuProvider[] = [];
  const open = (extra: Partial<QemuProviderOptions>): QemuProvider => {
    const p = createQemuProvider(options(extra));
    providers.push(p);
    return p;
  };
  const provider = open({});
  return {
    provider, stateDir, events, logs,
    nextEvent(type, match, after = 0) {
      type E = Extract<QemuVmEvent, { type: typeof type }>;
      const find = (): E | undefined => events.slice(after).find((e): e is E => e.type === type && (match?.(e as E) ?? true));
      return new Promise((resolveEvent) => {
        const check = (): void => {
          const found = find();
          if (found === undefined) return;
          eventWaiters.delete(check);
          resolveEvent(found);
        };
        eventWaiters.add(check);
        check();
      });
    },
    reopen: (extra = {}) => open(extra),
    async teardown() {
      const ac = AbortSignal.timeout(30_000);
      for (const p of providers) {
        await Promise.allSettled(p.vms().map((v) => p.stop({ resourceId: v.resourceId, instanceKey: v.instanceKey, groups: [] }, ac)));
      }
      for (const pid of await qemuPidsUnder(stateDir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      for (const p of providers) await p.close();
      eventWaiters.clear();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** Pids of QEMU processes whose command line points into `stateDir`. */
export async function qemuPidsUnder(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8');
      // Zombies have an empty cmdline and are not running VMs.
      if (cmdline.includes('qemu-system') && cmdline.includes(`${stateDir}/`)) pids.push(Number(entry));
    } catch {
      // exited while scanning
    }
  }
  return pids;
}
