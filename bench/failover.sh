#!/usr/bin/env bash
# Failover time under write load: pgherd vs Patroni, same machine, same etcd, same timings.
#
# For each system and each timing (ttl/loop_wait/retry_timeout = 30/10/10 and 10/2/4) it
# starts a fresh etcd and a fresh 3-node PostgreSQL 15 cluster on free loopback ports,
# waits for one primary and two streaming replicas, runs a writer committing one row every
# 50 ms through a multi-host libpq URI (target_session_attrs=read-write), kill -9s the
# primary's whole node (agent and PostgreSQL process group) and measures the seconds from
# the kill to the first commit on the new primary. The killed node is restarted and rejoins
# (pg_rewind) before the next round; if it does not, the cluster is rebuilt.
#
# Usage: bench/failover.sh [--rounds N] [--only pgherd|patroni] [--quick] [--keep]
#   --rounds N   samples per (system, timing); default 5
#   --only S     run one system only
#   --quick      1 round, ttl 10 only
#   --keep       keep the work directory (configs, agent and PostgreSQL logs) on exit
# Runs as root (PostgreSQL and Patroni run as the `postgres` OS user).
set -euo pipefail

ROUNDS=5
ONLY=""
QUICK=0
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --only) ONLY="${2:?--only needs pgherd or patroni}"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
case "$ONLY" in ""|pgherd|patroni) ;; *) echo "--only must be pgherd or patroni" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL and Patroni are started as the postgres user)" >&2; exit 2; }

SYSTEMS=(pgherd patroni)
[ -n "$ONLY" ] && SYSTEMS=("$ONLY")
TIMINGS=("30 10 10" "10 2 4")   # ttl loop_wait retry_timeout
if [ "$QUICK" -eq 1 ]; then ROUNDS=1; TIMINGS=("10 2 4"); fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3            # Debian's python: psycopg2 and Patroni live there
PGHERD="$REPO/target/release/pgherd"
SU_PASS=bench-su-pass
REPL_PASS=bench-rep-pass
HEALTHY_TIMEOUT=180            # s: bootstrap or rejoin until 1 primary + 2 streaming replicas
FAILOVER_EXTRA=60              # s: give up on a failover after ttl + loop_wait + this
MAX_REBUILDS=2                 # fresh clusters per (system, timing) when a rejoin fails

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ---------------------------------------------------------------- 1. dependencies, build
need=(postgresql-15 etcd-server python3-psycopg2 curl)
for s in "${SYSTEMS[@]}"; do [ "$s" = patroni ] && need+=(patroni python3-etcd); done
install_missing "${need[@]}"
for s in "${SYSTEMS[@]}"; do
  if [ "$s" = pgherd ]; then
    log "building pgherd (release)"
    (cd "$REPO" && CARGO_BUILD_JOBS=2 cargo build --release -q -p pgherd-cli)
  fi
done

BENCH_NAME=failover
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"

# ---------------------------------------------------------------- one (system, timing)
declare -A SAMPLES MEDIAN

run_series() {       # run_series SYSTEM TTL LOOP_WAIT RETRY_TIMEOUT
  local sys="$1" ttl="$2" lw="$3" rt="$4" key="$1 $2/$3/$4"
  local r p rebuilds=0 samples=() wlog kill_t first old_port settle deadline
  log "== $sys ttl=$ttl loop_wait=$lw retry_timeout=$rt: $ROUNDS round(s)"
  new_cluster "$sys" "$ttl" "$lw" "$rt"
  for r in $(seq 1 "$ROUNDS"); do
    if ! p="$(wait_healthy)"; then
      log "$sys: no primary with 2 streaming replicas within ${HEALTHY_TIMEOUT}s (round $r)"
      dump_logs
      if [ "$rebuilds" -ge "$MAX_REBUILDS" ]; then samples+=(FAIL); continue; fi
      rebuilds=$((rebuilds + 1)); log "$sys: rebuilding the cluster"
      new_cluster "$sys" "$ttl" "$lw" "$rt"
      if ! p="$(wait_healthy)"; then dump_logs; samples+=(FAIL); continue; fi
    fi
    psql_at "${PG_PORT[$p]}" "create table if not exists bench_writes (id bigserial primary key, at timestamptz)" >/dev/null || true
    wlog="$CL/writer-$r.log"; : >"$wlog"
    start_writer "$wlog"
    # Writer up, then a random phase within loop_wait so the kill does not line up with
    # the leader's lease renewals the same way every round.
    deadline=$((SECONDS + 30))
    while [ "$(grep -c '^ok' "$wlog" || true)" -lt 20 ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    settle="$(awk -v r="$RANDOM" -v lw="$lw" 'BEGIN { printf "%.2f", 1 + (r / 32768) * lw }')"
    sleep "$settle"
    old_port="${PG_PORT[$p]}"
    log "$sys round $r: kill -9 node$p (primary, port $old_port)"
    kill_t="$(date +%s.%N)"
    kill_node "$p"
    first=""
    deadline=$((SECONDS + ttl + lw + FAILOVER_EXTRA))
    while [ -z "$first" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
      first="$(awk -v k="$kill_t" -v old="$old_port" '$1 == "ok" && $2 + 0 > k + 0 && $3 != old { print $2 - k; exit }' "$wlog")"
    done
    stop_writer
    if [ -n "$first" ]; then
      first="$(printf '%.2f' "$first")"
      log "$sys round $r: first write on the new primary ${first}s after the kill"
      samples+=("$first")
    else
      log "$sys round $r: no write succeeded within $((ttl + lw + FAILOVER_EXTRA))s of the kill"
      tail -n 5 "$wlog" >&2 || true
      dump_logs
      samples+=(FAIL)
    fi
    if [ "$r" -lt "$ROUNDS" ]; then start_node "$sys" "$p" || true; fi   # rejoin for the next round
  done
  stop_cluster
  SAMPLES[$key]="${samples[*]}"
  MEDIAN[$key]="$(printf '%s\n' "${samples[@]}" | grep -v FAIL | median)"
}

for t in "${TIMINGS[@]}"; do
  read -r ttl lw rt <<<"$t"
  for s in "${SYSTEMS[@]}"; do
    run_series "$s" "$ttl" "$lw" "$rt"
  done
done

# ---------------------------------------------------------------- report
echo
echo "Failover time under load (s from kill -9 of the primary node to the first commit on the new primary)"
printf '%-8s  %-16s  %-40s  %s\n' system ttl/loop_wait/rt samples median
for t in "${TIMINGS[@]}"; do
  read -r ttl lw rt <<<"$t"
  for s in "${SYSTEMS[@]}"; do
    k="$s $ttl/$lw/$rt"
    printf '%-8s  %-16s  %-40s  %s\n' "$s" "$ttl/$lw/$rt" "${SAMPLES[$k]}" "${MEDIAN[$k]}"
  done
done
if [ ${#SYSTEMS[@]} -eq 2 ]; then
  echo
  for t in "${TIMINGS[@]}"; do
    read -r ttl lw rt <<<"$t"
    a="${MEDIAN[pgherd $ttl/$lw/$rt]}"; b="${MEDIAN[patroni $ttl/$lw/$rt]}"
    ratio="$(awk -v a="$a" -v b="$b" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }')"
    echo "ttl $ttl / loop_wait $lw: pgherd/Patroni median ratio = $ratio"
  done
fi
