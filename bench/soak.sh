#!/usr/bin/env bash
# Soak: one long-lived `pgherd pooler` in front of a 3-member pgherd cluster while clients
# connect and disconnect for many minutes and a switchover runs every minute.
#
# Each minute is one `pgbench -n -C -c CONC -j 2 -T 60 --failures-detailed` run of the
# TPC-B-like transaction through the pooler (transaction mode, pool 20): -C opens a new
# connection for every transaction, so every client connects and disconnects hundreds of
# times. A new pgbench each minute brings CONC new clients: 10 minutes of CONC = 1000 are
# 10,000 clients. 30 s into each minute, `pgherd ctl switchover` moves the primary to the
# next member. Checked (targets of issue 11):
#   - no failed transaction and no aborted client (transaction mode);
#   - the pooler's RSS at the end within 10% of its RSS after the first minute;
#   - no leaked server connection: per member, the server sockets the pooler process holds
#     (ss), its SHOW SERVERS rows and the backends PostgreSQL has for them
#     (pg_stat_activity, matched on the client port) are the same connections.
#
# Usage: bench/soak.sh [--minutes M] [--clients CONC] [--keep]
#   --minutes M     minutes of load, one switchover each (default 10)
#   --clients CONC  pgbench clients per minute (default 1000)
#   --keep          keep the work directory (configs, logs)
# Env: PGHERD_BIN=/path/to/pgherd uses that binary (default: build target/release/pgherd).
# Runs as root (PostgreSQL runs as the `postgres` OS user). Not run in CI.
set -euo pipefail

MINUTES=10
CONC=1000
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="${2:?--minutes needs a number}"; shift 2 ;;
    --clients) CONC="${2:?--clients needs a number}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || { echo "--minutes must be a positive integer" >&2; exit 2; }
[[ "$CONC" =~ ^[1-9][0-9]*$ ]] && [ "$CONC" -le 5000 ] || { echo "--clients must be 1..5000" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL is started as the postgres user)" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3
SU_PASS=soak-su-pass
REPL_PASS=soak-rep-pass
HEALTHY_TIMEOUT=180
TTL=10 LOOP_WAIT=2 RETRY_TIMEOUT=4
SCALE=10
SWITCH_AT=30                 # s into each minute
CMD_LIMIT=90                 # s: a switchover command is killed after this
MAX_CLIENT_CONN=$((CONC + 200))
# -C with many clients needs file descriptors: pgbench and the pooler hold one per client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((CONC * 2 + 1000)) ] || {
  echo "the open-files limit ($(ulimit -n)) is too low for $CONC clients" >&2; exit 2; }

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
install_missing postgresql-15 postgresql-client-15 etcd-server python3-psycopg2 curl iproute2
PGHERD="$(pgherd_bin "$REPO" "${PGHERD_BIN:-}")"
PGBOUNCER=""
BENCH_NAME=soak
EXTRA_DCS=""
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"
# shellcheck source=bench/e2e-lib.sh
source "$REPO/bench/e2e-lib.sh"

PGBENCH_PID=""
e2e_extra_stop() {
  if alive "$PGBENCH_PID"; then kill -9 "$PGBENCH_PID" 2>/dev/null || true; wait "$PGBENCH_PID" 2>/dev/null || true; fi
  PGBENCH_PID=""
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

admin() {            # admin SQL: through the pooler's console, unaligned, no header
  PGPASSWORD="$SU_PASS" timeout 10 "$PGBIN/psql" -X -q -At -F ' ' -h 127.0.0.1 -p "$FRONT_PORT" \
    -U postgres -d pgbouncer -c "$1"
}

# "held listed backends" for member $1: the pooler's server sockets to it (ss), the SHOW
# SERVERS rows for it, and the backends on it whose client port is one of those sockets'.
server_accounting() {
  local i="$1" port="${PG_PORT[$1]}" held listed ports backends
  ports="$(ss -Htnp state established "( dport = :$port )" 2>/dev/null \
    | awk -v pid="pid=$POOLER_PID," 'index($0, pid) { n = split($3, a, ":"); print a[n] }' | sort -n)"
  held="$(grep -c . <<<"$ports" || true)"
  listed="$(admin "SHOW SERVERS" | awk -v p="$port" '$7 == p' | wc -l)"
  if [ "$held" -gt 0 ]; then
    backends="$(psql_at "$port" "select count(*) from pg_stat_activity where client_port in ($(paste -sd, <<<"$ports"))")"
  else
    backends=0
  fi
  echo "$held $listed ${backends:-?}"
}

new_cluster pgherd "$TTL" "$LOOP_WAIT" "$RETRY_TIMEOUT"
p="$(wait_healthy)" || { dump_logs; log "the cluster did not come up"; exit 1; }
PGPASSWORD="$SU_PASS" "$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "${PG_PORT[$p]}" -U postgres postgres \
  >"$CL/pgbench-init.log" 2>&1
start_router pgherd || { router_logs; exit 1; }
POOLER_PID="${ROUTER_PIDS[0]}"
log "pooler pid $POOLER_PID, RSS $(rss_kb "$POOLER_PID") kB before the load"

declare -a FAILED ABORTED TXS SWITCHES
RSS_FIRST=0
for m in $(seq 1 "$MINUTES"); do
  p="$(current_primary)"
  [ -n "$p" ] || p="$(wait_healthy)" || { dump_logs; log "minute $m: no healthy cluster"; exit 1; }
  c=$(( p % 3 + 1 ))
  dir="$CL/minute-$m"; mkdir -p "$dir"
  PGPASSWORD="$SU_PASS" timeout -k 5 120 "$PGBIN/pgbench" -n -C -c "$CONC" -j 2 -T 60 --failures-detailed \
    -h 127.0.0.1 -p "$FRONT_PORT" -U postgres postgres >"$dir/pgbench.out" 2>"$dir/pgbench.err" &
  PGBENCH_PID=$!
  sleep "$SWITCH_AT"
  t0="$(date +%s.%N)"
  if "$PGHERD" ctl -c "$CL/node1/node.yml" switchover --leader "node$p" --candidate "node$c" --force \
       >"$dir/switchover.out" 2>&1; then
    SWITCHES+=("node$p->node$c:$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }')")
  else
    SWITCHES+=("node$p->node$c:FAILED")
    log "minute $m: switchover failed: $(tail -n 2 "$dir/switchover.out")"
  fi
  rc=0; wait "$PGBENCH_PID" || rc=$?
  PGBENCH_PID=""
  tx="$(awk '/^number of transactions actually processed: /{ split($6, a, "/"); print a[1]; exit }' "$dir/pgbench.out")"
  failed="$(awk '/^number of failed transactions: /{ print $5; exit }' "$dir/pgbench.out")"
  aborted="$(grep -cE 'client [0-9]+ .*aborted' "$dir/pgbench.err" || true)"
  FAILED+=("${failed:-?}"); ABORTED+=("$aborted"); TXS+=("${tx:-?}")
  rss="$(rss_kb "$POOLER_PID")"
  [ "$m" -eq 1 ] && RSS_FIRST="$rss"
  log "minute $m: pgbench rc $rc, ${tx:-?} transactions (one connection each), ${failed:-?} failed, $aborted aborted;" \
    "switchover ${SWITCHES[-1]}; pooler RSS $rss kB"
  if [ "$aborted" -gt 0 ] || [ "${failed:-0}" != 0 ]; then
    grep -m 5 -iE 'abort|error' "$dir/pgbench.err" | sed 's/^/    /' >&2 || true
  fi
done
RSS_END="$(rss_kb "$POOLER_PID")"

# Let the last transactions' servers go idle, then account for every server connection.
sleep 3
declare -a ACCOUNTING
LEAKS=0
for i in 1 2 3; do
  read -r held listed backends <<<"$(server_accounting "$i")"
  ACCOUNTING+=("node$i: held $held, SHOW SERVERS $listed, backends $backends")
  [ "$held" = "$listed" ] && [ "$held" = "$backends" ] || LEAKS=1
done

echo
echo "Soak: $MINUTES minutes x pgbench -C -c $CONC (TPC-B-like, a new connection per transaction) through one"
echo "pgherd pooler (transaction mode, pool $POOL_SIZE), a switchover every minute at ${SWITCH_AT}s;"
echo "$((MINUTES * CONC)) clients in all; ttl/loop_wait/retry_timeout $TTL/$LOOP_WAIT/$RETRY_TIMEOUT; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "transactions per minute: ${TXS[*]}"
echo "failed per minute:       ${FAILED[*]}"
echo "aborted per minute:      ${ABORTED[*]}"
echo "switchovers:             ${SWITCHES[*]}"
growth="$(awk -v a="$RSS_FIRST" -v b="$RSS_END" 'BEGIN { if (a > 0) printf "%+.1f%%", (b - a) * 100 / a; else print "-" }')"
echo "pooler RSS: $RSS_FIRST kB after minute 1, $RSS_END kB at the end ($growth; target within 10%)"
echo "server connections after the load: ${ACCOUNTING[*]}"
ok=1
for f in "${FAILED[@]}" "${ABORTED[@]}"; do [ "$f" = 0 ] || ok=0; done
awk -v a="$RSS_FIRST" -v b="$RSS_END" 'BEGIN { exit !(a > 0 && b <= a * 1.10 && b >= a * 0.90) }' || ok=0
[ "$LEAKS" -eq 0 ] || ok=0
for s in "${SWITCHES[@]}"; do [[ "$s" == *FAILED ]] && ok=0; done
stop_routers
if [ "$ok" -eq 1 ]; then
  echo "RESULT: PASS"
else
  echo "RESULT: FAIL"
  exit 1
fi
