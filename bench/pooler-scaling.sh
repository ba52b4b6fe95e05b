#!/usr/bin/env bash
# Pooler throughput past one core: `pgherd pooler` with 1, 2 and 4 worker threads
# (PGHERD_POOLER_THREADS) against one PgBouncer process and against 4 PgBouncer
# processes sharing the port with so_reuseport = 1 (PgBouncer's own answer to its single
# thread).
#
# One throwaway PostgreSQL 15 (trust auth on loopback) that is not the bottleneck: the
# workload is `SELECT 1` from a pgbench script file (-f), -M prepared, -c 500 -j 2, in
# transaction mode with default_pool_size 50 (each PgBouncer process has its own pool of
# 50). Every setup runs once per round, in the same order, for --rounds rounds; the
# table shows each round's tps, the median, the median's ratio to one PgBouncer process,
# and how much CPU the pooler processes and the whole machine used (a pooler can only
# scale into cores that pgbench and PostgreSQL leave free).
#
# Usage: bench/pooler-scaling.sh [--time S] [--rounds N] [--threads LIST]
#                                 [--pgherd-bin PATH] [--pgbouncer auto|debian|source|PATH]
#   --time S        seconds per pgbench run (default 15)
#   --rounds N      rounds (default 3)
#   --threads LIST  pgherd worker threads to try (default 1,2,4)
#   --pgherd-bin    the pgherd binary (default: target/release/pgherd, built first)
#   --pgbouncer     which PgBouncer (default auto: Debian's if 1.21+, which prepared
#                   statements in transaction mode need, else 1.24.1 built from source)
# Runs as root (PostgreSQL and PgBouncer run as the `postgres` OS user).
set -euo pipefail

T=15
ROUNDS=3
THREADS=1,2,4
PGHERD_BIN=""
BOUNCER_CHOICE=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --time) T="${2:?--time needs seconds}"; shift 2 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --threads) THREADS="${2:?--threads needs a list, e.g. 1,2,4}"; shift 2 ;;
    --pgherd-bin) PGHERD_BIN="${2:?--pgherd-bin needs a path}"; shift 2 ;;
    --pgbouncer) BOUNCER_CHOICE="${2:?--pgbouncer needs auto, debian, source or a path}"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$T" =~ ^[1-9][0-9]*$ ]] || { echo "--time must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "--threads must be a list like 1,2,4" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL and PgBouncer run as postgres)" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
PGBIN=/usr/lib/postgresql/15/bin
CLIENTS=500
POOL_SIZE=50
BOUNCER_PROCS=4
READY_TIMEOUT=30   # s: a pooler must accept logins within this

install_missing postgresql-15 postgresql-client-15 python3
PGBOUNCER="$(pick_pgbouncer "$BOUNCER_CHOICE")"
BOUNCER_VERSION="$(pgbouncer_version "$PGBOUNCER")"
printf '1.21.0\n%s\n' "$BOUNCER_VERSION" | sort -V -C \
  || { echo "PgBouncer $BOUNCER_VERSION cannot run -M prepared in transaction mode (needs 1.21+)" >&2; exit 2; }
PGHERD_BIN="$(pgherd_bin "$REPO" "$PGHERD_BIN")"

WORK="$(mktemp -d /tmp/pgherd-scaling.XXXXXX)"
chmod 1777 "$WORK"
POOLER_PIDS=()      # every pooler process, all setups
stop_poolers() {
  local p
  for p in "${POOLER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${POOLER_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  POOLER_PIDS=()
}
cleanup() {
  stop_poolers
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SETUPS=(pgbouncer-1 "pgbouncer-$BOUNCER_PROCS")
IFS=, read -r -a _threads <<<"$THREADS"
for n in "${_threads[@]}"; do SETUPS+=("pgherd-$n"); done
read -r PG_PORT <<<"$(free_ports 1)"
read -r -a _ports <<<"$(free_ports ${#SETUPS[@]})"
declare -A PORT PIDS
for i in "${!SETUPS[@]}"; do PORT[${SETUPS[$i]}]="${_ports[$i]}"; done
log "PostgreSQL 15 on 127.0.0.1:$PG_PORT"
su postgres -s /bin/sh -c "$PGBIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $WORK/pg -w -l $WORK/pg.log \
  -o '-p $PG_PORT -k $WORK -c max_connections=$(( (BOUNCER_PROCS + 1 + ${#_threads[@]}) * POOL_SIZE + 20))' start" >/dev/null
echo 'SELECT 1;' >"$WORK/select1.sql"

make_ini() {         # make_ini SETUP: its ini, on its own port
  cat >"$WORK/$1.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[$1]}
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 2000
max_prepared_statements = 200
listen_backlog = 4096
so_reuseport = 1
INI
  chmod 644 "$WORK/$1.ini"
}
echo '"postgres" ""' >"$WORK/userlist.txt"
chmod 644 "$WORK/userlist.txt"

wait_ready() {       # wait_ready SETUP
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$PGBIN/psql" -h 127.0.0.1 -p "${PORT[$1]}" -U postgres bench -XAtc 'select 1' >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "$1 did not accept logins within ${READY_TIMEOUT} s" >&2; exit 1; }
    sleep 0.2
  done
}
# Every setup starts once and serves every round: long-lived, as users run them.
start_setup() {      # start_setup SETUP: pgbouncer-N (N processes on one port) or pgherd-N (N threads)
  local i pids=()
  make_ini "$1"
  case "$1" in
    pgbouncer-*)
      # PgBouncer refuses root; setpriv execs it, so the PID is PgBouncer's own.
      for i in $(seq "${1#pgbouncer-}"); do
        setpriv --reuid=postgres --regid=postgres --init-groups -- \
          "$PGBOUNCER" -q "$WORK/$1.ini" >>"$WORK/$1.log" 2>&1 &
        pids+=($!)
      done ;;
    pgherd-*)
      PGHERD_POOLER_THREADS="${1#pgherd-}" NO_COLOR=1 "$PGHERD_BIN" pooler --ini "$WORK/$1.ini" \
        >>"$WORK/$1.log" 2>&1 &
      pids+=($!) ;;
  esac
  POOLER_PIDS+=("${pids[@]}")
  PIDS[$1]="${pids[*]}"
  wait_ready "$1"
}
pooler_ticks() {     # pooler_ticks SETUP: user+system ticks of its processes, all threads
  local p v sum=0
  for p in ${PIDS[$1]}; do
    for v in /proc/"$p"/task/*/stat; do
      [ -r "$v" ] && sum=$((sum + $(sed 's/^.*) //' "$v" | awk '{print $12 + $13}')))
    done
  done
  echo "$sum"
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }   # all CPUs, not idle/iowait
CLK_TCK="$(getconf CLK_TCK)"

ROWS=("select1|-f $WORK/select1.sql" "S|-S")
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
"$PGBIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1
for setup in "${SETUPS[@]}"; do start_setup "$setup"; done

for round in $(seq "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r key args <<<"$row"
    for setup in "${SETUPS[@]}"; do
      log "round $round: $key -> $setup"
      c0="$(pooler_ticks "$setup")"; b0="$(busy_ticks)"; t0="$(date +%s.%N)"
      # shellcheck disable=SC2086
      out="$("$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$T" -h 127.0.0.1 -p "${PORT[$setup]}" \
        -U postgres $args bench 2>&1)" || true
      c1="$(pooler_ticks "$setup")"; b1="$(busy_ticks)"; t1="$(date +%s.%N)"
      tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")"
      failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")"
      if [ -z "$tps" ] || [ "${failed:-0}" != 0 ]; then
        log "  $setup failed: $(grep -m2 -iE 'error|abort|fatal' <<<"$out" | tr '\n' ' ')"
        tps=0
      fi
      # cores used = ticks / (CLK_TCK * seconds); includes the run's connect phase for both.
      awk -v k="$key" -v s="$setup" -v r="$round" -v tps="$tps" -v c="$((c1 - c0))" -v b="$((b1 - b0))" \
        -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN{d=t1-t0; printf "%s\t%s\t%s\t%.0f\t%.2f\t%.2f\n", k, s, r, tps, c/hz/d, b/hz/d}' >>"$RESULTS"
    done
  done
done

echo
echo "pgbench -M prepared -c $CLIENTS -j 2 -T $T, transaction mode, pool $POOL_SIZE per process;"
echo "pgherd: $PGHERD_BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')); PgBouncer $BOUNCER_VERSION ($PGBOUNCER)"
echo "$(nproc) CPUs; PostgreSQL 15, pgbench and the pooler share them. Load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 -I - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order_k, order_s, data = [], [], {}
for k, s, r, tps, pooler, machine in rows:
    if k not in order_k: order_k.append(k)
    if s not in order_s: order_s.append(s)
    data.setdefault((k, s), []).append((float(tps), float(pooler), float(machine)))
label = {"select1": "SELECT 1 (-f)", "S": "select-only -S"}
print()
print("| workload | setup | tps per round | median tps | vs 1 PgBouncer | pooler cores used (median) | machine cores busy (median) |")
print("|---|---|---|---|---|---|---|")
for k in order_k:
    base = statistics.median(t for t, _, _ in data.get((k, "pgbouncer-1"), [(0, 0, 0)]))
    for s in order_s:
        v = data.get((k, s), [])
        if not v: continue
        med = statistics.median(t for t, _, _ in v)
        ratio = "%.2f" % (med / base) if base else "—"
        print("| %s | %s | %s | %.0f | %s | %.2f | %.2f |" % (label.get(k, k), s,
              " ".join("%.0f" % t for t, _, _ in v), med, ratio,
              statistics.median(p for _, p, _ in v), statistics.median(m for _, _, m in v)))
EOF
