#!/usr/bin/env bash
# Pooler throughput, latency, CPU and memory: `pgherd pooler` vs PgBouncer (and, with
# --only, PostgreSQL direct).
#
# Starts one throwaway PostgreSQL 15 on a free loopback port (max_connections 1600,
# shared_buffers 128MB, everything else default), a role with a SCRAM password and
# `pgbench -i -s 10`. Each pooler runs twice, from one pgbouncer.ini per pool mode that
# both read (auth_type scram-sha-256 against a userlist.txt holding the role's SCRAM
# verifier, max_client_conn 11000, listen_backlog 4096, max_prepared_statements 200):
# `pool_mode = transaction` with default_pool_size 20, and `pool_mode = session` with
# default_pool_size 500 (a session holds its server, so every client needs one). All
# four start once and serve every run: long-lived, as users run them.
# Rows (pgbench -j 2 -T S): -S and the TPC-B-like script at -c 20, 50, 80 and 500, in
# transaction mode with -M extended and -M prepared (named statements across
# transactions) and in session mode with -M extended. Each round runs every row against
# each target, one after the other, so load from the rest of the machine hits them alike;
# the report shows every round and the median of the rounds. Then, each with a freshly
# started pooler, the RSS (VmRSS) growth while it holds 1,000 and 10,000 logged-in idle
# clients.
#
# Usage: bench/pooler.sh [--quick] [--rounds N] [--only LIST] [--time S]
#                         [--rev REV | --pgherd-bin PATH] [--pgbouncer auto|debian|source|PATH]
#                         [--perf] [--keep]
#   --quick      1 round, -T 5, transaction-mode -c 50 rows only, 1,000 idle clients only
#   --rounds N   rounds of all rows (default 3)
#   --only LIST  comma-separated subset of direct,pgbouncer,pgherd (default: pgbouncer,pgherd)
#   --time S     seconds per pgbench run (default 20, 5 with --quick)
#   --rev REV    benchmark commit REV (built from `git archive` under /var/tmp/pgherd-bench-src,
#                kept there as a cache) instead of the working tree
#   --pgherd-bin PATH  use this pgherd binary, build nothing
#   --pgbouncer  which PgBouncer: auto (default: Debian's if 1.21+, else 1.24.1 built from
#                Debian's source, see bench/lib.sh), debian, source, or a path
#   --perf       perf record pgherd during its round-1 runs; print the top symbols
#   --keep       keep the work directory (configs, logs, pgbench output) on exit
# Runs as root (PostgreSQL and PgBouncer run as the `postgres` OS user).
set -euo pipefail

QUICK=0
KEEP=0
PERF=0
ONLY="pgbouncer,pgherd"
DURATION=""
ROUNDS=""
BOUNCER_CHOICE=auto
REV=""
PGHERD_BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --keep) KEEP=1; shift ;;
    --perf) PERF=1; shift ;;
    --only) ONLY="${2:?--only needs a list: direct,pgbouncer,pgherd}"; shift 2 ;;
    --time) DURATION="${2:?--time needs seconds}"; shift 2 ;;
    --rev) REV="${2:?--rev needs a commit}"; shift 2 ;;
    --pgherd-bin) PGHERD_BIN="${2:?--pgherd-bin needs a path}"; shift 2 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --pgbouncer) BOUNCER_CHOICE="${2:?--pgbouncer needs auto, debian, source or a path}"; shift 2 ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
TARGETS=()
IFS=, read -r -a _only <<<"$ONLY"
for t in direct pgbouncer pgherd; do
  for o in "${_only[@]}"; do [ "$o" = "$t" ] && TARGETS+=("$t"); done
done
for o in "${_only[@]}"; do
  case "$o" in direct|pgbouncer|pgherd) ;; *) echo "--only: unknown target '$o'" >&2; exit 2 ;; esac
done
[ ${#TARGETS[@]} -gt 0 ] || { echo "--only selected nothing" >&2; exit 2; }
has_target() { local t; for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL and PgBouncer are started as the postgres user)" >&2; exit 2; }

if [ "$QUICK" -eq 1 ]; then
  T="${DURATION:-5}"; ROUNDS="${ROUNDS:-1}"; CLIENTS=(50); IDLE_COUNTS=(1000)
else
  T="${DURATION:-20}"; ROUNDS="${ROUNDS:-3}"; CLIENTS=(20 50 80 500); IDLE_COUNTS=(1000 10000)
fi
[[ "$T" =~ ^[1-9][0-9]*$ ]] || { echo "--time must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
PGBIN=/usr/lib/postgresql/15/bin
PY="/usr/bin/python3 -I"
PGHERD="$REPO/target/release/pgherd"
DB=bench
ROLE=bench
ROLE_PASS=bench-pass-7f3a
POOL_SIZE=20             # transaction mode
SESSION_POOL_SIZE=500    # session mode: one server per client, up to -c 500
MAX_CLIENT_CONN=11000
READY_TIMEOUT=30         # s: a server or pooler must accept logins within this
IDLE_TIMEOUT=300         # s: all idle clients must be logged in within this

# ---------------------------------------------------------------- 1. limits, dependencies, build
# 10,000 idle clients need 10,000+ descriptors in the pooler and in the client.
hard="$(ulimit -Hn)"
want=65536
[ "$hard" != unlimited ] && [ "$hard" -lt "$want" ] && want="$hard"
ulimit -n "$want"
if [ "$want" -lt 20000 ]; then
  log "ulimit -n is only $want (hard limit): idle tests capped at $((want - 1000)) clients"
  for i in "${!IDLE_COUNTS[@]}"; do
    [ "${IDLE_COUNTS[$i]}" -gt $((want - 1000)) ] && IDLE_COUNTS[$i]=$((want - 1000))
  done
fi

install_missing postgresql-15 postgresql-client-15 python3   # pgbench is in postgresql-client-15
[ "$PERF" -eq 1 ] && install_missing linux-perf
# (Where systemd runs, Debian's package also starts a pgbouncer service on 6432; ours use
# their own config and free ports, so it is left alone.)
PGHERD_WHAT="working tree $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
if has_target pgherd; then
  if [ -n "$PGHERD_BIN" ]; then
    PGHERD="$PGHERD_BIN"; PGHERD_WHAT="$PGHERD_BIN"
  elif [ -n "$REV" ]; then
    # A commit, not the working tree (which may be mid-edit): its own source tree and a
    # target dir shared between revisions so only the workspace crates rebuild.
    sha="$(git -C "$REPO" rev-parse --verify "$REV^{commit}")"
    src="/var/tmp/pgherd-bench-src/${sha:0:12}"
    if [ ! -f "$src/Cargo.toml" ]; then
      rm -rf "$src.tmp"; mkdir -p "$src.tmp"
      git -C "$REPO" archive "$sha" | tar -x -C "$src.tmp"
      mv "$src.tmp" "$src"
    fi
    log "building pgherd ${sha:0:12} (release) in $src"
    (cd "$src" && CARGO_TARGET_DIR=/var/tmp/pgherd-bench-src/target CARGO_BUILD_JOBS=2 \
      cargo build --release -q -p pgherd-cli)
    mkdir -p "/var/tmp/pgherd-bench-src/bin"
    PGHERD="/var/tmp/pgherd-bench-src/bin/pgherd-${sha:0:12}"
    cp /var/tmp/pgherd-bench-src/target/release/pgherd "$PGHERD"
    PGHERD_WHAT="commit ${sha:0:12}"
  else
    log "building pgherd (release)"
    (cd "$REPO" && CARGO_BUILD_JOBS=2 cargo build --release -q -p pgherd-cli)
  fi
  [ -x "$PGHERD" ] || { echo "no pgherd binary at $PGHERD" >&2; exit 2; }
fi
BOUNCER_VERSION=""
PREPARED_OK_BOUNCER=0
if has_target pgbouncer; then
  PGBOUNCER="$(pick_pgbouncer "$BOUNCER_CHOICE")"
  BOUNCER_VERSION="$(pgbouncer_version "$PGBOUNCER")"
  # max_prepared_statements (prepared statements in transaction mode) arrived in 1.21.
  if printf '1.21.0\n%s\n' "$BOUNCER_VERSION" | sort -V -C; then PREPARED_OK_BOUNCER=1; fi
  log "PgBouncer $BOUNCER_VERSION at $PGBOUNCER (prepared statements in transaction mode: $([ $PREPARED_OK_BOUNCER = 1 ] && echo yes || echo no, needs 1.21+))"
fi

# ---------------------------------------------------------------- state and cleanup
WORK="$(mktemp -d /tmp/pgherd-pooler-bench.XXXXXX)"
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"      # kind key target value1 value2 status cpu round
: >"$RESULTS"
PGDATA="$WORK/pg/data"
declare -A PID PORT     # per pooler instance: pgbouncer-transaction, pgherd-session, ...
IDLE_PID=""
PERF_PID=""
PG_STARTED=0

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() {          # stop_pid PID: TERM, up to 5 s, then KILL
  local pid="$1" i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_pooler() { stop_pid "${PID[$1]:-}"; PID[$1]=""; }   # stop_pooler INSTANCE
stop_idle() { stop_pid "$IDLE_PID"; IDLE_PID=""; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if alive "$PERF_PID"; then kill -INT "$PERF_PID" 2>/dev/null || true; sleep 1; stop_pid "$PERF_PID"; fi
  stop_idle
  local i
  for i in "${!PID[@]}"; do stop_pooler "$i"; done
  if [ "$PG_STARTED" -eq 1 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups \
      "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  if [ "$KEEP" -eq 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

INSTANCES=(pgbouncer-transaction pgherd-transaction pgbouncer-session pgherd-session)
read -r PG_PORT PORT[pgbouncer-transaction] PORT[pgherd-transaction] PORT[pgbouncer-session] \
  PORT[pgherd-session] <<<"$(free_ports 5)"

psql_super() {       # SQL as the superuser over PostgreSQL's own socket
  "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PG_PORT" -U postgres -d "${2:-postgres}" -c "$1"
}

wait_login() {       # wait_login PORT PID-or-empty: until a SCRAM login and SELECT 1 work
  local port="$1" pid="${2:-}" i
  for i in $(seq $((READY_TIMEOUT * 5))); do
    if [ -n "$pid" ] && ! alive "$pid"; then return 1; fi
    if PGPASSWORD="$ROLE_PASS" PGCONNECT_TIMEOUT=2 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" \
         -U "$ROLE" -d "$DB" -c "select 1" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
cpu_ticks() {        # user+system clock ticks of PID (all threads), or nothing
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 0
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- 2. PostgreSQL
log "PostgreSQL 15 on 127.0.0.1:$PG_PORT"
mkdir -p "$PGDATA" "$WORK/sock"
chown postgres:postgres "$WORK/pg" "$PGDATA" "$WORK/sock"
chmod 700 "$PGDATA"
as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C.UTF-8 >"$WORK/initdb.log" 2>&1
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/sock'
max_connections = 1600
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
EOF
as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg/postgresql.log" -w -t 60 start >/dev/null
PG_STARTED=1
psql_super "CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE_PASS'"
psql_super "CREATE DATABASE $DB OWNER $ROLE"
log "pgbench -i -s 10"
PGPASSWORD="$ROLE_PASS" "$PGBIN/pgbench" -i -s 10 -q -h 127.0.0.1 -p "$PG_PORT" -U "$ROLE" "$DB" \
  >"$WORK/pgbench-init.log" 2>&1
psql_super "VACUUM ANALYZE" "$DB"
VERIFIER="$(psql_super "SELECT rolpassword FROM pg_authid WHERE rolname = '$ROLE'")"

# ---------------------------------------------------------------- 3. pooler configs
# One userlist (the role's SCRAM verifier, as pg_authid has it) and one ini per pooler
# instance; PgBouncer's and pgherd's differ only in port, logfile and pidfile.
printf '"%s" "%s"\n' "$ROLE" "$VERIFIER" >"$WORK/userlist.txt"
make_ini() {         # make_ini INSTANCE (pooler-mode)
  local mode="${1#*-}" size="$POOL_SIZE"
  [ "$mode" = session ] && size="$SESSION_POOL_SIZE"
  mkdir -p "$WORK/run-$1"
  cat >"$WORK/$1.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[$1]}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
logfile = $WORK/run-$1/$1.log
pidfile = $WORK/run-$1/$1.pid
admin_users = $ROLE
pool_mode = $mode
default_pool_size = $size
max_client_conn = $MAX_CLIENT_CONN
listen_backlog = 4096
EOF
  # Only where PgBouncer knows the key; pgherd's default is 200 either way.
  [ "$PREPARED_OK_BOUNCER" -eq 1 ] && echo "max_prepared_statements = 200" >>"$WORK/$1.ini"
  # PgBouncer (postgres user) writes its log and pidfile here.
  chown -R postgres:postgres "$WORK/run-$1" "$WORK/$1.ini"
}
for i in "${INSTANCES[@]}"; do make_ini "$i"; done
chown postgres:postgres "$WORK"/userlist.txt

start_pooler() {     # start_pooler INSTANCE
  rm -f "$WORK/run-$1/$1.pid"
  case "$1" in
    pgbouncer-*)
      # PgBouncer refuses to run as root. -q: no log to stderr (it has its logfile).
      setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$PGBOUNCER" -q "$WORK/$1.ini" >>"$WORK/$1.out" 2>&1 & ;;
    pgherd-*)
      NO_COLOR=1 "$PGHERD" pooler --ini "$WORK/$1.ini" >>"$WORK/$1.out" 2>&1 & ;;
  esac
  PID[$1]=$!
  wait_login "${PORT[$1]}" "${PID[$1]}" || {
    log "$1 did not come up"; tail -20 "$WORK/$1.out" "$WORK/run-$1/$1.log" >&2 2>/dev/null; exit 1; }
}

# ---------------------------------------------------------------- 4. pgbench rows
# row key: poolmode-script-protocol-clients, e.g. transaction-S-extended-50, session-tpcb-extended-500
ROWS=()
for script in S tpcb; do
  for c in "${CLIENTS[@]}"; do ROWS+=("transaction-$script-extended-$c"); done
  for c in "${CLIENTS[@]}"; do ROWS+=("transaction-$script-prepared-$c"); done
  for c in "${CLIENTS[@]}"; do ROWS+=("session-$script-extended-$c"); done
done

instance_of() {      # instance_of TARGET POOLMODE: the pooler instance (or direct)
  case "$1" in direct) echo direct ;; *) echo "$1-$2" ;; esac
}
port_of() { case "$1" in direct) echo "$PG_PORT" ;; *) echo "${PORT[$1]}" ;; esac; }

run_pgbench() {      # run_pgbench ROW TARGET ROUND
  local row="$1" target="$2" round="$3" pmode script mode c out rc=0 tps lat failed status inst
  IFS=- read -r pmode script mode c <<<"$row"
  inst="$(instance_of "$target" "$pmode")"
  out="$WORK/pgbench-$row-$target-$round.log"
  local args=(-n -M "$mode" -c "$c" -j 2 -T "$T" -P 5 -h 127.0.0.1 -p "$(port_of "$inst")" -U "$ROLE")
  [ "$script" = S ] && args+=(-S)
  # Same starting point for every run: small tables vacuumed, history empty, no dirty buffers.
  psql_super "VACUUM pgbench_branches, pgbench_tellers" "$DB"
  psql_super "TRUNCATE pgbench_history" "$DB"
  psql_super "CHECKPOINT" "$DB"
  if [ "$target" = pgherd ] && [ "$PERF" -eq 1 ] && [ "$round" = 1 ]; then
    perf record -F 499 -g -p "${PID[$inst]}" -o "$WORK/perf-$row.data" >"$WORK/perf-$row.out" 2>&1 &
    PERF_PID=$!
    sleep 0.5
  fi
  local ppid="${PID[$inst]:-}" cpu0="" cpu1=""
  cpu0="$(cpu_ticks "$ppid")"
  log "round $round: pgbench $row -> $target"
  PGPASSWORD="$ROLE_PASS" timeout -k 10 $((T + 60)) "$PGBIN/pgbench" "${args[@]}" "$DB" >"$out" 2>&1 || rc=$?
  if alive "$PERF_PID"; then kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=""; fi
  cpu1="$(cpu_ticks "$ppid")"
  tps="$(awk '/^tps = /{print $3; exit}' "$out")"
  # The pooler's own CPU per transaction (µs): less sensitive than tps to what else runs.
  local ntx cpu_us="-"
  ntx="$(awk '/^number of transactions actually processed: /{print $6; exit}' "$out" | cut -d/ -f1)"
  if [ -n "$cpu0" ] && [ -n "$cpu1" ] && [ -n "$ntx" ] && [ "$ntx" -gt 0 ]; then
    cpu_us="$(awk -v a="$cpu0" -v b="$cpu1" -v n="$ntx" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/n}')"
  fi
  lat="$(awk '/^latency average = /{print $4; exit}' "$out")"
  failed="$(awk '/^number of failed transactions: /{print $5; exit}' "$out")"
  status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timeout"
  elif grep -q "Run was aborted" "$out"; then status="aborted"
  elif [ "$rc" -ne 0 ]; then status="exit-$rc"
  elif [ -n "$failed" ] && [ "$failed" != 0 ]; then status="failed-tx-$failed"
  fi
  if [ "$status" != ok ]; then
    log "  $target: $status; first errors:"
    grep -m3 -iE "error|abort|FATAL" "$out" | sed 's/^/    /' >&2 || true
  fi
  printf 'tx\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$target" "${tps:--}" "${lat:--}" "$status" "$cpu_us" "$round" >>"$RESULTS"
}

declare -A TIMED_OUT   # "row target" -> 1: a stall is not timed again in later rounds
for inst in "${INSTANCES[@]}"; do has_target "${inst%%-*}" && start_pooler "$inst"; done
for round in $(seq "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    for target in "${TARGETS[@]}"; do
      # Direct is the same in both pool modes: once per row, with the transaction rows.
      [ "$target" = direct ] && [ "${row%%-*}" = session ] && continue
      if [ -n "${TIMED_OUT["$row $target"]:-}" ]; then
        printf 'tx\t%s\t%s\t-\t-\ttimeout\t-\t%s\n' "$row" "$target" "$round" >>"$RESULTS"
        continue
      fi
      run_pgbench "$row" "$target" "$round"
      tail -1 "$RESULTS" | grep -q $'\ttimeout\t' && TIMED_OUT["$row $target"]=1
      # A pooler that died (or hung) during a run is restarted so the later rows still run.
      inst="$(instance_of "$target" "${row%%-*}")"
      if [ "$target" != direct ] && ! alive "${PID[$inst]}"; then log "$inst died; restarting"; start_pooler "$inst"; fi
    done
  done
done
for inst in "${INSTANCES[@]}"; do stop_pooler "$inst"; done

# ---------------------------------------------------------------- 5. idle clients: RSS
# A client that logs N connections in (SCRAM, 64 logins in flight), writes
# "ok <n> fail <m> <first error>" to its ready file and then holds them, idle.
cat >"$WORK/idle.py" <<'EOF'
import asyncio, base64, hashlib, hmac, os, struct, sys
host, port, user, db, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
n, ready_path, hold = int(sys.argv[6]), sys.argv[7], float(sys.argv[8])
salted = {}

def msg(t, body): return t + struct.pack("!i", len(body) + 4) + body

async def read_msg(r):
    t = await r.readexactly(1)
    (ln,) = struct.unpack("!i", await r.readexactly(4))
    return t, await r.readexactly(ln - 4)

async def login():
    r, w = await asyncio.open_connection(host, port)
    body = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    w.write(struct.pack("!ii", len(body) + 8, 196608) + body)
    cfmb = sfm = None
    while True:
        t, b = await read_msg(r)
        if t == b"E":
            fields = dict((f[:1], f[1:]) for f in b.split(b"\0") if f)
            raise RuntimeError(fields.get(b"M", b"?").decode())
        if t == b"Z":
            return r, w
        if t != b"R":
            continue
        (code,) = struct.unpack("!i", b[:4])
        if code == 10:      # SASL
            nonce = base64.b64encode(os.urandom(18)).decode()
            cfmb = "n=,r=" + nonce
            data = ("n,," + cfmb).encode()
            w.write(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data))
        elif code == 11:    # SASLContinue
            sfm = b[4:].decode()
            a = dict(kv.split("=", 1) for kv in sfm.split(","))
            key = (a["s"], a["i"])
            if key not in salted:   # same verifier for every login: derive once
                salted[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(a["s"]), int(a["i"]))
            ck = hmac.new(salted[key], b"Client Key", "sha256").digest()
            sk = hashlib.sha256(ck).digest()
            cfwp = "c=biws,r=" + a["r"]
            sig = hmac.new(sk, (cfmb + "," + sfm + "," + cfwp).encode(), "sha256").digest()
            proof = base64.b64encode(bytes(x ^ y for x, y in zip(ck, sig))).decode()
            w.write(msg(b"p", (cfwp + ",p=" + proof).encode()))
        elif code == 5:     # md5
            inner = hashlib.md5((password + user).encode()).hexdigest()
            w.write(msg(b"p", b"md5" + hashlib.md5(inner.encode() + b[4:8]).hexdigest().encode() + b"\0"))
        elif code == 3:     # cleartext
            w.write(msg(b"p", password.encode() + b"\0"))

async def main():
    sem = asyncio.Semaphore(64)
    conns, errors = [], []
    async def one():
        async with sem:
            try:
                conns.append(await asyncio.wait_for(login(), 60))
            except Exception as e:
                errors.append(repr(e))
    await asyncio.gather(*(one() for _ in range(n)))
    with open(ready_path + ".tmp", "w") as f:
        f.write("ok %d fail %d %s\n" % (len(conns), len(errors), errors[0] if errors else ""))
    os.rename(ready_path + ".tmp", ready_path)
    await asyncio.sleep(hold)
    # Still logged in? (a pooler that dropped idle clients would show here)
    dead = sum(1 for r, w in conns if r.at_eof())
    with open(ready_path + ".end", "w") as f:
        f.write("dropped %d\n" % dead)

asyncio.run(main())
EOF

idle_test() {        # idle_test TARGET N: with a freshly started transaction-mode pooler
  local target="$1" n="$2" pid before after ready="$WORK/idle-$1-$2.ready" i line ok
  local inst="$target-transaction"
  start_pooler "$inst"
  pid="${PID[$inst]}"
  # wait_login has made the pool and one server connection; let it settle.
  sleep 2
  before="$(rss_kb "$pid")"
  log "idle $n -> $target (VmRSS before: ${before} kB)"
  $PY "$WORK/idle.py" 127.0.0.1 "$(port_of "$inst")" "$ROLE" "$DB" "$ROLE_PASS" "$n" "$ready" 8 \
    >"$WORK/idle-$target-$n.out" 2>&1 &
  IDLE_PID=$!
  for i in $(seq $((IDLE_TIMEOUT * 5))); do
    [ -f "$ready" ] && break
    alive "$IDLE_PID" || break
    sleep 0.2
  done
  line="$(cat "$ready" 2>/dev/null || echo "ok 0 fail $n no-ready-file")"
  ok="$(awk '{print $2}' <<<"$line")"
  sleep 3   # the pooler has answered every login; let it settle
  if alive "$pid"; then after="$(rss_kb "$pid")"; else after=""; fi
  # the client holds its connections 8 s in all, then checks none was dropped
  for i in $(seq 100); do alive "$IDLE_PID" || break; sleep 0.2; done
  stop_idle
  local status=ok dropped
  dropped="$(awk '{print $2}' "$ready.end" 2>/dev/null || echo "?")"
  if [ -z "$after" ]; then status="pooler-died"
  elif [ "$ok" != "$n" ]; then status="logins-$ok-of-$n"
  elif [ "$dropped" != 0 ]; then status="dropped-$dropped"
  fi
  [ "$status" != ok ] && log "  $target: $status ($line)"
  local per="-"
  [ -n "$after" ] && [ "${ok:-0}" -gt 0 ] && per=$(( (after - before) * 1024 / ok ))
  log "  VmRSS after: ${after:-?} kB; $per bytes per idle client"
  printf 'idle\t%s\t%s\t%s\t%s\t%s\t-\t1\n' "$n" "$target" "$per" "$before/${after:--}" "$status" >>"$RESULTS"
  stop_pooler "$inst"
}

for n in "${IDLE_COUNTS[@]}"; do
  for target in "${TARGETS[@]}"; do
    [ "$target" = direct ] && continue
    idle_test "$target" "$n"
  done
done

# ---------------------------------------------------------------- 6. report
perf_top() {
  local f
  for f in "$WORK"/perf-*.data; do
    [ -f "$f" ] || continue
    echo
    echo "perf, pgherd during ${f##*/perf-}: top symbols (self %)"
    perf report -i "$f" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | sed 's/[[:space:]-]*$//' | head -15 || true
  done
}

echo
echo "pgherd pooler ($PGHERD_WHAT) vs PgBouncer ${BOUNCER_VERSION:-(not run)} — PostgreSQL 15, scram-sha-256,"
echo "transaction mode pool $POOL_SIZE, session mode pool $SESSION_POOL_SIZE; pgbench -j 2 -T $T; $ROUNDS round(s), median shown"
echo "$(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
$PY - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs = {}            # (key, target) -> [(tps, lat, status, cpu)] in round order
order_tx, order_idle = [], []
for kind, key, target, v1, v2, status, cpu_us, rnd in rows:
    o = order_tx if kind == "tx" else order_idle
    if key not in o: o.append(key)
    runs.setdefault((kind, key, target), []).append((v1, v2, status, cpu_us))

def num(s):
    try: return float(s)
    except ValueError: return None

def median(key, target, i):
    """Median of field i over the runs that succeeded; None if none did."""
    v = [num(r[i]) for r in runs.get(("tx", key, target), []) if r[2] == "ok" and num(r[i]) is not None]
    return statistics.median(v) if v else None

def failures(key, target):
    return [r[2] for r in runs.get(("tx", key, target), []) if r[2] != "ok"]

def each(key, target):
    return " ".join(("%.0f" % num(r[0])) if r[2] == "ok" and num(r[0]) is not None else r[2]
                    for r in runs.get(("tx", key, target), [])) or "—"

def desc(key):
    pmode, script, mode, c = key.split("-")
    return "%s, %s -M %s -c %s" % (pmode, "-S" if script == "S" else "TPC-B", mode, c)

def f(x, fmt):
    return fmt % x if x is not None else "—"

have_direct = any(t == "direct" for (_, _, t) in runs)
print()
print("| pgbench | %sPgBouncer tps per round | pgherd tps per round | tps ratio (medians) | lat ms PgBouncer / pgherd | CPU µs/tx PgBouncer / pgherd | CPU ratio | tps ≥ 1.0 | CPU ≤ 0.9 |"
      % ("direct tps | " if have_direct else ""))
print("|---|%s---|---|---|---|---|---|---|---|" % ("---|" if have_direct else ""))
passes = misses = 0
for key in order_tx:
    bt, ht = median(key, "pgbouncer", 0), median(key, "pgherd", 0)
    bl, hl = median(key, "pgbouncer", 1), median(key, "pgherd", 1)
    bc, hc = median(key, "pgbouncer", 3), median(key, "pgherd", 3)
    tr = ht / bt if bt and ht is not None else None
    cr = hc / bc if bc and hc is not None else None
    if failures(key, "pgherd"):
        tv = "MISS (pgherd %s)" % ",".join(failures(key, "pgherd"))
    elif bt is None and ht is not None:
        tv = "PASS (PgBouncer %s)" % ",".join(failures(key, "pgbouncer"))
    elif tr is not None:
        tv = "PASS" if tr >= 1.0 else "MISS"
    else:
        tv = "—"
    # The CPU target (issue #8): transaction mode, TPC-B, -c 50 and -c 80.
    cpu_row = key.startswith("transaction-tpcb-extended-") and key.split("-")[3] in ("50", "80")
    cv = ("PASS" if cr <= 0.9 else "MISS") if cpu_row and cr is not None else "—"
    for v in (tv, cv):
        passes += v.startswith("PASS"); misses += v.startswith("MISS")
    direct = (each(key, "direct") + " | ") if have_direct else ""
    print("| %s | %s%s | %s | %s | %s / %s | %s / %s | %s | %s | %s |" % (desc(key), direct,
          each(key, "pgbouncer"), each(key, "pgherd"), f(tr, "%.3f"), f(bl, "%.2f"), f(hl, "%.2f"),
          f(bc, "%.1f"), f(hc, "%.1f"), f(cr, "%.2f"), tv, cv))
print()
print("%d PASS, %d MISS" % (passes, misses))
if order_idle:
    print()
    print("| idle clients | PgBouncer B/client | PgBouncer VmRSS kB before/after | pgherd B/client | pgherd VmRSS kB before/after | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for key in order_idle:
        b, h = runs.get(("idle", key, "pgbouncer"), [None])[0], runs.get(("idle", key, "pgherd"), [None])[0]
        cell = lambda v, i: "—" if v is None else (v[i] if v[2] == "ok" else "%s (%s)" % (v[i], v[2]))
        r = verdict = "—"
        if b and h:
            if h[2] != "ok":
                verdict = "MISS (pgherd %s)" % h[2]
            elif b[2] != "ok":
                verdict = "PASS (PgBouncer %s)" % b[2]
            elif num(b[0]) and num(h[0]) is not None:
                r = "%.2f" % (num(h[0]) / num(b[0]))
                verdict = "PASS" if num(h[0]) <= num(b[0]) else "MISS"
        print("| %s | %s | %s | %s | %s | %s | %s |" % ("{:,}".format(int(key)),
            cell(b, 0), cell(b, 1), cell(h, 0), cell(h, 1), r, verdict))
print()
print("tps ratio = pgherd/PgBouncer median tps (target >= 1); lat = median mean latency;")
print("CPU µs/tx: user+system CPU the pooler process used during the run / transactions, median;")
print("CPU target (<= 0.9x PgBouncer's) applies to transaction-mode TPC-B at -c 50 and -c 80.")
print("idle ratio = pgherd/PgBouncer VmRSS growth per logged-in idle client (target <= 1).")
EOF
[ "$PERF" -eq 1 ] && perf_top
if [ "$KEEP" -eq 1 ]; then echo; echo "logs, configs and pgbench output: $WORK"; fi
