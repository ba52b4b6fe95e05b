# The HA benches' shared parts: a fresh etcd and a 3-member pgherd or Patroni cluster on
# free loopback ports under $WORK, a writer through a multi-host libpq URI, and teardown.
# `source` it after bench/lib.sh, with these set:
#   REPO PGBIN PY PGHERD SU_PASS REPL_PASS HEALTHY_TIMEOUT KEEP
#   BENCH_NAME   (optional) prefix of the work directory
#   EXTRA_DCS    (optional) more `bootstrap.dcs` lines, indented by 4 spaces
# It sets an EXIT trap that tears everything down.

# ---------------------------------------------------------------- state and cleanup
WORK="$(mktemp -d "/tmp/pgherd-${BENCH_NAME:-ha}.XXXXXX")"
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
${EXTRA_DCS:-}
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


median() {           # median of numbers on stdin; "-" when none
  sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'
}
