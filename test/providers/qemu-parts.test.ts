/** The qemu provider's small parts, without a VM: console buffer, boot gate, command line. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadConfigFile, parseConfig } from '../../src/config/load.ts';
import { BootGate } from '../../src/providers/qemu/boot-gate.ts';
import { buildQemuArgs, defaultKernelCmdline } from '../../src/providers/qemu/command-line.ts';
import { ConsoleBuffer } from '../../src/providers/qemu/console-buffer.ts';
import { qemuProviderDefaults } from '../../src/providers/qemu/qemu-provider.ts';

void describe('ConsoleBuffer', () => {
  void it('finds the marker split across chunks and behind escape sequences', () => {
    const c = new ConsoleBuffer(1024, 'READY');
    let fired = 0;
    c.onMarker(() => fired++);
    c.write(Buffer.from('c\x1b[?7l\x1b[2JRE'));
    assert.equal(c.markerSeen, false);
    c.write(Buffer.from('ADY vmid=x\n'));
    assert.equal(c.markerSeen, true);
    assert.equal(fired, 1);
    c.onMarker(() => fired++);
    assert.equal(fired, 2, 'a late listener is called at once');
  });

  void it('keeps only the last maxBytes', () => {
    const c = new ConsoleBuffer(10);
    c.write(Buffer.from('0123456789'));
    c.write(Buffer.from('abcdef'));
    assert.equal(c.text(), '6789abcdef');
    assert.equal(c.totalBytes, 16);
    assert.equal(c.tail(3), 'def');
  });
});

void describe('BootGate', () => {
  void it('lets `limit` boots through, queues the rest in order, and honours abort and pause', async () => {
    const gate = new BootGate(2);
    const r1 = await gate.acquire();
    const r2 = await gate.acquire();
    const order: string[] = [];
    const third = gate.acquire().then((r) => { order.push('third'); return r; });
    const ac = new AbortController();
    const aborted = gate.acquire(ac.signal);
    const fourth = gate.acquire().then((r) => { order.push('fourth'); return r; });
    assert.equal(gate.queued, 3);
    ac.abort(new Error('gone'));
    await assert.rejects(aborted, /gone/);
    r1();
    r1(); // idempotent: frees one slot only
    const r3 = await third;
    assert.deepEqual(order, ['third']);
    const resume = gate.pause();
    r2();
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(order, ['third'], 'paused: the freed slot is not handed on');
    resume();
    const r4 = await fourth;
    assert.deepEqual(order, ['third', 'fourth']);
    r3();
    r4();
    assert.equal(gate.inUse, 0);
  });
});

void describe('buildQemuArgs', () => {
  const base = { ...qemuProviderDefaults, kernelPath: '/k/vmlinux', initrdPath: '/k/initrd', tscKhz: 2_000_000 };
  const vm = { vmName: 'abc', qmpSocketPath: '/s/qmp', consoleSocketPath: '/s/con', hostPort: 4321 };

  void it('is explicit about TCG, forwards the host port to the guest port, and names the VM', () => {
    const args = buildQemuArgs(base, vm);
    assert.deepEqual(args.slice(0, 4), ['-M', 'microvm', '-accel', 'tcg']);
    assert.ok(args.includes('user,id=net0,hostfwd=tcp:127.0.0.1:4321-:80'));
    assert.ok(args.includes('virtio-net-device,netdev=net0'));
    const append = args[args.indexOf('-append') + 1] ?? '';
    assert.match(append, /tsc_early_khz=2000000 .*vmid=abc$/);
    assert.ok(!args.includes('-incoming'));
  });

  void it('restores with -incoming defer, maps RAM from a file, uses PCI devices off microvm, and doubles commas in paths', () => {
    const args = buildQemuArgs({ ...base, machine: 'q35', diskImagePath: '/d/a,b.img' }, { ...vm, incoming: true, ramFilePath: '/s/r,am' });
    assert.deepEqual(args.slice(-2), ['-incoming', 'defer']);
    assert.deepEqual(args.slice(0, 2), ['-M', 'q35,memory-backend=ram0']);
    assert.ok(args.includes('memory-backend-file,id=ram0,size=256M,mem-path=/s/r,,am,share=on'));
    assert.ok(args.includes('virtio-net-pci,netdev=net0'));
    assert.ok(args.includes('id=disk0,if=none,snapshot=on,file=/d/a,,b.img'));
  });

  void it('defaults to the tuned kernel command line', () => {
    assert.match(defaultKernelCmdline(1000), /^console=ttyS0 .*tsc_early_khz=1000 tsc=reliable lpj=4000 /);
  });
});

void describe('qemu config', () => {
  void it('examples/qemu.yaml is valid and explicit about TCG', async () => {
    const cfg = await loadConfigFile(new URL('../../examples/qemu.yaml', import.meta.url).pathname);
    const p = cfg.providers['testvm'];
    assert.equal(p?.kind, 'qemu');
    assert.equal(p.kind === 'qemu' && p.accel, 'tcg');
    assert.equal(p.kind === 'qemu' && p.suspendOnStop, true);
  });

  void it('a qemu provider with neither kernel nor disk is rejected, naming the field', () => {
    assert.throws(() => parseConfig('providers: { q: { kind: qemu } }\nresources: { vm: { provider: q } }\n'),
      /providers\.q\.kernelPath: needs kernelPath \(with initrdPath\) or diskImagePath/);
  });
});
