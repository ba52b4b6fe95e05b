# The end-to-end benches' shared parts (failover_e2e.sh, switchover_e2e.sh): the router a
# client connects to, in front of a 3-member cluster started by bench/ha-lib.sh.
#   pgherd  one `pgherd pooler` following the cluster through etcd
#           (`postgres = cluster=bench-pgherd role=primary`, a [pgherd] section);
#   glued   the tutorial's stack: PgBouncer in front (the one address clients know),
#           pointing at HAProxy, which sends to the member whose Patroni REST API answers
#           `OPTIONS /primary` with 200 (inter 1s fall 2 rise 1, on-marked-down
#           shutdown-sessions).
# Both poolers read the same [pgbouncer] settings (transaction mode, pool 20,
# query_wait_timeout 30, server_login_retry 1: PgBouncer's default of 15 s would add up to
# 15 s to the glued stack's recovery, a fairness choice), with the same plain-text userlist.
# `source` it after bench/ha-lib.sh, with these set:
#   PGHERD PGBOUNCER SU_PASS   and from ha-lib.sh: WORK CL ETCD_PORT PG_PORT API_PORT
# It wraps ha-lib.sh's EXIT trap so that the routers are stopped too.

ROUTER_SYS=""          # pgherd or glued: which router runs now
FRONT_PORT=""          # the only address clients use
HAPROXY_PORT=""
declare -a ROUTER_PIDS=()
POOL_SIZE="${POOL_SIZE:-20}"
QUERY_WAIT_TIMEOUT="${QUERY_WAIT_TIMEOUT:-30}"
SERVER_LOGIN_RETRY="${SERVER_LOGIN_RETRY:-1}"
DCS_TIMEOUT="${DCS_TIMEOUT:-5}"

stop_routers() {
  local pid i
  for pid in "${ROUTER_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 20); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  ROUTER_PIDS=()
  ROUTER_SYS=""
}

e2e_cleanup() {
  local rc=$?
  declare -F e2e_extra_stop >/dev/null && e2e_extra_stop
  stop_ackwriter
  stop_routers
  (exit "$rc")
  cleanup
}
trap e2e_cleanup EXIT

# The [pgbouncer] section both poolers read; $1 = listen port, $2 = their run directory.
pooler_common_ini() {
  cat <<EOF
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $2/userlist.txt
logfile = $2/pooler.log
pidfile = $2/pooler.pid
admin_users = postgres
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = ${MAX_CLIENT_CONN:-1000}
query_wait_timeout = $QUERY_WAIT_TIMEOUT
server_login_retry = $SERVER_LOGIN_RETRY
EOF
}

# Waits until a login and a write-capable query work through the front port (at most $2 s).
wait_front() {       # wait_front PORT SECS
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(PGPASSWORD="$SU_PASS" PGCONNECT_TIMEOUT=2 timeout 5 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$1" \
          -U postgres -d postgres -c "select not pg_is_in_recovery()" 2>/dev/null)" = t ]; then
      return 0
    fi
    sleep 0.3
  done
  return 1
}

# start_router SYSTEM (pgherd | patroni): the router for the current cluster ($CL).
start_router() {
  local sys="$1" dir="$CL/router" ports
  stop_routers
  mkdir -p "$dir"
  printf '"postgres" "%s"\n' "$SU_PASS" >"$dir/userlist.txt"
  ports=($(free_ports 2)); FRONT_PORT="${ports[0]}"; HAPROXY_PORT="${ports[1]}"
  if [ "$sys" = pgherd ]; then
    {
      echo "[databases]"
      echo "postgres = cluster=bench-pgherd role=primary dbname=postgres"
      echo
      pooler_common_ini "$FRONT_PORT" "$dir"
      echo
      echo "[pgherd]"
      echo "etcd_hosts = 127.0.0.1:$ETCD_PORT"
      echo "namespace = /pgherd-bench/"
      echo "scope = bench-pgherd"
      echo "dcs_timeout = $DCS_TIMEOUT"
    } >"$dir/pooler.ini"
    (cd "$dir" && exec env PGHERD_LOG=info NO_COLOR=1 "$PGHERD" pooler --ini "$dir/pooler.ini" \
      </dev/null >>"$dir/pooler.out" 2>&1) &
    ROUTER_PIDS+=($!)
    ROUTER_SYS=pgherd
  else
    {
      echo "global"
      echo "    maxconn 1000"
      echo "defaults"
      echo "    mode tcp"
      echo "    timeout connect 5000"
      echo "    timeout client 50000"
      echo "    timeout server 50000"
      echo "listen postgres_primary"
      echo "    bind 127.0.0.1:$HAPROXY_PORT"
      echo "    option httpchk OPTIONS /primary"
      echo "    http-check expect status 200"
      echo "    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions"
      local i
      for i in 1 2 3; do
        echo "    server node$i 127.0.0.1:${PG_PORT[$i]} maxconn 100 check port ${API_PORT[$i]}"
      done
    } >"$dir/haproxy.cfg"
    haproxy -db -f "$dir/haproxy.cfg" </dev/null >>"$dir/haproxy.out" 2>&1 &
    ROUTER_PIDS+=($!)
    {
      echo "[databases]"
      echo "postgres = host=127.0.0.1 port=$HAPROXY_PORT dbname=postgres"
      echo
      pooler_common_ini "$FRONT_PORT" "$dir"
    } >"$dir/pooler.ini"
    chown -R postgres:postgres "$dir"
    # PgBouncer refuses to run as root.
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
      "$PGBOUNCER" -q "$dir/pooler.ini" </dev/null >>"$dir/pooler.out" 2>&1 &
    ROUTER_PIDS+=($!)
    ROUTER_SYS=glued
    # HAProxy starts with every server up until its checks say otherwise (fall 2): let
    # the replicas be marked down before anyone connects.
    sleep 3
  fi
  if ! wait_front "$FRONT_PORT" 60; then
    log "$sys router: no write-capable login through 127.0.0.1:$FRONT_PORT within 60 s"
    tail -n 20 "$dir"/*.out "$dir/pooler.log" >&2 2>/dev/null || true
    return 1
  fi
  log "$ROUTER_SYS router up: clients use 127.0.0.1:$FRONT_PORT"
}

# The index of the member whose REST API says /primary 200 (exactly one), or nothing.
current_primary() {
  local i p="" n=0
  for i in 1 2 3; do [ "$(http_code "${API_PORT[$i]}" /primary)" = 200 ] && { p="$i"; n=$((n + 1)); }; done
  [ "$n" -eq 1 ] && echo "$p"
  return 0
}

# Where a write through the front port lands now: the PostgreSQL port, or nothing.
front_port_target() {
  PGPASSWORD="$SU_PASS" PGCONNECT_TIMEOUT=2 timeout 5 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$FRONT_PORT" \
    -U postgres -d postgres -c "select inet_server_port() where not pg_is_in_recovery()" 2>/dev/null || true
}

# Waits until writes through the front port land on member $1 (at most $2 s).
wait_front_on() {    # wait_front_on I SECS
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(front_port_target)" = "${PG_PORT[$1]}" ] && return 0
    sleep 0.3
  done
  return 1
}

router_logs() {
  log "----- router logs (last 20 lines each) -----"
  tail -n 20 "$CL/router/pooler.log" "$CL/router/pooler.out" "$CL/router/haproxy.out" >&2 2>/dev/null || true
}

# ---------------------------------------------------------------- acknowledged-write writer
# writer.py DSN OUT FIRST_ID PERIOD MAX_SECS OP_TIMEOUT: one INSERT of a fresh id and a
# COMMIT every PERIOD s, reconnecting after any error. Logs per attempt:
#   ok <unix time> <id> <server port>      the COMMIT was acknowledged
#   unsure <unix time> <id> <server port>  acknowledged with PostgreSQL's warning that the
#                                          wait for synchronous replication was cancelled
#   err <unix time> <id> <error>           no acknowledgement
# An operation running longer than OP_TIMEOUT is cancelled by a watchdog thread (no
# statement_timeout: a cancelled wait for a synchronous standby still commits locally).
cat >"$WORK/ackwriter.py" <<'EOF'
import os, sys, threading, time, psycopg2
dsn, out_path = sys.argv[1], sys.argv[2]
next_id, period, max_secs, op_timeout = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
out = open(out_path, "a", buffering=1)
start, parent = time.time(), os.getppid()
state = {"conn": None, "since": None}

def watchdog():
    while True:
        time.sleep(0.2)
        c, s = state["conn"], state["since"]
        if c is not None and s is not None and time.time() - s > op_timeout:
            state["since"] = None
            try:
                c.cancel()
            except Exception:
                pass

threading.Thread(target=watchdog, daemon=True).start()
conn, nxt = None, time.time()
while time.time() - start < max_secs and os.getppid() == parent:
    i = next_id
    next_id += 1
    try:
        if conn is None:
            conn = psycopg2.connect(dsn)
            state["conn"] = conn
        state["since"] = time.time()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO bench_acks (id, at) VALUES (%s, clock_timestamp()) RETURNING inet_server_port()", (i,))
            port = cur.fetchone()[0]
        del conn.notices[:]
        conn.commit()
        state["since"] = None
        kind = "unsure" if any("synchronous replication" in n for n in conn.notices) else "ok"
        out.write("%s %.3f %d %s\n" % (kind, time.time(), i, port))
    except Exception as e:
        state["since"] = None
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        out.write("err %.3f %d %s\n" % (time.time(), i, msg))
        try:
            conn is not None and conn.close()
        except Exception:
            pass
        conn = None
        state["conn"] = None
    nxt += period
    now = time.time()
    if nxt > now:
        time.sleep(nxt - now)
    else:
        nxt = now
EOF

ACK_PID=""
start_ackwriter() {  # start_ackwriter LOGFILE FIRST_ID PERIOD MAX_SECS
  local dsn="host=127.0.0.1 port=$FRONT_PORT user=postgres password=$SU_PASS dbname=postgres connect_timeout=2"
  "$PY" "$WORK/ackwriter.py" "$dsn" "$1" "$2" "$3" "$4" 20 </dev/null >/dev/null 2>>"$1.stderr" &
  ACK_PID=$!
}
stop_ackwriter() {
  if alive "$ACK_PID"; then kill -9 "$ACK_PID" 2>/dev/null || true; wait "$ACK_PID" 2>/dev/null || true; fi
  ACK_PID=""
}

# Acknowledged ids (ok lines) of a writer log missing from table bench_acks on member $2;
# the missing ids go to LOGFILE.lost. Prints "LOST ACKED", or nothing when the member
# cannot be read.
lost_acks() {        # lost_acks LOGFILE I
  local have
  have="$(psql_at "${PG_PORT[$2]}" "select id from bench_acks order by id")" || return 0
  awk -v lostf="$1.lost" 'NR == FNR { if ($1 != "") have[$1] = 1; next }
    $1 == "ok" { n++; if (!($3 in have)) { lost++; print $3 > lostf } }
    END { printf "%d %d\n", lost + 0, n + 0 }' <(printf '%s\n' "$have") "$1"
}
