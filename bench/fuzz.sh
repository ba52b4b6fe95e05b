#!/usr/bin/env bash
# Run every cargo-fuzz target of the protocol crate (crates/protocol/fuzz), one at a time,
# for a fixed number of executions each; report executions, exec/s, crashes and corpus
# size per target. Exits nonzero if any target crashed (or failed to build or run).
# Not run in CI.
#
#   bench/fuzz.sh                    # every target, 10,000,000 executions each
#   bench/fuzz.sh frame_decoder      # just these targets
#   RUNS=100000 bench/fuzz.sh        # a quick pass
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz
# from crates.io if it is missing. Runs with `nice -n 15`. Builds with AddressSanitizer
# and debug assertions (integer overflow panics), optimized. The corpus grows in
# crates/protocol/fuzz/corpus/<target>/ and is reused by the next run; crashes land in
# crates/protocol/fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run <target> <file>).
set -euo pipefail

RUNS="${RUNS:-10000000}"
NICE="${NICE:-15}"
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../crates/protocol"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$proto"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "fuzz.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $RUNS executions per target, $machine"

status=0
summary=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    before="$(find "$artifacts" -type f | wc -l)"
    log="$(mktemp)"
    echo "== $t: building and running"
    started=$(date +%s)
    set +e
    # -print_final_stats: libFuzzer's own count and rate at the end.
    nice -n "$NICE" cargo +nightly fuzz run --debug-assertions "$t" "$corpus" -- \
        -runs="$RUNS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(( $(date +%s) - started ))
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    after="$(find "$artifacts" -type f | wc -l)"
    crashes=$(( after - before ))
    size="$(find "$corpus" -type f | wc -l)"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        echo "== $t: FAILED (exit $rc, $crashes new artifacts); log tail:"
        tail -40 "$log"
    fi
    line="$t: ${execs:-?} executions, ${rate:-?} exec/s, $crashes crashes, corpus $size inputs, ${elapsed}s (exit $rc)"
    echo "== $line"
    summary+=("$line")
    rm -f "$log"
done

echo
echo "Summary ($RUNS runs each; $machine):"
printf '  %s\n' "${summary[@]}"
exit "$status"
