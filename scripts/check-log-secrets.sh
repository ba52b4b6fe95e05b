#!/usr/bin/env bash
# After the test suite (scripts/test.sh): no test password, no SCRAM verifier and no
# connection string with a password in any log the suite kept (crates/testkit/src/logs.rs
# copies every test's logs into one directory). Exits 1 naming each line found.
set -euo pipefail
dir=${1:-${PGHERD_TEST_LOG_DIR:-target/test-logs}}
if [ ! -d "$dir" ] || [ -z "$(ls -A "$dir")" ]; then
    echo "check-log-secrets: no logs in $dir, so nothing was checked" >&2
    exit 1
fi

# The passwords the tests use (crates/*/tests), each distinctive enough to grep.
secrets=(
    su-pass rep-pass rewind-pass s3cret
    "app pass" "admin pass" "stats pass" "nobody pass"
    su-from-the-environment rep-from-the-environment api-from-the-environment
    "etcd pass" "root pass"
)
found=0
report() {
    echo "check-log-secrets: $1:" >&2
    head -5 >&2
    found=1
}
for s in "${secrets[@]}"; do
    if hits=$(grep -rnF -- "$s" "$dir"); then
        report "the test password \"$s\" is in a log" <<<"$hits"
    fi
done
if hits=$(grep -rnE 'SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$' "$dir"); then
    report "a SCRAM verifier is in a log" <<<"$hits"
fi
if hits=$(grep -rnE '[a-z]+://[^/@ :"]+:[^@ /"*]+@' "$dir"); then
    report "a connection URI with a password is in a log" <<<"$hits"
fi
files=$(find "$dir" -type f | wc -l)
bytes=$(du -sh "$dir" | cut -f1)
if [ "$found" -ne 0 ]; then
    exit 1
fi
echo "check-log-secrets: no secret in $files log files ($bytes) under $dir"
