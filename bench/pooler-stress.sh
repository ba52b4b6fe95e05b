#!/usr/bin/env bash
# The pooler's randomized stress test (crates/pooler/tests/stress.rs), long form: 36
# clients on a transaction-mode pool of 1-6 servers for 10 minutes, a random mix of
# simple, extended and named-prepared queries, transactions, cancels and disconnects,
# while server connections are killed with pg_terminate_backend, the pool is resized by
# RELOAD and held so that query_wait_timeout fires. Every answer is checked, the pool's
# invariant (no idle server while a client waits) is checked every 5 ms, and at the end
# every client must be served and the pool all idle. Prints the test's summary.
#
# The seed fixes every random choice (not the timing); it is printed first, and a
# failing run is replayed with the same --seed.
#
# Usage: bench/pooler-stress.sh [--seed N] [--secs S] [--debug]
#   --seed N   seed of the random choices (default 20261205, a fixed seed)
#   --secs S   how long the clients run (default 600)
#   --debug    build and run the test unoptimized (the short form in `cargo test` is)
# Runs as root (the test starts PostgreSQL 15 as the `postgres` OS user). Uses
# CARGO_TARGET_DIR and CARGO_BUILD_JOBS from the environment (CARGO_BUILD_JOBS default 2).
set -euo pipefail

SEED=20261205
SECS=600
PROFILE=(--release)
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) SEED="${2:?--seed needs a number}"; shift 2 ;;
    --secs) SECS="${2:?--secs needs seconds}"; shift 2 ;;
    --debug) PROFILE=(); shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "--seed must be a non-negative integer" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "--secs must be a positive integer" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL is started as the postgres user)" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

log "pooler stress: seed $SEED, $SECS s (replay: bench/pooler-stress.sh --seed $SEED --secs $SECS)"
log "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
cd "$REPO"
rc=0
PGHERD_STRESS_SEED="$SEED" PGHERD_STRESS_SECS="$SECS" CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" \
  cargo test "${PROFILE[@]}" -p pgherd-pooler --test stress -- --nocapture || rc=$?
if [ "$rc" -eq 0 ]; then
  log "PASS (seed $SEED, $SECS s)"
else
  log "FAIL (seed $SEED, $SECS s): replay with bench/pooler-stress.sh --seed $SEED --secs $SECS"
fi
exit "$rc"
