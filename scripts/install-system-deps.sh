#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks drive for real. Idempotent: does
# nothing when everything is present. Needs root (CI and dev machines run as root).
set -euo pipefail
pkgs=()
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium fonts-dejavu-core)
# qemu provider tests (scripts/build-test-vm.sh): QEMU, the Debian cloud kernel (lz4, virtio as
# modules), busybox for the initramfs, cpio/lz4 to pack and unpack it.
command -v qemu-system-x86_64 >/dev/null 2>&1 || pkgs+=(qemu-system-x86)
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || pkgs+=(linux-image-cloud-amd64)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || pkgs+=(busybox-static file)
command -v cpio >/dev/null 2>&1 || pkgs+=(cpio)
command -v lz4 >/dev/null 2>&1 || pkgs+=(lz4)
# docker provider tests: a private Podman Docker-API service (scripts/podman/podman.sh). runc
# explicitly (Debian's default crun fails on hybrid cgroup hosts), slirp4netns for networking
# without a host bridge, busybox-static for the locally built test image (no registry).
for p in podman runc slirp4netns busybox-static; do
  dpkg -s "$p" >/dev/null 2>&1 || pkgs+=("$p")
done
# replica tests: a private redis-server killed and restarted (and CI's own Redis); nginx in
# front of the replicas (docs/operations/replicas.md).
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
[ -x /usr/sbin/nginx ] || pkgs+=(nginx)
# front-proxy mode's second front proxy (test/front/haproxy-front.test.ts): HAProxy with Lua.
[ -x /usr/sbin/haproxy ] || pkgs+=(haproxy)
[ ${#pkgs[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
