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

# ---------------------------------------------------------------- state and cleanup
WORK="$(mktemp -d /tmp/pgherd-failover.XXXXXX)"
chmod 755 "$WORK"
CL=""                 # current cluster directory
ETCD_PID=""
WRITER_PID=""
declare -a PG_PORT API_PORT
MY_PGID="$(ps -o pgid= -p $$ | tr -d ' ')"

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# kill -9 a whole process group, never our own.
kill_group() {
  local pgid="$1"
  [ -n "$pgid" ] && [ "$pgid" -gt 1 ] && [ "$pgid" != "$MY_PGID" ] && kill -9 -- "-$pgid" 2>/dev/null || true
}

postmaster_pid() {   # pid of node $1's running postmaster, or nothing
  local f="$CL/node$1/data/postmaster.pid" pid
  [ -f "$f" ] || return 0
  pid="$(head -n1 "$f" 2>/dev/null | tr -d ' ')"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = postgres ] && echo "$pid"
  return 0
}

agent_pid() {        # pid of node $1's agent (a session leader, pgid = pid), or nothing
  local f="$CL/node$1/agent.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  alive "$pid" && echo "$pid"
  return 0
}

# The whole node dies at once: the agent's process group, then PostgreSQL's.
kill_node() {
  local i="$1" apid ppid ppgid
  apid="$(agent_pid "$i")"
  ppid="$(postmaster_pid "$i")"
  ppgid=""; [ -n "$ppid" ] && ppgid="$(ps -o pgid= -p "$ppid" | tr -d ' ')"
  # (already-gone processes are fine: every kill here may fail)
  if [ -n "$apid" ]; then kill_group "$apid"; kill -9 "$apid" 2>/dev/null || true; fi
  if [ -n "$ppgid" ]; then kill_group "$ppgid"; fi
  if [ -n "$ppid" ]; then kill -9 "$ppid" 2>/dev/null || true; fi
  rm -f "$CL/node$i/agent.pid"
  return 0
}

stop_writer() {
  if alive "$WRITER_PID"; then kill -9 "$WRITER_PID" 2>/dev/null || true; wait "$WRITER_PID" 2>/dev/null || true; fi
  WRITER_PID=""
}

stop_cluster() {
  stop_writer
  if [ -n "$CL" ]; then
    for i in 1 2 3; do kill_node "$i"; done
    # Stragglers (e.g. a pg_basebackup or pg_rewind the agent had started) in the node dirs.
    local pid
    for pid in $(pgrep -f -- "$CL/" 2>/dev/null || true); do
      [ "$pid" != $$ ] && kill -9 "$pid" 2>/dev/null || true
    done
  fi
  if alive "$ETCD_PID"; then kill -9 "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; fi
  ETCD_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_cluster
  if [ "$KEEP" -eq 1 ]; then log "kept $WORK"; else sleep 0.3; rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1$2" || true; }

psql_at() {          # psql_at PORT SQL
  PGPASSWORD="$SU_PASS" PGCONNECT_TIMEOUT=2 "$PGBIN/psql" -X -q -At \
    -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>/dev/null
}

# ---------------------------------------------------------------- writer
cat >"$WORK/writer.py" <<'EOF'
# Commit one row every 50 ms through a multi-host URI; log "ok <unix time> <server port>"
# after each commit and "err <unix time> <error>" at the start of each failure streak.
import os, sys, time, psycopg2
dsn, out_path, max_secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = open(out_path, "a", buffering=1)
period, start, parent = 0.05, time.time(), os.getppid()
conn, failing, nxt = None, False, time.time()
while time.time() - start < max_secs and os.getppid() == parent:
    try:
        if conn is None:
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO bench_writes (at) VALUES (clock_timestamp())")
        out.write("ok %.3f %s\n" % (time.time(), conn.info.port))
        failing = False
    except Exception as e:
        if not failing:
            out.write("err %.3f %s\n" % (time.time(), str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__))
        failing = True
        try:
            conn is not None and conn.close()
        except Exception:
            pass
        conn = None
    nxt += period
    now = time.time()
    if nxt > now:
        time.sleep(nxt - now)
    else:
        nxt = now
EOF

start_writer() {     # start_writer LOGFILE
  local hosts="127.0.0.1,127.0.0.1,127.0.0.1" ports="${PG_PORT[1]},${PG_PORT[2]},${PG_PORT[3]}"
  local dsn="host=$hosts port=$ports user=postgres password=$SU_PASS dbname=postgres"
  dsn+=" target_session_attrs=read-write connect_timeout=1 options='-c statement_timeout=2000'"
  "$PY" "$WORK/writer.py" "$dsn" "$1" 900 </dev/null >/dev/null 2>>"$1.stderr" &
  WRITER_PID=$!
}

# ---------------------------------------------------------------- cluster
start_etcd() {
  local ports client peer i
  ports="$(free_ports 2)"; client="${ports% *}"; peer="${ports#* }"
  mkdir -p "$CL/etcd"
  etcd --name=default --data-dir="$CL/etcd/data" \
    --listen-client-urls="http://127.0.0.1:$client" --advertise-client-urls="http://127.0.0.1:$client" \
    --listen-peer-urls="http://127.0.0.1:$peer" --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
    --initial-cluster="default=http://127.0.0.1:$peer" </dev/null >"$CL/etcd/etcd.log" 2>&1 &
  ETCD_PID=$!
  disown "$ETCD_PID"   # no "Killed" job notice at teardown
  ETCD_PORT="$client"
  for i in $(seq 1 100); do   # <= 20 s
    [ "$(http_code "$client" /health)" = 200 ] && return 0
    alive "$ETCD_PID" || break
    sleep 0.2
  done
  log "etcd did not start:"; tail -n 20 "$CL/etcd/etcd.log" >&2
  return 1
}

node_yaml() {        # node_yaml SYSTEM I TTL LOOP_WAIT RETRY_TIMEOUT
  local sys="$1" i="$2" dir="$CL/node$2"
  cat <<EOF
scope: bench-$sys
namespace: /pgherd-bench/
name: node$i

restapi:
  listen: 127.0.0.1:${API_PORT[$i]}
  connect_address: 127.0.0.1:${API_PORT[$i]}

etcd3:
  hosts: 127.0.0.1:$ETCD_PORT

bootstrap:
  dcs:
    ttl: $3
    loop_wait: $4
    retry_timeout: $5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_size: 128MB
        max_connections: 50
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256

postgresql:
  listen: 127.0.0.1:${PG_PORT[$i]}
  connect_address: 127.0.0.1:${PG_PORT[$i]}
  data_dir: $dir/data
  bin_dir: $PGBIN
  pgpass: $dir/pgpass
  authentication:
    replication:
      username: replicator
      password: $REPL_PASS
    superuser:
      username: postgres
      password: $SU_PASS
  parameters:
    unix_socket_directories: '$dir'
    shared_buffers: 16MB
EOF
}

start_node() {       # start_node SYSTEM I
  local sys="$1" i="$2" dir="$CL/node$2" k
  local -a cmd
  if [ "$sys" = pgherd ]; then
    cmd=(env PGHERD_LOG=info "$PGHERD" node -c "$dir/node.yml")
  else
    # Patroni refuses to run as root; setpriv execs, so the recorded pid is Patroni's.
    cmd=(setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$dir" "$PY" /usr/bin/patroni "$dir/node.yml")
  fi
  rm -f "$dir/agent.pid"
  # Own session (pgid = pid) so that the node can be killed as a group.
  (cd "$dir" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$dir/agent.pid" "${cmd[@]}" \
    </dev/null >>"$dir/agent.log" 2>&1) &
  disown $!   # no "Killed" job notices when the bench kills it
  for k in $(seq 1 50); do [ -s "$dir/agent.pid" ] && return 0; sleep 0.1; done
  log "node$i: agent did not start"; return 1
}

new_cluster() {      # new_cluster SYSTEM TTL LOOP_WAIT RETRY_TIMEOUT
  local sys="$1" i ports
  stop_cluster
  CL="$WORK/$sys-ttl$2-$(date +%s)"
  mkdir -p "$CL"; chmod 755 "$CL"
  start_etcd
  ports=($(free_ports 6))
  for i in 1 2 3; do
    PG_PORT[$i]="${ports[$((i - 1))]}"; API_PORT[$i]="${ports[$((i + 2))]}"
    mkdir -p "$CL/node$i"
    node_yaml "$sys" "$i" "$2" "$3" "$4" >"$CL/node$i/node.yml"
    chown -R postgres:postgres "$CL/node$i"
  done
  for i in 1 2 3; do start_node "$sys" "$i"; done
}

# Prints the index of the primary once there is exactly one (/primary 200), the two others
# answer /replica 200 and the primary streams to both; fails after HEALTHY_TIMEOUT.
wait_healthy() {
  local deadline=$((SECONDS + HEALTHY_TIMEOUT)) i p n
  while [ "$SECONDS" -lt "$deadline" ]; do
    p=""; n=0
    for i in 1 2 3; do [ "$(http_code "${API_PORT[$i]}" /primary)" = 200 ] && { p="$i"; n=$((n + 1)); }; done
    if [ "$n" -eq 1 ]; then
      local ok=1
      for i in 1 2 3; do
        [ "$i" = "$p" ] && continue
        [ "$(http_code "${API_PORT[$i]}" /replica)" = 200 ] || ok=0
      done
      if [ "$ok" -eq 1 ] && \
         [ "$(psql_at "${PG_PORT[$p]}" "select count(*) from pg_stat_replication where state = 'streaming'")" = 2 ]; then
        echo "$p"; return 0
      fi
    fi
    sleep 0.5
  done
  return 1
}

dump_logs() {
  local i
  for i in 1 2 3; do
    log "----- node$i agent log (last 25 lines) -----"
    tail -n 25 "$CL/node$i/agent.log" >&2 2>/dev/null || true
  done
}

# ---------------------------------------------------------------- one (system, timing)
declare -A SAMPLES MEDIAN

median() {           # median of numbers on stdin; "-" when none
  sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

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
