#!/usr/bin/env bash
# Install what pgherd needs to build, run its demo and run its tests on Debian 12
# (bookworm): PostgreSQL 15's server and client programs (the demo, the agent and the
# tests run them; pgbench and psql drive the pooler tests), etcd (multi-host clusters and
# the tests), HAProxy (its `option httpchk OPTIONS /primary` must route to the primary)
# and Patroni (its `patronictl` must read a pgherd cluster) for the compatibility tests,
# with Patroni 4 from PyPI in a venv at /opt/pgherd/patroni4 beside Debian's 3.0.2 (so
# python3-venv), gcc and make (ring and jemalloc, pgherd's allocator, are built from C; rustc links
# with cc), curl (scripts/check-fresh-build.sh asks the REST API) and iproute2 (`ip netns`: the chaos
# run's network namespaces). Building needs no
# protoc: the etcd client's messages are written in Rust.
# Installs only what is missing, with sudo when not root.
set -euo pipefail

packages=(postgresql-15 postgresql-client-15 etcd-server haproxy patroni python3-venv gcc make curl iproute2)
# The Patroni 4 whose patronictl the compatibility tests run (pinned: its output is asserted).
patroni4_version="4.1.5"
patroni4_dir="/opt/pgherd/patroni4"

if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  cat >&2 <<'MSG'
setup-debian.sh needs Debian's apt-get. Elsewhere, install by hand: PostgreSQL 15 (server
and client programs; set postgresql.bin_dir or put pg_config on PATH), etcd 3.4 or newer,
a C compiler and make, and for the compatibility tests HAProxy and Patroni. See README.md.
MSG
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
patroni4_present() {
  "$patroni4_dir/bin/patronictl" version 2>/dev/null | grep -qF "$patroni4_version"
}
if [ ${#missing[@]} -gt 0 ] || ! patroni4_present; then
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null; then
    echo "missing ${missing[*]:-} ${patroni4_dir}, and sudo is not there to install them: run this as root" >&2
    exit 1
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      echo "package $p is not available from this system's apt sources (PostgreSQL 15 is in Debian 12; on other releases add PostgreSQL's own apt repository first)" >&2
      exit 1
    fi
  done
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! patroni4_present; then
  echo "installing: patroni $patroni4_version (PyPI) into $patroni4_dir"
  $sudo rm -rf "$patroni4_dir"
  $sudo python3 -m venv "$patroni4_dir"
  if ! $sudo "$patroni4_dir/bin/pip" install -q --disable-pip-version-check \
      "patroni[etcd3,psycopg3]==$patroni4_version"; then
    echo "could not install patroni $patroni4_version from PyPI into $patroni4_dir (is PyPI reachable?)" >&2
    exit 1
  fi
fi

# Debian's etcd-server package may start a system etcd; pgherd's tests start their own
# on free ports, so a running one does no harm.
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
echo "dependencies present: ${packages[*]} patroni-$patroni4_version"
