#!/usr/bin/env bash
# Builds the tiny test VM the qemu provider's tests and examples/qemu.yaml boot:
#   var/vm/vmlinux         uncompressed kernel (PVH entry: QEMU skips real mode and decompression)
#                          or var/vm/bzImage when no ELF payload could be extracted
#   var/vm/initrd.cpio     busybox-static + virtio-net modules + /init (static IP for slirp,
#                          busybox httpd on :80 serving / and /health, prints READY on ttyS0).
#                          Uncompressed, with the applet links made here and the modules'
#                          signatures cut off: each of these is work the guest would otherwise
#                          do under TCG at every boot (see docs/providers/qemu.md, "Boot time").
#   var/vm/manifest.json   what was built from what; the provider and tests read it
#
# Only Debian packages are used: linux-image-cloud-amd64 (the cloud kernel: lz4-compressed, no
# e1000, virtio as modules), busybox-static, cpio, gzip, lz4. Idempotent: when the inputs (kernel,
# busybox, this script and scripts/vm/*) have not changed, it exits at once.
#
# Usage: scripts/build-test-vm.sh [OUT_DIR]      (default: var/vm under the repository root)
# Env:   VM_KERNEL=/boot/vmlinuz-…  pick a kernel (default: newest *-cloud-amd64, else newest any)
#        VM_FORCE_BZIMAGE=1         skip vmlinux extraction (boots ~0.3 s slower)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-$root/var/vm}"

die() { echo "build-test-vm: $*" >&2; exit 1; }

# --- inputs ---------------------------------------------------------------------------------
kernel="${VM_KERNEL:-}"
if [ -z "$kernel" ]; then
  kernel="$(ls -1v /boot/vmlinuz-*-cloud-amd64 2>/dev/null | tail -n 1 || true)"
  [ -n "$kernel" ] || kernel="$(ls -1v /boot/vmlinuz-* 2>/dev/null | tail -n 1 || true)"
fi
[ -n "$kernel" ] && [ -r "$kernel" ] || die "no kernel in /boot: install one (apt-get install linux-image-cloud-amd64), or set VM_KERNEL"
kver="${kernel##*/vmlinuz-}"
moddir="/lib/modules/$kver/kernel"
[ -d "$moddir" ] || die "no modules for $kver in /lib/modules/$kver: the kernel package looks incomplete"
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || die "no busybox: install busybox-static"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [ "$(ldd "$busybox" 2>&1 | grep -c 'not a dynamic')" = 1 ] \
  || die "$busybox is not statically linked: install busybox-static"
for tool in cpio gzip od truncate; do command -v "$tool" >/dev/null || die "missing $tool (apt-get install $tool)"; done

# Virtio network modules in dependency order (from each .ko's depends=; there may be no
# modules.dep, so no modprobe). button+evdev let /init turn QMP system_powerdown
# into a clean poweroff.
modules="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/virtio/virtio_mmio
net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/acpi/button drivers/input/evdev"

stamp="$( {
  echo "$kernel $(stat -c '%s %Y' "$kernel") ${VM_FORCE_BZIMAGE:-0}"
  echo "$busybox $(stat -L -c '%s %Y' "$busybox")"
  cat "$0" "$here"/vm/*
} | sha256sum | cut -d' ' -f1)"
if [ -f "$out/manifest.json" ] && grep -q "\"stamp\": \"$stamp\"" "$out/manifest.json"; then
  echo "build-test-vm: up to date in $out"
  exit 0
fi

mkdir -p "$out"
work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- kernel: extract the uncompressed ELF from the bzImage ----------------------------------
# Like the kernel's scripts/extract-vmlinux: find each compression magic in the bzImage, try to
# decompress from there, keep the first result that is an ELF file.
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' \n')" = '177ELF' ]; }
try_decompress() { # magic-as-grep-pattern tool...
  local magic="$1"; shift
  local off
  for off in $(LC_ALL=C grep -obUaP "$magic" "$kernel" | cut -d: -f1); do
    tail -c "+$((off + 1))" "$kernel" | "$@" > "$work/vmlinux" 2>/dev/null || true
    if [ -s "$work/vmlinux" ] && is_elf "$work/vmlinux"; then return 0; fi
  done
  return 1
}
kernel_file=bzImage
if [ "${VM_FORCE_BZIMAGE:-0}" != 1 ]; then
  if { command -v lz4 >/dev/null && try_decompress '\x02\x21\x4c\x18' lz4 -dc; } \
    || { command -v xz >/dev/null && try_decompress '\xfd\x37\x7a\x58\x5a\x00' xz -dc; } \
    || try_decompress '\x1f\x8b\x08' gzip -dc \
    || { command -v zstd >/dev/null && try_decompress '\x28\xb5\x2f\xfd' zstd -dc; }; then
    kernel_file=vmlinux
  else
    echo "build-test-vm: could not extract vmlinux (is lz4 installed?); using the bzImage" >&2
  fi
fi
if [ "$kernel_file" = bzImage ]; then cp "$kernel" "$work/bzImage"; fi

# --- initramfs -------------------------------------------------------------------------------
# A module's appended signature: [module][signature][struct module_signature: 12 bytes, the
# last 4 = signature length, big-endian]["~Module signature appended~\n"]. Without it the
# kernel loads the module anyway (sig_enforce is off) and skips the SHA-256 + RSA check,
# ~15 % of the guest's instructions to READY (measured with -icount; docs/providers/qemu.md).
strip_module_signature() {
  local f="$1" size siglen
  [ "$(tail -c 28 "$f" | head -c 27)" = '~Module signature appended~' ] || return 0
  size="$(stat -c %s "$f")"
  siglen="$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }')"
  [ "$siglen" -gt 0 ] && [ "$siglen" -lt "$size" ] || die "unexpected module signature trailer in $f"
  truncate -s "$((size - 28 - 12 - siglen))" "$f"
}

ir="$work/initrd"
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,www,lib/modules}
cp "$busybox" "$ir/bin/busybox"
# The applet links, made here rather than by `busybox --install` at every boot.
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$ir/bin/$applet"
done
for m in $modules; do
  src="$moddir/$m.ko"
  [ -f "$src" ] || src="$(ls "$moddir/$m".ko* 2>/dev/null | head -n 1 || true)"
  [ -n "$src" ] && [ -f "$src" ] || die "module $m missing under $moddir"
  case "$src" in
    *.ko) cp "$src" "$ir/lib/modules/" ;;
    *.ko.xz) xz -dc "$src" > "$ir/lib/modules/$(basename "$m").ko" ;;
    *.ko.zst) zstd -dc "$src" > "$ir/lib/modules/$(basename "$m").ko" ;;
    *) die "unsupported module compression: $src" ;;
  esac
  strip_module_signature "$ir/lib/modules/$(basename "$m").ko"
  echo "$(basename "$m").ko" >> "$ir/lib/modules/order"
done
install -m 0755 "$here/vm/init" "$ir/init"
# Uncompressed: the kernel copies it into its rootfs instead of inflating ~2.5 MB under TCG.
(cd "$ir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) > "$work/initrd.cpio"

# --- publish atomically-ish: files first, manifest last (it is the "done" marker) -------------
rm -f "$out/manifest.json" "$out/vmlinux" "$out/bzImage" "$out/initrd.cpio.gz"
mv "$work/$kernel_file" "$out/$kernel_file"
mv "$work/initrd.cpio" "$out/initrd.cpio"
cat > "$work/manifest.json" <<JSON
{
  "kernel": "$kernel_file",
  "initrd": "initrd.cpio",
  "kernelSource": "$kernel",
  "kernelVersion": "$kver",
  "guestPort": 80,
  "consoleReadyMarker": "READY",
  "stamp": "$stamp"
}
JSON
mv "$work/manifest.json" "$out/manifest.json"
echo "build-test-vm: built $out/$kernel_file ($(du -h "$out/$kernel_file" | cut -f1)) and $out/initrd.cpio ($(du -h "$out/initrd.cpio" | cut -f1)) from $kver"
