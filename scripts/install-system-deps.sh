#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks drive for real. Idempotent: does
# nothing when everything is present. Needs root (CI and dev machines run as root).
set -euo pipefail
pkgs=()
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium fonts-dejavu-core)
[ ${#pkgs[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
