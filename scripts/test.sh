#!/usr/bin/env bash
# The test suite: every test of the workspace, then a grep of every log the tests kept
# for the test passwords. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHERD_TEST_LOG_DIR="${PGHERD_TEST_LOG_DIR:-$PWD/target/test-logs}"
rm -rf "$PGHERD_TEST_LOG_DIR"
cargo test --workspace --locked "$@"
scripts/check-log-secrets.sh "$PGHERD_TEST_LOG_DIR"
