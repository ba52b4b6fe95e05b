#!/usr/bin/env bash
# Install what pgherd needs to build, run its demo and run its tests on Debian/Ubuntu:
# PostgreSQL 15 server binaries, etcd (for multi-host clusters and the tests), protoc
# (the etcd client's build needs it), and for the compatibility tests HAProxy (its
# `option httpchk OPTIONS /primary` must route to the primary) and Patroni (its
# `patronictl` must read a pgherd cluster), and gcc and make (jemalloc, pgherd's
# allocator, is built from C). Installs only what is missing; uses sudo when not root.
set -euo pipefail

packages=(postgresql-15 postgresql-client-15 etcd-server protobuf-compiler haproxy patroni gcc make)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's etcd-server package may start a system etcd; pgherd's tests start their own
# on free ports, so a running one does no harm.
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
echo "dependencies present: ${packages[*]}"
