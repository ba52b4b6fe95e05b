#!/usr/bin/env bash
# The cost of following a cluster: the same pgbench workloads through one `pgherd pooler`
# to the same PostgreSQL, by a static route and by a cluster route, in one run.
#
# Starts etcd and a 1-member pgherd cluster (`pgherd node`, PostgreSQL 15 on a free
# loopback port, max_connections 200) and ONE long-lived `pgherd pooler` whose ini has two
# databases reaching that same PostgreSQL:
#   static = host=127.0.0.1 port=P dbname=postgres
#   routed = cluster=bench-pgherd role=primary dbname=postgres   (+ a [pgherd] section:
#            the leader key watched in etcd, member keys read every second)
# in transaction pool mode, default_pool_size 20 each, scram-sha-256 against a plain-text
# userlist. Same process, same settings: only the route differs. `pgbench -i -s 10` once;
# then each round runs every workload (pgbench -n -M extended -j 2 -T S):
#   -S -c 20, TPC-B -c 20, -S -c 50 and TPC-B -c 50 (more clients than the pool's 20
#   servers), against `static` and `routed` back to back, the order alternating between
#   rounds. Before each run the small tables are vacuumed, pgbench_history truncated and a
#   checkpoint taken. It prints each round's tps, the median tps and latency, the pooler's
#   CPU per transaction (from /proc) and the routed/static ratios.
#
# Usage: bench/pooler-route.sh [--rounds N] [--time S] [--quick] [--keep]
#   --rounds N   rounds of all workloads (default 3)
#   --time S     seconds per pgbench run (default 15)
#   --quick      1 round, 5 s runs
#   --keep       keep the work directory (configs, logs, pgbench output)
# Env: PGHERD_BIN=/path/to/pgherd uses that binary (default: build target/release/pgherd).
# Runs as root (PostgreSQL runs as the `postgres` OS user).
set -euo pipefail

ROUNDS=3
T=15
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --time) T="${2:?--time needs seconds}"; shift 2 ;;
    --quick) ROUNDS=1; T=5; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ "$T" =~ ^[1-9][0-9]*$ ]] || { echo "--time must be a positive integer" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL is started as the postgres user)" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3
SU_PASS=bench-su-pass
REPL_PASS=bench-rep-pass
HEALTHY_TIMEOUT=120
POOL_SIZE=20
SCALE=10
WORKLOADS=("S 20" "tpcb 20" "S 50" "tpcb 50")

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
install_missing postgresql-15 postgresql-client-15 etcd-server curl
PGHERD="$(pgherd_bin "$REPO" "${PGHERD_BIN:-}")"

BENCH_NAME=pooler-route
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"

POOLER_PID=""
stop_pooler() {
  local i
  if alive "$POOLER_PID"; then
    kill -TERM "$POOLER_PID" 2>/dev/null || true
    for i in $(seq 30); do alive "$POOLER_PID" || break; sleep 0.1; done
    alive "$POOLER_PID" && kill -9 "$POOLER_PID" 2>/dev/null || true
    wait "$POOLER_PID" 2>/dev/null || true
  fi
  POOLER_PID=""
}
route_cleanup() { local rc=$?; stop_pooler; (exit "$rc"); cleanup; }
trap route_cleanup EXIT

# ---------------------------------------------------------------- 1. one-member cluster
CL="$WORK/cluster"
mkdir -p "$CL/node1"; chmod 755 "$CL"
start_etcd
read -r PG_PORT[1] API_PORT[1] FRONT <<<"$(free_ports 3)"
node_yaml pgherd 1 10 2 4 | sed 's/max_connections: 50/max_connections: 200/' >"$CL/node1/node.yml"
chown -R postgres:postgres "$CL/node1"
start_node pgherd 1
deadline=$((SECONDS + HEALTHY_TIMEOUT))
until [ "$(http_code "${API_PORT[1]}" /primary)" = 200 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { dump_logs; log "node1 did not become the primary"; exit 1; }
  sleep 0.5
done
log "1-member pgherd cluster: primary on 127.0.0.1:${PG_PORT[1]}, etcd 127.0.0.1:$ETCD_PORT"
log "pgbench -i -s $SCALE"
PGPASSWORD="$SU_PASS" "$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "${PG_PORT[1]}" -U postgres postgres \
  >"$WORK/pgbench-init.log" 2>&1
psql_at "${PG_PORT[1]}" "VACUUM ANALYZE" >/dev/null

# ---------------------------------------------------------------- 2. the pooler
printf '"postgres" "%s"\n' "$SU_PASS" >"$WORK/userlist.txt"
cat >"$WORK/pooler.ini" <<EOF
[databases]
static = host=127.0.0.1 port=${PG_PORT[1]} dbname=postgres
routed = cluster=bench-pgherd role=primary dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $FRONT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
logfile = $WORK/pooler.log
admin_users = postgres
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
max_prepared_statements = 200

[pgherd]
etcd_hosts = 127.0.0.1:$ETCD_PORT
namespace = /pgherd-bench/
scope = bench-pgherd
dcs_timeout = 5
EOF
PGHERD_LOG=info NO_COLOR=1 "$PGHERD" pooler --ini "$WORK/pooler.ini" </dev/null >>"$WORK/pooler.out" 2>&1 &
POOLER_PID=$!
for db in static routed; do
  ok=0
  for i in $(seq 100); do
    alive "$POOLER_PID" || break
    if [ "$(PGPASSWORD="$SU_PASS" PGCONNECT_TIMEOUT=2 timeout 5 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$FRONT" \
         -U postgres -d "$db" -c "select inet_server_port()" 2>/dev/null)" = "${PG_PORT[1]}" ]; then ok=1; break; fi
    sleep 0.2
  done
  [ "$ok" -eq 1 ] || { log "no login through the pooler to $db"; tail -n 30 "$WORK/pooler.out" >&2; exit 1; }
done
log "pgherd pooler (pid $POOLER_PID) on 127.0.0.1:$FRONT: databases static and routed"

# ---------------------------------------------------------------- 3. runs
RESULTS="$WORK/results.tsv"; : >"$RESULTS"   # workload route round tps lat cpu_us failed
cpu_ticks() { [ -r "/proc/$1/stat" ] || return 0; sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CLK_TCK="$(getconf CLK_TCK)"

run_one() {          # run_one SCRIPT CLIENTS ROUTE ROUND
  local script="$1" c="$2" route="$3" round="$4" out rc=0 tps lat ntx failed cpu0 cpu1 cpu_us="-"
  out="$WORK/pgbench-$script-$c-$route-$round.log"
  psql_at "${PG_PORT[1]}" "VACUUM pgbench_branches, pgbench_tellers" >/dev/null
  psql_at "${PG_PORT[1]}" "TRUNCATE pgbench_history" >/dev/null
  psql_at "${PG_PORT[1]}" "CHECKPOINT" >/dev/null
  local args=(-n -M extended -c "$c" -j 2 -T "$T" -P 5 -h 127.0.0.1 -p "$FRONT" -U postgres)
  [ "$script" = S ] && args+=(-S)
  log "round $round: pgbench $script -c $c -> $route"
  cpu0="$(cpu_ticks "$POOLER_PID")"
  PGPASSWORD="$SU_PASS" timeout -k 5 $((T + 60)) "$PGBIN/pgbench" "${args[@]}" "$route" >"$out" 2>&1 || rc=$?
  cpu1="$(cpu_ticks "$POOLER_PID")"
  tps="$(awk '/^tps = /{print $3; exit}' "$out")"
  lat="$(awk '/^latency average = /{print $4; exit}' "$out")"
  ntx="$(awk '/^number of transactions actually processed: /{ split($6, a, "/"); print a[1]; exit }' "$out")"
  failed="$(awk '/^number of failed transactions: /{print $5; exit}' "$out")"
  if [ -n "$cpu0" ] && [ -n "$cpu1" ] && [ -n "$ntx" ] && [ "$ntx" -gt 0 ]; then
    cpu_us="$(awk -v a="$cpu0" -v b="$cpu1" -v n="$ntx" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/n}')"
  fi
  if [ "$rc" -ne 0 ] || grep -q "aborted" "$out"; then
    log "  $route: pgbench rc $rc"; grep -m3 -iE "error|abort" "$out" | sed 's/^/    /' >&2 || true
    tps="-"; lat="-"
  fi
  printf '%s-%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$script" "$c" "$route" "$round" "${tps:--}" "${lat:--}" "$cpu_us" "${failed:--}" >>"$RESULTS"
  alive "$POOLER_PID" || { log "the pooler died"; tail -n 30 "$WORK/pooler.out" >&2; exit 1; }
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order=(static routed); else order=(routed static); fi
  for w in "${WORKLOADS[@]}"; do
    read -r script c <<<"$w"
    for route in "${order[@]}"; do run_one "$script" "$c" "$route" "$round"; done
  done
done
errors="$(grep -ciE '\b(error|warn)' "$WORK/pooler.out" || true)"

# ---------------------------------------------------------------- 4. report
echo
echo "pgherd pooler ($PGHERD): static route vs cluster route to the same PostgreSQL 15 (1-member pgherd cluster),"
echo "one pooler process, transaction mode, pool $POOL_SIZE per database; pgbench -n -M extended -j 2 -T $T; $ROUNDS round(s), median shown"
echo "$(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg); pooler log lines with error/warn: $errors"
$PY - "$RESULTS" <<'EOF'
import statistics, sys
runs = {}
order = []
for line in open(sys.argv[1]):
    w, route, rnd, tps, lat, cpu, failed = line.rstrip("\n").split("\t")
    if w not in order: order.append(w)
    runs.setdefault((w, route), []).append((tps, lat, cpu, failed))
def num(s):
    try: return float(s)
    except ValueError: return None
def med(w, route, i):
    v = [num(r[i]) for r in runs.get((w, route), []) if num(r[i]) is not None]
    return statistics.median(v) if v else None
def each(w, route):
    return " ".join(r[0].split(".")[0] if num(r[0]) is not None else r[0] for r in runs.get((w, route), []))
def fmt(x, f): return f % x if x is not None else "—"
def desc(w):
    s, c = w.split("-")
    return "%s -c %s" % ("-S" if s == "S" else "TPC-B", c)
print()
def pair_ratio(w):
    # Each round runs static and routed back to back: the ratio within a round is less
    # exposed to the machine's load drifting between rounds.
    a, b = runs.get((w, "static"), []), runs.get((w, "routed"), [])
    v = [num(y[0]) / num(x[0]) for x, y in zip(a, b) if num(x[0]) and num(y[0]) is not None]
    return statistics.median(v) if v else None
print("| pgbench | static tps per round | routed tps per round | tps routed/static (medians) | median of per-round ratios | lat ms static / routed | pooler CPU µs/tx static / routed | failed tx static / routed |")
print("|---|---|---|---|---|---|---|---|")
for w in order:
    st, rt = med(w, "static", 0), med(w, "routed", 0)
    ratio = rt / st if st and rt is not None else None
    fs = sum(int(r[3]) for r in runs.get((w, "static"), []) if r[3].isdigit())
    fr = sum(int(r[3]) for r in runs.get((w, "routed"), []) if r[3].isdigit())
    print("| %s | %s | %s | %s | %s | %s / %s | %s / %s | %d / %d |" % (desc(w), each(w, "static"), each(w, "routed"),
          fmt(ratio, "%.3f"), fmt(pair_ratio(w), "%.3f"), fmt(med(w, "static", 1), "%.2f"), fmt(med(w, "routed", 1), "%.2f"),
          fmt(med(w, "static", 2), "%.1f"), fmt(med(w, "routed", 2), "%.1f"), fs, fr))
EOF
if [ "$KEEP" -eq 1 ]; then echo; echo "logs, configs and pgbench output: $WORK"; fi
