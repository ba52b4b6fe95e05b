#!/usr/bin/env bash
# User-space instructions per transaction: PgBouncer vs `pgherd pooler`, counted by
# valgrind's callgrind. Instruction counts do not depend on what else this (shared,
# noisy) machine is doing, so small changes to the pooler's hot path show up reliably;
# what they leave out is kernel time (syscalls), which bench/pooler.sh's CPU column
# includes.
#
# Starts one throwaway PostgreSQL 15 on a free loopback port (fsync off, trust auth) with
# `pgbench -i -s 1`, and one pgbouncer.ini (transaction mode, default_pool_size 20,
# auth_type trust) that both poolers read. For each workload and pooler it runs the
# pooler under callgrind twice, with pgbench `-c 50 -j 2 -t T1` and `-t T2`, and divides
# the difference of the two totals by the difference in transactions: what a
# transaction costs, without startup, logins and shutdown.
#
# Usage: bench/pooler-instructions.sh [--pgherd-bin PATH] [--t1 N] [--t2 N]
#   --pgherd-bin PATH  the pgherd binary (default: target/release/pgherd, built if missing)
#   --t1 N, --t2 N     transactions per client of the two runs (default 20 and 120)
# Runs as root (PostgreSQL and PgBouncer run as the `postgres` OS user). Needs valgrind,
# pgbouncer and postgresql-15 (installed when missing).
set -euo pipefail

PGHERD_BIN=""
T1=20
T2=120
while [ $# -gt 0 ]; do
  case "$1" in
    --pgherd-bin) PGHERD_BIN="${2:?--pgherd-bin needs a path}"; shift 2 ;;
    --t1) T1="${2:?--t1 needs a number}"; shift 2 ;;
    --t2) T2="${2:?--t2 needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$T1" =~ ^[1-9][0-9]*$ && "$T2" =~ ^[1-9][0-9]*$ && "$T2" -gt "$T1" ]] \
  || { echo "--t1 and --t2 must be positive integers, t2 > t1" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL and PgBouncer run as postgres)" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
CLIENTS=50
READY_TIMEOUT=60   # s: a pooler under valgrind must accept logins within this
STOP_TIMEOUT=60    # s: and write its profile after SIGINT within this

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

install_missing postgresql-15 postgresql-client-15 pgbouncer valgrind
PGHERD_BIN="$(pgherd_bin "$REPO" "$PGHERD_BIN")"

WORK="$(mktemp -d /tmp/pgherd-instr.XXXXXX)"
chmod 1777 "$WORK"
POOLER_PID=""
cleanup() {
  [ -n "$POOLER_PID" ] && kill -KILL "$POOLER_PID" 2>/dev/null || true
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PG_PORT="$(free_port)"
POOLER_PORT="$(free_port)"

log "PostgreSQL on $PG_PORT, poolers on $POOLER_PORT"
su postgres -s /bin/sh -c "$PGBIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $WORK/pg -w -l $WORK/pg.log \
  -o '-p $PG_PORT -k $WORK -c max_connections=200 -c fsync=off -c synchronous_commit=off' start" >/dev/null
"$PGBIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

cat >"$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
admin_users = postgres
INI
echo '"postgres" ""' >"$WORK/userlist.txt"
chmod 644 "$WORK/pgbouncer.ini" "$WORK/userlist.txt"

# total_ir POOLER T PGBENCH_ARGS...: the pooler's instruction total for one run.
total_ir() {
  local pooler="$1" t="$2"; shift 2
  local out="$WORK/callgrind.$pooler.$t"
  rm -f "$out"
  if [ "$pooler" = pgbouncer ]; then
    su postgres -s /bin/sh -c "exec valgrind --tool=callgrind --callgrind-out-file=$out \
      /usr/sbin/pgbouncer $WORK/pgbouncer.ini" >"$WORK/valgrind.log" 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$PGHERD_BIN" pooler --ini "$WORK/pgbouncer.ini" >"$WORK/valgrind.log" 2>&1 &
  fi
  POOLER_PID=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  until psql -h 127.0.0.1 -p "$POOLER_PORT" -U postgres bench -XAtc 'select 1' >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "$pooler did not start; see:" >&2; tail "$WORK/valgrind.log" >&2; exit 1; }
    sleep 0.5
  done
  local report
  report="$("$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -t "$t" -h 127.0.0.1 -p "$POOLER_PORT" \
    -U postgres "$@" bench 2>&1)"
  local done_tx
  done_tx="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$report")"
  [ "$done_tx" = "$((CLIENTS * t))" ] || { echo "$pooler: pgbench $* -t $t failed:" >&2; echo "$report" >&2; exit 1; }
  # valgrind passes SIGINT to the pooler (the pgherd process, or pgbouncer run by su).
  pkill -INT -f "valgrind.*callgrind-out-file=$out" || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$POOLER_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.3; done
  kill -0 "$POOLER_PID" 2>/dev/null && { kill -TERM "$POOLER_PID" 2>/dev/null; sleep 2; }
  wait "$POOLER_PID" 2>/dev/null || true
  POOLER_PID=""
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

declare -A PER_TX
ROWS=("tpcb|TPC-B-like -M extended|-M extended"
      "select|select-only -S -M extended|-S -M extended"
      "prepared|select-only -S -M prepared|-S -M prepared")
for row in "${ROWS[@]}"; do
  IFS='|' read -r key label args <<<"$row"
  for pooler in pgbouncer pgherd; do
    # PgBouncer 1.18 has no named prepared statements across transactions.
    if [ "$key" = prepared ] && [ "$pooler" = pgbouncer ]; then continue; fi
    log "$label -> $pooler (-t $T1 and -t $T2, under callgrind)"
    # shellcheck disable=SC2086
    a="$(total_ir "$pooler" "$T1" $args)"
    # shellcheck disable=SC2086
    b="$(total_ir "$pooler" "$T2" $args)"
    PER_TX["$key.$pooler"]=$(( (b - a) / (CLIENTS * (T2 - T1)) ))
  done
done

echo
echo "User-space instructions per transaction (callgrind), pgbench -c $CLIENTS -j 2, transaction mode, pool 20"
echo "pgherd: $PGHERD_BIN; PgBouncer $(/usr/sbin/pgbouncer --version | awk 'NR==1{print $2}')"
echo
echo "| pgbench | PgBouncer | pgherd | pgherd/PgBouncer |"
echo "|---|---|---|---|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r key label args <<<"$row"
  b="${PER_TX[$key.pgbouncer]:-}"
  h="${PER_TX[$key.pgherd]}"
  if [ -n "$b" ]; then
    ratio="$(python3 -c "print(f'{$h/$b:.2f}')")"
    echo "| $label | $b | $h | $ratio |"
  else
    echo "| $label | — (cannot) | $h | — |"
  fi
done
