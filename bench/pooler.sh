#!/usr/bin/env bash
# Pooler throughput, latency and memory: PostgreSQL direct vs PgBouncer vs `pgherd pooler`.
#
# Starts one throwaway PostgreSQL 15 on a free loopback port (max_connections 600,
# shared_buffers 128MB, everything else default), a role with a SCRAM password and
# `pgbench -i -s 10`. Both poolers read the same pgbouncer.ini (transaction mode,
# default_pool_size 20, auth_type scram-sha-256 against a userlist.txt holding the role's
# SCRAM verifier, max_client_conn 11000, listen_backlog 4096); only the port differs.
# Then, one run after the other on that PostgreSQL (per row: direct, PgBouncer, pgherd):
#   pgbench -S and the TPC-B-like script, -M extended, -c 50 and -c 500, -j 2 -T 30,
#   and one -S -M prepared -c 50 row (named statements across transactions);
# and, each with a freshly started pooler, the RSS (VmRSS) growth while it holds 1,000
# and 10,000 logged-in idle clients. Prints tps, mean latency, bytes per idle client,
# pgherd/PgBouncer ratios and PASS/MISS against issue #3's targets.
#
# Usage: bench/pooler.sh [--quick] [--only LIST] [--time S] [--rev REV | --pgherd-bin PATH]
#                         [--perf] [--keep]
#   --quick      -T 5, -c 50 only, 1,000 idle clients only (~1.5 min once built)
#   --only LIST  comma-separated subset of direct,pgbouncer,pgherd (default: all three)
#   --time S     seconds per pgbench run (default 30, 5 with --quick)
#   --rev REV    benchmark commit REV (built from `git archive` under /var/tmp/pgherd-bench-src,
#                kept there as a cache) instead of the working tree
#   --pgherd-bin PATH  use this pgherd binary, build nothing
#   --perf       perf record pgherd during its pgbench runs; print the top symbols
#   --keep       keep the work directory (configs, logs, pgbench output) on exit
# Runs as root (PostgreSQL and PgBouncer run as the `postgres` OS user).
set -euo pipefail

QUICK=0
KEEP=0
PERF=0
ONLY="direct,pgbouncer,pgherd"
DURATION=""
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
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
  T="${DURATION:-5}"; CLIENTS=(50); IDLE_COUNTS=(1000)
else
  T="${DURATION:-30}"; CLIENTS=(50 500); IDLE_COUNTS=(1000 10000)
fi
[[ "$T" =~ ^[1-9][0-9]*$ ]] || { echo "--time must be a positive integer" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY="/usr/bin/python3 -I"
PGHERD="$REPO/target/release/pgherd"
PGBOUNCER=/usr/sbin/pgbouncer
DB=bench
ROLE=bench
ROLE_PASS=bench-pass-7f3a
POOL_SIZE=20
MAX_CLIENT_CONN=11000
READY_TIMEOUT=30         # s: a server or pooler must accept logins within this
IDLE_TIMEOUT=300         # s: all idle clients must be logged in within this

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

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

need=(postgresql-15 postgresql-client-15 python3)   # pgbench is in postgresql-client-15
has_target pgbouncer && need+=(pgbouncer)
[ "$PERF" -eq 1 ] && need+=(linux-perf)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
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
  BOUNCER_VERSION="$("$PGBOUNCER" --version | awk 'NR==1{print $2}')"
  # max_prepared_statements (prepared statements in transaction mode) arrived in 1.21.
  if printf '1.21.0\n%s\n' "$BOUNCER_VERSION" | sort -V -C; then PREPARED_OK_BOUNCER=1; fi
  log "PgBouncer $BOUNCER_VERSION (prepared statements in transaction mode: $([ $PREPARED_OK_BOUNCER = 1 ] && echo yes || echo no, needs 1.21+))"
fi

# ---------------------------------------------------------------- state and cleanup
WORK="$(mktemp -d /tmp/pgherd-pooler-bench.XXXXXX)"
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"      # kind key target value1 value2 status
: >"$RESULTS"
PGDATA="$WORK/pg/data"
BOUNCER_PID=""
PGHERD_PID=""
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
stop_bouncer() { stop_pid "$BOUNCER_PID"; BOUNCER_PID=""; }
stop_pgherd() { stop_pid "$PGHERD_PID"; PGHERD_PID=""; }
stop_idle() { stop_pid "$IDLE_PID"; IDLE_PID=""; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if alive "$PERF_PID"; then kill -INT "$PERF_PID" 2>/dev/null || true; sleep 1; stop_pid "$PERF_PID"; fi
  stop_idle
  stop_bouncer
  stop_pgherd
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

free_ports() {       # N distinct free loopback ports
  $PY - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r PG_PORT BOUNCER_PORT PGHERD_PORT <<<"$(free_ports 3)"

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
max_connections = 600
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
# One userlist (the role's SCRAM verifier, as pg_authid has it) and one ini for both
# poolers; pgbouncer.ini and pgherd.ini differ only in port, logfile and pidfile.
printf '"%s" "%s"\n' "$ROLE" "$VERIFIER" >"$WORK/userlist.txt"
make_ini() {         # make_ini NAME PORT
  cat >"$WORK/$1.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
logfile = $WORK/run-$1/$1.log
pidfile = $WORK/run-$1/$1.pid
admin_users = $ROLE
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENT_CONN
listen_backlog = 4096
EOF
  # Only where PgBouncer knows the key; pgherd's default is 200 either way.
  [ "$PREPARED_OK_BOUNCER" -eq 1 ] && echo "max_prepared_statements = 200" >>"$WORK/$1.ini"
  return 0
}
mkdir -p "$WORK/run-pgbouncer" "$WORK/run-pgherd"
chown postgres:postgres "$WORK/run-pgbouncer"   # PgBouncer (postgres user) writes its log and pidfile here
make_ini pgbouncer "$BOUNCER_PORT"
make_ini pgherd "$PGHERD_PORT"
chown postgres:postgres "$WORK"/userlist.txt "$WORK"/pgbouncer.ini

start_bouncer() {
  # PgBouncer refuses to run as root. -q: no log to stderr (it has its logfile).
  rm -f "$WORK/run-pgbouncer/pgbouncer.pid"
  setpriv --reuid=postgres --regid=postgres --init-groups -- \
    "$PGBOUNCER" -q "$WORK/pgbouncer.ini" >>"$WORK/pgbouncer.out" 2>&1 &
  BOUNCER_PID=$!
  wait_login "$BOUNCER_PORT" "$BOUNCER_PID" || { log "PgBouncer did not come up"; tail -20 "$WORK/run-pgbouncer/pgbouncer.log" >&2; exit 1; }
}
start_pgherd() {
  NO_COLOR=1 "$PGHERD" pooler --ini "$WORK/pgherd.ini" >>"$WORK/pgherd.out" 2>&1 &
  PGHERD_PID=$!
  wait_login "$PGHERD_PORT" "$PGHERD_PID" || { log "pgherd pooler did not come up"; tail -20 "$WORK/pgherd.out" >&2; exit 1; }
}
port_of() { case "$1" in direct) echo "$PG_PORT" ;; pgbouncer) echo "$BOUNCER_PORT" ;; pgherd) echo "$PGHERD_PORT" ;; esac; }

# ---------------------------------------------------------------- 4. pgbench rows
# row key: script-mode-clients, e.g. S-extended-50, tpcb-extended-500
ROWS=()
for c in "${CLIENTS[@]}"; do ROWS+=("S-extended-$c" "tpcb-extended-$c"); done
ROWS+=("S-prepared-50")

run_pgbench() {      # run_pgbench ROW TARGET
  local row="$1" target="$2" script mode c out rc=0 tps lat failed status
  IFS=- read -r script mode c <<<"$row"
  out="$WORK/pgbench-$row-$target.log"
  local args=(-n -M "$mode" -c "$c" -j 2 -T "$T" -P 5 -h 127.0.0.1 -p "$(port_of "$target")" -U "$ROLE")
  [ "$script" = S ] && args+=(-S)
  # Same starting point for every run: small tables vacuumed, history empty, no dirty buffers.
  psql_super "VACUUM pgbench_branches, pgbench_tellers" "$DB"
  psql_super "TRUNCATE pgbench_history" "$DB"
  psql_super "CHECKPOINT" "$DB"
  if [ "$target" = pgherd ] && [ "$PERF" -eq 1 ]; then
    perf record -F 499 -g -p "$PGHERD_PID" -o "$WORK/perf-$row.data" >"$WORK/perf-$row.out" 2>&1 &
    PERF_PID=$!
    sleep 0.5
  fi
  local ppid="" cpu0="" cpu1=""
  case "$target" in pgbouncer) ppid="$BOUNCER_PID" ;; pgherd) ppid="$PGHERD_PID" ;; esac
  cpu0="$(cpu_ticks "$ppid")"
  log "pgbench $row -> $target"
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
  printf 'tx\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$target" "${tps:--}" "${lat:--}" "$status" "$cpu_us" >>"$RESULTS"
}

has_target pgbouncer && start_bouncer
has_target pgherd && start_pgherd
for row in "${ROWS[@]}"; do
  for target in "${TARGETS[@]}"; do
    run_pgbench "$row" "$target"
    # A pooler that died (or hung) during a run is restarted so the later rows still run.
    if [ "$target" = pgbouncer ] && ! alive "$BOUNCER_PID"; then log "PgBouncer died; restarting"; start_bouncer; fi
    if [ "$target" = pgherd ] && ! alive "$PGHERD_PID"; then log "pgherd died; restarting"; start_pgherd; fi
  done
done
stop_bouncer
stop_pgherd

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

idle_test() {        # idle_test TARGET N
  local target="$1" n="$2" pid before after ready="$WORK/idle-$1-$2.ready" i line ok
  case "$target" in
    pgbouncer) start_bouncer; pid="$BOUNCER_PID" ;;
    pgherd) start_pgherd; pid="$PGHERD_PID" ;;
  esac
  # wait_login has made the pool and one server connection; let it settle.
  sleep 2
  before="$(rss_kb "$pid")"
  log "idle $n -> $target (VmRSS before: ${before} kB)"
  $PY "$WORK/idle.py" 127.0.0.1 "$(port_of "$target")" "$ROLE" "$DB" "$ROLE_PASS" "$n" "$ready" 8 \
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
  printf 'idle\t%s\t%s\t%s\t%s\t%s\t-\n' "$n" "$target" "$per" "$before/${after:--}" "$status" >>"$RESULTS"
  case "$target" in pgbouncer) stop_bouncer ;; pgherd) stop_pgherd ;; esac
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
echo "pgherd pooler ($PGHERD_WHAT) vs PgBouncer ${BOUNCER_VERSION:-(not run)} — PostgreSQL 15, pool_size $POOL_SIZE, transaction mode, scram-sha-256, pgbench -j 2 -T $T"
echo "$(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
$PY - "$RESULTS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
tx = {}
idle = {}
order_tx, order_idle = [], []
cpu = {}
for kind, key, target, v1, v2, status, cpu_us in rows:
    cpu[(key, target)] = cpu_us
    d = tx if kind == "tx" else idle
    o = order_tx if kind == "tx" else order_idle
    if key not in o: o.append(key)
    d[(key, target)] = (v1, v2, status)

def num(s):
    try: return float(s)
    except ValueError: return None

def fmt(s, i):
    x = num(s)
    if x is None or "/" in s: return s
    return "%.0f" % x if i == 0 else "%.2f" % x

def cell(d, key, target, i):
    v = d.get((key, target))
    if v is None: return "—"
    if v[2] != "ok": return "%s (%s)" % (fmt(v[i], i), v[2]) if num(v[i]) is not None else v[2]
    return fmt(v[i], i)

def desc(key):
    script, mode, c = key.split("-")
    return "%s -M %s -c %s" % ("select-only -S" if script == "S" else "TPC-B-like", mode, c)

print()
print("| pgbench | direct tps | direct lat ms | PgBouncer tps | PgBouncer lat ms | pgherd tps | pgherd lat ms | tps ratio | lat ratio | target | pooler CPU µs/tx PgBouncer / pgherd |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for key in order_tx:
    b, h = tx.get((key, "pgbouncer")), tx.get((key, "pgherd"))
    tr = lr = "—"; verdict = "—"
    if b and h:
        bt, bl, ht, hl = num(b[0]), num(b[1]), num(h[0]), num(h[1])
        if b[2] != "ok" and h[2] == "ok":
            verdict = "PASS (PgBouncer fails)"
        elif h[2] != "ok":
            verdict = "MISS (pgherd %s)" % h[2]
        elif None not in (bt, bl, ht, hl) and bt > 0 and bl > 0:
            tr, lr = "%.3f" % (ht / bt), "%.3f" % (hl / bl)
            verdict = "PASS" if ht >= bt and hl <= bl else "MISS"
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |" % (desc(key),
        cell(tx, key, "direct", 0), cell(tx, key, "direct", 1),
        cell(tx, key, "pgbouncer", 0), cell(tx, key, "pgbouncer", 1),
        cell(tx, key, "pgherd", 0), cell(tx, key, "pgherd", 1), tr, lr, verdict,
        cpu.get((key, "pgbouncer"), "—"), cpu.get((key, "pgherd"), "—")))
if order_idle:
    print()
    print("| idle clients | PgBouncer B/client | PgBouncer VmRSS kB before/after | pgherd B/client | pgherd VmRSS kB before/after | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for key in order_idle:
        b, h = idle.get((key, "pgbouncer")), idle.get((key, "pgherd"))
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
            cell(idle, key, "pgbouncer", 0), cell(idle, key, "pgbouncer", 1),
            cell(idle, key, "pgherd", 0), cell(idle, key, "pgherd", 1), r, verdict))
print()
print("tps ratio = pgherd/PgBouncer (target >= 1), lat ratio = pgherd/PgBouncer mean latency (target <= 1),")
print("pooler CPU µs/tx: user+system CPU the pooler process used during the run / transactions.")
print("idle ratio = pgherd/PgBouncer VmRSS growth per logged-in idle client (target <= 1).")
EOF
[ "$PERF" -eq 1 ] && perf_top
if [ "$KEEP" -eq 1 ]; then echo; echo "logs, configs and pgbench output: $WORK"; fi
