/**
 * The QEMU command line, as a pure function of the provider's options and one VM's sockets
 * and port. The defaults are the fastest configuration measured on this project's machines
 * (docs/providers/qemu.md): microvm, TCG, PVH entry into an uncompressed kernel, virtio-net,
 * no default devices, and a kernel command line that skips timer calibration.
 */
import { readFileSync } from 'node:fs';

export interface QemuMachineOptions {
  readonly qemuBinary: string;
  /** `microvm` (fastest; no firmware, no PCI) or any machine QEMU knows (`q35`, `pc`). */
  readonly machine: string;
  /**
   * Always explicit: `accel=kvm:tcg` does not fall back when /dev/kvm opens but cannot run the
   * guest (kvm_pvm on these hosts), so `tcg` is the safe default.
   */
  readonly accel: string;
  readonly cpu: string;
  readonly memoryMiB: number;
  readonly kernelPath?: string | undefined;
  readonly initrdPath?: string | undefined;
  /** Attached as a virtio disk with `snapshot=on`: guest writes never reach the file. */
  readonly diskImagePath?: string | undefined;
  /** Replaces the default kernel command line entirely. */
  readonly kernelCmdline?: string | undefined;
  /** Appended to the (default or given) kernel command line. */
  readonly kernelCmdlineExtra?: string | undefined;
  /** Guest TSC rate for `tsc_early_khz`; read from the host when not set. */
  readonly tscKhz?: number | undefined;
  readonly guestPort: number;
  readonly hostAddress: string;
  readonly extraArgs: readonly string[];
}

export interface VmLaunch {
  /** Short name, also passed to the guest as `vmid=` on the kernel command line. */
  readonly vmName: string;
  readonly qmpSocketPath: string;
  readonly consoleSocketPath: string;
  readonly hostPort: number;
  /**
   * Guest RAM as this file, mapped shared (`memory-backend-file,share=on`), instead of
   * anonymous memory. A suspend then saves only the device state (`x-ignore-shared`) and
   * leaves the RAM in the file, and a restore maps the file again: no copy of the guest's
   * memory either way, and pages are read only when the guest touches them.
   */
  readonly ramFilePath?: string | undefined;
  /**
   * Start waiting for an incoming migration (`-incoming defer`) instead of booting: the
   * provider sets the migration capabilities over QMP, then runs `migrate-incoming`.
   */
  readonly incoming?: boolean | undefined;
}

/** The host's TSC rate in kHz from /proc/cpuinfo; under TCG the guest TSC runs at it. */
export function hostTscKhz(): number {
  try {
    const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1] !== undefined) return Math.round(Number(m[1]) * 1000);
  } catch {
    // not Linux, or /proc hidden: fall through
  }
  return 2_000_000;
}

/**
 * The tuned kernel command line. `tsc_early_khz` is required on microvm: it has no PIT, HPET
 * or PM timer to calibrate the TSC against, and without it the kernel marks the TSC unstable
 * and hangs. `lpj` and `no_timer_check` skip delay-loop calibration; `cryptomgr.notests`
 * skips self-tests: together about 0.4 s of a 1.5 s boot.
 */
export function defaultKernelCmdline(tscKhz: number): string {
  return [
    'console=ttyS0', 'quiet', 'loglevel=0', `tsc_early_khz=${tscKhz}`, 'tsc=reliable', `lpj=${tscKhz * 4}`,
    'no_timer_check', 'mitigations=off', 'random.trust_cpu=on', 'cryptomgr.notests', 'i8042.noaux', 'i8042.nokbd',
    'noreplace-smp',
  ].join(' ');
}

/** QEMU's option parser splits on commas; a literal comma is written twice. */
function escapeOpt(value: string): string {
  return value.replaceAll(',', ',,');
}

export function buildQemuArgs(o: QemuMachineOptions, vm: VmLaunch): string[] {
  const microvm = o.machine === 'microvm' || o.machine.startsWith('microvm,');
  const machine = vm.ramFilePath === undefined ? o.machine : `${o.machine},memory-backend=ram0`;
  const args = [
    '-M', machine, '-accel', o.accel, '-cpu', o.cpu, '-smp', '1', '-m', String(o.memoryMiB),
    '-nodefaults', '-no-user-config', '-display', 'none',
    // The console is a socket the provider reads, not stdio, so the VM survives a proxy
    // restart and the console can be re-attached. wait=on: QEMU blocks until the provider
    // has connected, so no boot output (the READY line) is lost.
    '-chardev', `socket,id=con0,path=${escapeOpt(vm.consoleSocketPath)},server=on,wait=on`,
    '-serial', 'chardev:con0',
    '-qmp', `unix:${escapeOpt(vm.qmpSocketPath)},server=on,wait=off`,
  ];
  if (vm.ramFilePath !== undefined) {
    args.push('-object', `memory-backend-file,id=ram0,size=${o.memoryMiB}M,mem-path=${escapeOpt(vm.ramFilePath)},share=on`);
  }
  if (o.kernelPath !== undefined) {
    const cmdline = [o.kernelCmdline ?? defaultKernelCmdline(o.tscKhz ?? hostTscKhz()), o.kernelCmdlineExtra, `vmid=${vm.vmName}`]
      .filter((s) => s !== undefined && s !== '').join(' ');
    args.push('-kernel', o.kernelPath, '-append', cmdline);
    if (o.initrdPath !== undefined) args.push('-initrd', o.initrdPath);
  }
  if (o.diskImagePath !== undefined) {
    args.push('-drive', `id=disk0,if=none,snapshot=on,file=${escapeOpt(o.diskImagePath)}`,
      '-device', microvm ? 'virtio-blk-device,drive=disk0' : 'virtio-blk-pci,drive=disk0');
  }
  args.push(
    '-netdev', `user,id=net0,hostfwd=tcp:${o.hostAddress}:${vm.hostPort}-:${o.guestPort}`,
    // The Debian cloud kernel has no e1000; virtio-net also links up ~3 s sooner.
    '-device', microvm ? 'virtio-net-device,netdev=net0' : 'virtio-net-pci,netdev=net0',
  );
  args.push(...o.extraArgs);
  if (vm.incoming === true) args.push('-incoming', 'defer');
  return args;
}

/** For `exec:` migration URIs, which QEMU runs through /bin/sh. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
