#!/usr/bin/env bash
# Check the README's two commands the way a fresh machine sees them.
#
# It runs scripts/setup-debian.sh once (installing what is missing), then, in a private
# mount namespace with every `protoc` on PATH and the protobuf include files
# (/usr/include/google) hidden and PROTOC/PROTOC_INCLUDE unset, and with a fresh, empty
# cargo target directory, it runs
#   1. the README's test command up to the point where tests would start:
#        scripts/setup-debian.sh && cargo test --workspace --locked --no-run
#   2. the README's demo command as printed:
#        scripts/setup-debian.sh && cargo run --release -p pgherd-cli -- demo
#      until the demo prints its topology, then checks that it serves: `psql` runs a
#      query through the primary's printed URI and the primary's REST URL answers
#      GET /primary with 200. Then Ctrl-C (SIGINT), and the demo must exit by itself.
# Prints PASS or FAIL per step and exits non-zero if any step failed.
#
# Usage: scripts/check-fresh-build.sh [--demo-only] [--keep]
#   --demo-only  skip step 1 (half the build time)
#   --keep       keep the target directory and logs (printed at the end)
# Needs root for the mount namespace; run as a user, it re-runs itself with sudo and
# builds and runs the demo as that user again.
set -euo pipefail

DEMO_ONLY=0
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --demo-only) DEMO_ONLY=1 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_TIMEOUT=2400   # s: a cold release build on 2 cores takes ~6 min
DEMO_TIMEOUT=120     # s: from a built binary to the printed topology
STOP_TIMEOUT=60      # s: from Ctrl-C to the demo's exit

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "needs root, or sudo to become root" >&2; exit 2; }
  exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,CARGO_BUILD_JOBS \
    PGHERD_FRESH_AS="$(id -u):$(id -g)" "$0" "$@"
fi

if [ -z "${PGHERD_FRESH_INNER:-}" ]; then
  # Re-run inside a private mount namespace: what is hidden there stays hidden there.
  export PGHERD_FRESH_INNER=1
  exec unshare --mount --propagation private "$0" "$@"
fi

# ---- inside the namespace ----
WORK="$(mktemp -d /var/tmp/pgherd-fresh.XXXXXX)"
chmod 755 "$WORK"
FAILED=0
DEMO_PID=""
hidden=()
cleanup() {
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    pkill -INT -f "^$WORK/target/release/pgherd demo" 2>/dev/null || true
    sleep 10
    pkill -KILL -f "^$WORK/target/release/pgherd demo" 2>/dev/null || true
    kill -KILL "$DEMO_PID" 2>/dev/null || true
  fi
  for m in "${hidden[@]}"; do umount "$m" 2>/dev/null || true; done
  if [ "$KEEP" -eq 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Run as the user who asked (through sudo), else as root.
as_user() {
  if [ -n "${PGHERD_FRESH_AS:-}" ]; then
    setpriv --reuid="${PGHERD_FRESH_AS%%:*}" --regid="${PGHERD_FRESH_AS##*:}" --init-groups "$@"
  else
    "$@"
  fi
}
[ -z "${PGHERD_FRESH_AS:-}" ] || chown "$PGHERD_FRESH_AS" "$WORK"
export CARGO_TARGET_DIR="$WORK/target"

# Install first, hide afterwards: what setup-debian.sh installs must not come back.
cd "$REPO"
as_user scripts/setup-debian.sh >"$WORK/setup.log" 2>&1 || { echo "FAIL: scripts/setup-debian.sh:"; tail -n 20 "$WORK/setup.log"; exit 1; }

# What a fresh machine does not have: protoc and protobuf's .proto include files.
unset PROTOC PROTOC_INCLUDE
: >"$WORK/not-protoc" && chmod 644 "$WORK/not-protoc"
IFS=: read -r -a path_dirs <<<"$PATH"
for d in "${path_dirs[@]}" /usr/bin /usr/local/bin; do
  [ -f "$d/protoc" ] || continue
  real="$(realpath "$d/protoc")"   # /bin is often /usr/bin
  if [[ " ${hidden[*]} " != *" $real "* ]]; then
    mount --bind "$WORK/not-protoc" "$real"
    hidden+=("$real")
  fi
done
for d in /usr/include/google /usr/local/include/google; do
  if [ -d "$d" ]; then
    mount -t tmpfs tmpfs "$d"
    hidden+=("$d")
  fi
done
echo "hidden: ${hidden[*]:-nothing (none present)}"
# (bash's `command -v` also names a file that is not executable.)
if found="$(command -v protoc)" && [ -x "$found" ]; then
  echo "FAIL: protoc is still on PATH at $found" >&2
  exit 1
fi

if [ "$DEMO_ONLY" -eq 0 ]; then
  echo "== step 1: scripts/setup-debian.sh && cargo test --workspace --locked --no-run"
  if as_user timeout "$BUILD_TIMEOUT" bash -c 'scripts/setup-debian.sh && cargo test --workspace --locked --no-run' \
      >"$WORK/tests-build.log" 2>&1; then
    echo "PASS: the test suite builds"
  else
    echo "FAIL: the test suite does not build; the end of its log:"
    tail -n 25 "$WORK/tests-build.log"
    FAILED=1
  fi
fi

echo "== step 2: scripts/setup-debian.sh && cargo run --release -p pgherd-cli -- demo"
DEMO_LOG="$WORK/demo.log"
: >"$DEMO_LOG"
[ -z "${PGHERD_FRESH_AS:-}" ] || chown "$PGHERD_FRESH_AS" "$DEMO_LOG"
as_user bash -c 'scripts/setup-debian.sh && exec cargo run --release -p pgherd-cli -- demo' \
  </dev/null >>"$DEMO_LOG" 2>&1 &
DEMO_PID=$!

# Wait for the first "primary <name> <uri> REST: <url>" line: build, then bootstrap.
primary_line=""
deadline=$((SECONDS + BUILD_TIMEOUT + DEMO_TIMEOUT))
while [ $SECONDS -lt $deadline ] && kill -0 "$DEMO_PID" 2>/dev/null; do
  primary_line="$(grep -m1 -E '^primary +[^ ]+ +postgres://' "$DEMO_LOG" || true)"
  [ -n "$primary_line" ] && break
  sleep 2
done
if [ -z "$primary_line" ]; then
  echo "FAIL: the demo did not print its topology; the end of its log:"
  tail -n 25 "$DEMO_LOG"
  exit 1
fi
uri="$(awk '{print $3}' <<<"$primary_line")"
rest="$(awk '{print $5}' <<<"$primary_line")"
sed -n '/^+ Cluster/,/^replica/p' "$DEMO_LOG" | sed -E 's#(postgres://[^:]*:)[^@]*@#\1***@#'

# Served: a query through the printed URI, Patroni's /primary check on the REST URL.
if answer="$(timeout 20 psql "$uri" -XAtc "select 'served by ' || inet_server_port()" 2>&1)"; then
  echo "PASS: psql through the printed primary URI: $answer"
else
  echo "FAIL: psql through the printed primary URI: $answer"
  FAILED=1
fi
code="$(timeout 10 curl -s -o /dev/null -w '%{http_code}' "${rest%/patroni}/primary" || true)"
if [ "$code" = 200 ]; then
  echo "PASS: GET ${rest%/patroni}/primary answered 200"
else
  echo "FAIL: GET ${rest%/patroni}/primary answered '${code}'"
  FAILED=1
fi

# Ctrl-C: SIGINT to the demo process (cargo run leaves it to its child), which stops
# its members and exits by itself.
demo_proc="$(pgrep -f "^$CARGO_TARGET_DIR/release/pgherd demo" | head -n 1 || true)"
if [ -z "$demo_proc" ]; then
  echo "FAIL: no running '$CARGO_TARGET_DIR/release/pgherd demo' process to stop"
  FAILED=1
else
  kill -INT "$demo_proc"
  deadline=$((SECONDS + STOP_TIMEOUT))
  while [ $SECONDS -lt $deadline ] && kill -0 "$demo_proc" 2>/dev/null; do sleep 1; done
  if kill -0 "$demo_proc" 2>/dev/null; then
    echo "FAIL: the demo was still running ${STOP_TIMEOUT} s after Ctrl-C"
    FAILED=1
  else
    echo "PASS: the demo exited ${STOP_TIMEOUT:+within ${STOP_TIMEOUT} s }after Ctrl-C"
  fi
fi
wait "$DEMO_PID" 2>/dev/null || true
DEMO_PID=""

if [ "$FAILED" -eq 0 ]; then echo "fresh build: PASS"; else echo "fresh build: FAIL"; fi
exit "$FAILED"
