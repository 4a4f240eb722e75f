#!/usr/bin/env bash
# A private Podman that speaks the Docker Engine API, for the docker provider's tests and demo.
#
#   scripts/podman/podman.sh setup           write the private config, build the test image (idempotent)
#   scripts/podman/podman.sh serve SOCKET    setup, then run the API service on SOCKET in the foreground
#   scripts/podman/podman.sh start [SOCKET]  setup, then run the service in the background (pid file)
#   scripts/podman/podman.sh stop            stop the background service started by `start`
#   scripts/podman/podman.sh podman ARGS...  run the podman CLI against the private storage
#   scripts/podman/podman.sh node-base       import a local stand-in for the public Node 24 image
#                                            (this machine's node and npm, busybox): the Containerfile's
#                                            NODE_IMAGE when no registry is reachable
#
# Everything lives under $SMART_PROXY_PODMAN_DIR (default: <repo>/var/podman, gitignored), so the
# machine's own podman setup is neither read nor changed. The settings are the ones this machine
# kind needs (see docs/providers/docker.md): runc (crun fails on hybrid cgroups), cgroupfs and
# file events (no systemd), lowered default ulimits (no CAP_SYS_RESOURCE), slirp4netns networking
# (no host bridge or iptables changes), vfs storage (works on any backing filesystem), and a
# locally imported image (no registry is reachable).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${SMART_PROXY_PODMAN_DIR:-$repo/var/podman}"
image="localhost/smart-proxy/busybox-httpd:latest"

need() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
  command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
  # The image runs it with no libc beside it: it must be the static build.
  { [ -x /bin/busybox ] && (ldd /bin/busybox 2>&1 || true) | grep -q 'not a dynamic'; } || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "podman.sh: missing: ${missing[*]}. Install the Debian packages: apt-get install -y podman runc slirp4netns busybox-static (or run scripts/install-system-deps.sh)" >&2
    exit 2
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "podman.sh: run as root (the private service uses rootful podman with its own storage)" >&2
    exit 2
  fi
}

export_env() {
  export CONTAINERS_CONF="$dir/containers.conf"
  export CONTAINERS_STORAGE_CONF="$dir/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$dir/registries.conf"
  # Keep podman from reading the caller's XDG dirs (a developer's rootless setup).
  export XDG_CONFIG_HOME="$dir/xdg-config"
  export XDG_RUNTIME_DIR="$dir/run"
}

write_config() {
  mkdir -p "$dir/storage" "$dir/run" "$dir/tmp" "$dir/xdg-config" "$dir/cni"
  local runc_path
  runc_path="$(command -v runc || echo /usr/sbin/runc)"
  cat >"$dir/containers.conf.new" <<EOF
[containers]
netns = "slirp4netns"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/tmp"
static_dir = "$dir/storage/libpod"
volume_path = "$dir/storage/volumes"
network_cmd_path = "$(command -v slirp4netns)"

[engine.runtimes]
runc = ["$runc_path"]

[network]
network_backend = "cni"
network_config_dir = "$dir/cni"
EOF
  cat >"$dir/storage.conf.new" <<EOF
[storage]
driver = "vfs"
graphroot = "$dir/storage"
runroot = "$dir/run/storage"
EOF
  cat >"$dir/registries.conf.new" <<EOF
unqualified-search-registries = []
short-name-mode = "permissive"
EOF
  # Replace only when changed, so a running service never sees a half-written file.
  for f in containers.conf storage.conf registries.conf; do
    if cmp -s "$dir/$f.new" "$dir/$f"; then rm "$dir/$f.new"; else mv "$dir/$f.new" "$dir/$f"; fi
  done
}

build_image() {
  # Rebuild when this recipe changes (its own text is the version).
  local recipe
  recipe="$(declare -f build_image | sha256sum | cut -c1-16)"
  if podman image exists "$image" 2>/dev/null && [ "$(cat "$dir/image.recipe" 2>/dev/null)" = "$recipe" ]; then return 0; fi
  local rootfs="$dir/tmp/rootfs.$$"
  rm -rf "$rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp" "$rootfs/etc"
  cp /bin/busybox "$rootfs/bin/busybox"
  for app in sh httpd sleep test cat echo wget true false kill ls touch rm; do
    ln -s busybox "$rootfs/bin/$app"
  done
  echo "root:x:0:0:root:/:/bin/sh" >"$rootfs/etc/passwd"
  echo "root:x:0:" >"$rootfs/etc/group"
  echo "hello from busybox httpd" >"$rootfs/www/index.html"
  echo "ok" >"$rootfs/www/health"
  # httpd in the foreground on port 80. As PID 1 it ignores SIGTERM (no handler), and it holds
  # no state: stop it with SIGKILL at once instead of waiting out the stop timeout.
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'CMD ["/bin/httpd", "-f", "-v", "-p", "80", "-h", "/www"]' \
    --change 'EXPOSE 80' \
    --change 'ENV PATH=/bin' \
    --change 'STOPSIGNAL SIGKILL' \
    - "$image" >/dev/null
  rm -rf "$rootfs"
  echo "$recipe" >"$dir/image.recipe"
  # The previous build, now untagged (the storage is private: nothing else lives there).
  podman image prune -f >/dev/null 2>&1 || true
}

node_image="localhost/smart-proxy/node24-base:latest"

# A minimal Node 24 base with the layout of the official image (node and npm under /usr/local,
# a shell, uid 1000), built from this machine's files: no registry is reachable here.
build_node_base() {
  local node npm_dir recipe
  node="$(readlink -f "${SMART_PROXY_NODE:-$(command -v node)}")"
  npm_dir="$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")"
  [ -x "$node" ] && [ -f "$npm_dir/bin/npm-cli.js" ] || { echo "podman.sh: need node and npm on PATH" >&2; exit 2; }
  recipe="$( { declare -f build_node_base; "$node" --version; } | sha256sum | cut -c1-16)"
  if podman image exists "$node_image" 2>/dev/null && [ "$(cat "$dir/node-image.recipe" 2>/dev/null)" = "$recipe" ]; then return 0; fi
  local rootfs="$dir/tmp/node-rootfs.$$"
  rm -rf "$rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/usr/bin" "$rootfs/usr/local/bin" "$rootfs/usr/local/lib/node_modules" "$rootfs/tmp" "$rootfs/etc" "$rootfs/home/node"
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for app in sh mkdir chown ls cat rm cp mv ln env wget true false id; do ln -s busybox "$rootfs/bin/$app"; done
  ln -s /bin/env "$rootfs/usr/bin/env"
  cp "$node" "$rootfs/usr/local/bin/node"
  # The shared libraries node links against, at the same paths.
  ldd "$node" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  cp -r "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$rootfs/etc/group"
  chown 1000:1000 "$rootfs/home/node"
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'CMD ["node"]' \
    - "$node_image" >/dev/null
  rm -rf "$rootfs"
  echo "$recipe" >"$dir/node-image.recipe"
  podman image prune -f >/dev/null 2>&1 || true
}

setup() {
  need
  mkdir -p "$dir"
  # Two test files may set up at once: serialise on a lock.
  exec 9>"$dir/.lock"
  flock 9
  write_config
  export_env
  build_image
  flock -u 9
}

cmd="${1:-}"
case "$cmd" in
  setup)
    setup
    echo "image $image ready in $dir"
    ;;
  serve)
    socket="${2:?usage: podman.sh serve SOCKET}"
    setup
    rm -f "$socket"
    exec podman system service --time=0 "unix://$socket"
    ;;
  start)
    socket="${2:-$dir/podman.sock}"
    setup
    if [ -f "$dir/service.pid" ] && kill -0 "$(cat "$dir/service.pid")" 2>/dev/null; then
      echo "already running: unix://$socket (pid $(cat "$dir/service.pid"))"
      exit 0
    fi
    rm -f "$socket"
    nohup podman system service --time=0 "unix://$socket" >"$dir/service.log" 2>&1 &
    echo $! >"$dir/service.pid"
    for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.05; done
    [ -S "$socket" ] || { echo "service did not come up; see $dir/service.log" >&2; exit 1; }
    echo "podman API: unix://$socket (pid $(cat "$dir/service.pid"))"
    ;;
  stop)
    if [ -f "$dir/service.pid" ]; then
      kill "$(cat "$dir/service.pid")" 2>/dev/null || true
      rm -f "$dir/service.pid"
    fi
    ;;
  node-base)
    setup
    export_env
    exec 9>"$dir/.lock"
    flock 9
    build_node_base
    echo "image $node_image ready"
    ;;
  podman)
    shift
    export_env
    exec podman "$@"
    ;;
  *)
    sed -n '2,9p' "$0" >&2
    exit 2
    ;;
esac
