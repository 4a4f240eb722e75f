#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks drive for real, and says which and why.
# Idempotent: installs only what is missing, and does nothing when everything is present.
# Needs root for apt-get (CI and dev machines run as root).
set -euo pipefail

pkgs=()
why=()
declare -A seen=()
need() { # need PACKAGE... REASON
  local reason="${*: -1}"
  local p
  for p in "${@:1:$#-1}"; do
    [ -n "${seen[$p]:-}" ] && continue
    seen[$p]=1
    pkgs+=("$p")
    why+=("  $p: $reason")
  done
}

command -v chromium >/dev/null 2>&1 || need chromium fonts-dejavu-core "the waiting page is tested in a real browser"
command -v curl >/dev/null 2>&1 || need curl "the demo's printed commands are run as printed"
command -v openssl >/dev/null 2>&1 || need openssl "TLS tests make throw-away certificates"
# qemu provider tests (scripts/build-test-vm.sh): QEMU, the Debian cloud kernel (lz4, virtio as
# modules), busybox for the initramfs, cpio/lz4 to pack and unpack it.
command -v qemu-system-x86_64 >/dev/null 2>&1 || need qemu-system-x86 "the qemu provider boots real VMs"
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need linux-image-cloud-amd64 "the kernel of the test VM"
{ [ -x /bin/busybox ] && command -v file >/dev/null 2>&1 && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; } \
  || need busybox-static file "the test VM's and test container's userland"
command -v cpio >/dev/null 2>&1 || need cpio "packs the test VM's initramfs"
command -v lz4 >/dev/null 2>&1 || need lz4 "unpacks the cloud kernel's modules"
# docker provider tests: a private Podman Docker-API service (scripts/podman/podman.sh). runc
# explicitly (Debian's default crun fails on hybrid cgroup hosts), slirp4netns for networking
# without a host bridge.
for p in podman runc slirp4netns; do
  dpkg -s "$p" >/dev/null 2>&1 || need "$p" "the docker provider runs real containers (Podman's Docker API)"
done
# replica tests: a private redis-server killed and restarted (and CI's own Redis); nginx in
# front of the replicas (docs/operations/replicas.md).
command -v redis-server >/dev/null 2>&1 || need redis-server "replicas share state on Redis; tests kill and restart one"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need nginx "the documented load balancer config runs in front of replicas"
# front-proxy mode's Lua decision cache (test/front/nginx-lua.test.ts, `nginx-config --cache
# lua`): lua-nginx-module with NDK and lua-resty-core, loaded by nginx from /usr/lib/nginx/modules.
dpkg -s libnginx-mod-http-lua >/dev/null 2>&1 || need libnginx-mod-http-lua "front-proxy mode keeps decisions in nginx's memory with Lua (nginx-config --cache lua)"
# front-proxy mode's second front proxy (test/front/haproxy-front.test.ts): HAProxy with Lua.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need haproxy "front-proxy mode is tested behind HAProxy as well as nginx"

if [ ${#pkgs[@]} -eq 0 ]; then
  echo "install-system-deps: every system package the tests need is present"
  exit 0
fi
echo "install-system-deps: installing ${#pkgs[@]} Debian package(s):"
printf '%s\n' "${why[@]}"
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: needs root for apt-get: run it with sudo, or install the packages above yourself" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: apt-get update…"
apt-get update -qq
echo "install-system-deps: apt-get install (a few minutes on a fresh machine: chromium and qemu are large)…"
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "install-system-deps: done"
