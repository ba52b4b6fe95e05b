#!/usr/bin/env bash
# Chaos run (issue 11): seeded faults against a 3-member pgherd cluster in network
# namespaces, checking that no acknowledged write is lost (synchronous mode) and that no
# two members take writes at the same time.
#
# Topology (all in namespaces the run creates and removes; nothing in the root namespace):
#   hub    bridge 10.213.0.1/24, the pooler (rw 10.213.0.1:6432, ro :6433) and the runner
#   e1..e3 one etcd member each (10.213.0.11-13)
#   m1..m3 one `pgherd node` + PostgreSQL 15 each (10.213.0.21-23), each data directory
#          on its own 512 MiB tmpfs
# Faults (kinds, targets, hold times drawn from the seed; each healed, then the cluster
# must be back within --recovery-timeout, default 60 s): kill-agent, kill-postmaster,
# kill-both, stop-agent, stop-postmaster (SIGSTOP longer than ttl), partition-etcd,
# partition-peers, partition-all, etcd-one, etcd-quorum, disk-full.
#
# Usage: bench/chaos.sh [--faults N] [--seed S] [--async] [--only k1,k2] [--skip k1,k2]
#                       [--report FILE] [--keep] [--recovery-timeout S] [--dry-run]
# Defaults: 20 faults, seed 1, synchronous mode, JSON report in /tmp/pgherd-chaos-report.json.
# Env: PGHERD_BIN=/path/to/pgherd uses that binary (default: build the release binaries).
# Exit status: 0 pass; 1 a lost acknowledged write (synchronous mode), a split brain or a
# fault not survived; 2 the run could not be set up. Runs as root.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, mounts, PostgreSQL as the postgres user)" >&2; exit 2; }
case " $* " in *" -h "*|*" --help "*) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

args=("$@")
case " $* " in *" --faults "*) ;; *) args+=(--faults 20) ;; esac
case " $* " in *" --report "*) ;; *) args+=(--report "${TMPDIR:-/tmp}/pgherd-chaos-report.json") ;; esac

TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
if [ -n "${PGHERD_BIN:-}" ]; then
  PGHERD="$PGHERD_BIN"
  CHAOS="$(dirname "$PGHERD")/pgherd-chaos"
  [ -x "$CHAOS" ] || (cd "$REPO" && cargo build --release -q -p pgherd-chaos)
  [ -x "$CHAOS" ] || CHAOS="$TARGET/release/pgherd-chaos"
else
  echo "building pgherd and pgherd-chaos (release)" >&2
  (cd "$REPO" && CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release -q -p pgherd-cli -p pgherd-chaos)
  PGHERD="$TARGET/release/pgherd"
  CHAOS="$TARGET/release/pgherd-chaos"
fi
exec "$CHAOS" --pgherd "$PGHERD" "${args[@]}"
