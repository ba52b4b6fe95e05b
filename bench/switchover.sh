#!/usr/bin/env bash
# Planned switchover and crash failover under write load: pgherd vs Patroni 3.0.2
# (Debian), same machine, same etcd build, same ttl/loop_wait/retry_timeout, one run.
#
# For each system it starts a fresh etcd and a fresh 3-member PostgreSQL 15 cluster
# (`primary_start_timeout: 0`), loads `pgbench -i -s 10` and then:
#  1. switchover rounds: 10 clients run pgbench's TPC-B-like transaction against the
#     primary directly (multi-host libpq URI, target_session_attrs=read-write; pgbench
#     itself cannot reconnect, so a psycopg2 client runs its script), the system's own
#     CLI moves the primary to the next member (`pgherd ctl switchover --force`,
#     `patronictl switchover --force`), and the bench records the write-unavailability
#     window (the longest stretch without any commit, from the command's start until
#     commits flow on the new primary) and the transactions that failed;
#  2. crash rounds: the same load, `kill -9` of the primary's postmaster only (the agent
#     lives), and the seconds until the first commit on another member.
# Medians of the rounds, and pgherd/Patroni ratios. Targets (issue 9): switchover window
# <= 0.5x Patroni's; crash failover <= loop_wait + 2 s.
#
# Usage: bench/switchover.sh [--rounds N] [--only pgherd|patroni] [--timing TTL/LW/RT] [--keep]
#   --rounds N    rounds of each kind per system; default 5
#   --only S      run one system only
#   --timing T    ttl/loop_wait/retry_timeout in seconds; default 30/10/10 (Patroni's)
#   --keep        keep the work directory (configs, logs, writer logs) on exit
# Runs as root (PostgreSQL and Patroni run as the `postgres` OS user).
set -euo pipefail

ROUNDS=5
ONLY=""
TIMING="30/10/10"
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --only) ONLY="${2:?--only needs pgherd or patroni}"; shift 2 ;;
    --timing) TIMING="${2:?--timing needs TTL/LOOP_WAIT/RETRY_TIMEOUT}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
case "$ONLY" in ""|pgherd|patroni) ;; *) echo "--only must be pgherd or patroni" >&2; exit 2 ;; esac
[[ "$TIMING" =~ ^([0-9]+)/([0-9]+)/([0-9]+)$ ]] || { echo "--timing must be TTL/LOOP_WAIT/RETRY_TIMEOUT, e.g. 30/10/10" >&2; exit 2; }
TTL="${BASH_REMATCH[1]}"; LOOP_WAIT="${BASH_REMATCH[2]}"; RETRY_TIMEOUT="${BASH_REMATCH[3]}"
[ $((LOOP_WAIT + 2 * RETRY_TIMEOUT)) -le "$TTL" ] || { echo "--timing: loop_wait + 2*retry_timeout must not exceed ttl" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL and Patroni are started as the postgres user)" >&2; exit 2; }

SYSTEMS=(pgherd patroni)
[ -n "$ONLY" ] && SYSTEMS=("$ONLY")

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3            # Debian's python: psycopg2 and Patroni live there
SU_PASS=bench-su-pass
REPL_PASS=bench-rep-pass
HEALTHY_TIMEOUT=180            # s: bootstrap or rejoin until 1 primary + 2 streaming replicas
CLIENTS=10
SCALE=10
ROUND_LIMIT=120                # s: give up on a switchover or failover round

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

need=(postgresql-15 etcd-server python3-psycopg2 curl)
for s in "${SYSTEMS[@]}"; do [ "$s" = patroni ] && need+=(patroni python3-etcd); done
install_missing "${need[@]}"
PGHERD=""
for s in "${SYSTEMS[@]}"; do [ "$s" = pgherd ] && PGHERD="$(pgherd_bin "$REPO")"; done

BENCH_NAME=switchover
EXTRA_DCS="    primary_start_timeout: 0"
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"

# ---------------------------------------------------------------- TPC-B-like load
cat >"$WORK/tpcb.py" <<'EOF'
# pgbench's built-in "tpcb-like" script, CLIENTS threads, each reconnecting after any
# error. Logs "ok <unix time> <server port>" per commit and "err <unix time>" per failed
# transaction to one file.
import os, random, sys, threading, time, psycopg2
dsn, out_path, clients, scale, max_secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
out = open(out_path, "a", buffering=1)
lock = threading.Lock()
start, parent = time.time(), os.getppid()

def log(line):
    with lock:
        out.write(line + "\n")

def client():
    conn = None
    while time.time() - start < max_secs and os.getppid() == parent:
        try:
            if conn is None:
                conn = psycopg2.connect(dsn)
            aid, bid = random.randint(1, 100000 * scale), random.randint(1, scale)
            tid, delta = random.randint(1, 10 * scale), random.randint(-5000, 5000)
            with conn.cursor() as cur:
                cur.execute("UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s", (delta, aid))
                cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,))
                cur.execute("UPDATE pgbench_tellers SET tbalance = tbalance + %s WHERE tid = %s", (delta, tid))
                cur.execute("UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s", (delta, bid))
                cur.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%s, %s, %s, %s, CURRENT_TIMESTAMP)", (tid, bid, aid, delta))
            conn.commit()
            log("ok %.3f %s" % (time.time(), conn.info.port))
        except Exception:
            log("err %.3f" % time.time())
            try:
                conn is not None and conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.01)

threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
EOF

start_load() {       # start_load LOGFILE
  local hosts="127.0.0.1,127.0.0.1,127.0.0.1" ports="${PG_PORT[1]},${PG_PORT[2]},${PG_PORT[3]}"
  local dsn="host=$hosts port=$ports user=postgres password=$SU_PASS dbname=postgres"
  dsn+=" target_session_attrs=read-write connect_timeout=1 options='-c statement_timeout=5000'"
  "$PY" "$WORK/tpcb.py" "$dsn" "$1" "$CLIENTS" "$SCALE" 600 </dev/null >/dev/null 2>>"$1.stderr" &
  WRITER_PID=$!
}

commits() { grep -c '^ok' "$1" || true; }

# Wait until the load has committed N more transactions (at most 30 s).
wait_commits() {     # wait_commits LOGFILE N
  local target=$(( $(commits "$1") + $2 )) deadline=$((SECONDS + 30))
  while [ "$(commits "$1")" -lt "$target" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
}

# The longest gap between consecutive commits after T0 (including T0 -> first commit),
# until the first commit on a server other than OLD_PORT; and the failed transactions
# after T0. Prints "WINDOW FAILED", or nothing when no commit reached another server.
measure() {          # measure LOGFILE T0 OLD_PORT
  # (awk reads to the end: an early exit would kill sort with SIGPIPE under pipefail)
  sort -k2,2g "$1" | awk -v t0="$2" -v old="$3" '
    BEGIN { last = t0; worst = 0; failed = 0 }
    done || $2 + 0 < t0 + 0 { next }
    $1 == "err" { failed++; next }
    $1 == "ok" {
      gap = $2 - last; if (gap > worst) worst = gap; last = $2
      if ($3 != old) { printf "%.2f %d\n", worst, failed; done = 1 }
    }'
}

# ---------------------------------------------------------------- rounds
declare -A SAMPLES FAILED MEDIAN

switchover_cmd() {   # switchover_cmd SYSTEM FROM TO
  if [ "$1" = pgherd ]; then
    timeout "$ROUND_LIMIT" "$PGHERD" ctl -c "$CL/node1/node.yml" \
      switchover --leader "node$2" --candidate "node$3" --force
  else
    timeout "$ROUND_LIMIT" setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$CL/node1" \
      "$PY" /usr/bin/patronictl -c "$CL/node1/node.yml" \
      switchover --leader "node$2" --candidate "node$3" --force
  fi
}

run_system() {       # run_system SYSTEM
  local sys="$1" r p c wlog t0 result out
  local -a windows=() failures=() crashes=()
  log "== $sys ttl=$TTL loop_wait=$LOOP_WAIT retry_timeout=$RETRY_TIMEOUT: $ROUNDS round(s) of each"
  new_cluster "$sys" "$TTL" "$LOOP_WAIT" "$RETRY_TIMEOUT"
  p="$(wait_healthy)" || { dump_logs; log "$sys: the cluster did not come up"; return 0; }
  PGPASSWORD="$SU_PASS" "$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "${PG_PORT[$p]}" -U postgres postgres >/dev/null 2>&1

  for r in $(seq 1 "$ROUNDS"); do
    p="$(wait_healthy)" || { dump_logs; windows+=(FAIL); continue; }
    c=$(( p % 3 + 1 ))
    wlog="$CL/switchover-$r.log"; : >"$wlog"
    start_load "$wlog"
    wait_commits "$wlog" 200
    sleep 1
    log "$sys switchover $r: node$p -> node$c"
    t0="$(date +%s.%N)"
    out="$(switchover_cmd "$sys" "$p" "$c" 2>&1)" \
      || log "$sys switchover $r: the command failed: $(tail -n 2 <<<"$out")"
    local deadline=$((SECONDS + ROUND_LIMIT))
    result=""
    while [ -z "$result" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
      result="$(measure "$wlog" "$t0" "${PG_PORT[$p]}")"
    done
    sleep 1
    stop_writer
    if [ -n "$result" ]; then
      read -r w f <<<"$result"
      log "$sys switchover $r: window ${w}s, $f failed transactions"
      windows+=("$w"); failures+=("$f")
    else
      log "$sys switchover $r: no commit on another member within ${ROUND_LIMIT}s"
      dump_logs; windows+=(FAIL)
    fi
  done

  for r in $(seq 1 "$ROUNDS"); do
    p="$(wait_healthy)" || { dump_logs; crashes+=(FAIL); continue; }
    wlog="$CL/crash-$r.log"; : >"$wlog"
    start_load "$wlog"
    wait_commits "$wlog" 200
    # A random phase within loop_wait, so the crash does not line up with the loop.
    sleep "$(awk -v r="$RANDOM" -v lw="$LOOP_WAIT" 'BEGIN { printf "%.2f", 1 + (r / 32768) * lw }')"
    local pm; pm="$(postmaster_pid "$p")"
    log "$sys crash $r: kill -9 of node$p's postmaster ($pm)"
    t0="$(date +%s.%N)"
    [ -n "$pm" ] && kill -9 "$pm"
    local deadline=$((SECONDS + ROUND_LIMIT)) first=""
    while [ -z "$first" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
      # On another member: commits in flight at the kill may still be logged just after.
      first="$(awk -v t0="$t0" -v old="${PG_PORT[$p]}" '$1 == "ok" && $2 + 0 > t0 + 0 && $3 != old { printf "%.2f", $2 - t0; exit }' "$wlog")"
    done
    stop_writer
    if [ -n "$first" ]; then
      log "$sys crash $r: first commit ${first}s after the kill"
      crashes+=("$first")
    else
      log "$sys crash $r: no commit within ${ROUND_LIMIT}s"; dump_logs; crashes+=(FAIL)
    fi
  done
  stop_cluster

  SAMPLES[$sys switchover]="${windows[*]}"
  FAILED[$sys]="${failures[*]:-}"
  SAMPLES[$sys crash]="${crashes[*]}"
  MEDIAN[$sys switchover]="$(printf '%s\n' "${windows[@]}" | grep -v FAIL | median)"
  MEDIAN[$sys failed]="$(printf '%s\n' "${failures[@]:-}" | grep -v '^$' | median)"
  MEDIAN[$sys crash]="$(printf '%s\n' "${crashes[@]}" | grep -v FAIL | median)"
}

for s in "${SYSTEMS[@]}"; do run_system "$s"; done

# ---------------------------------------------------------------- report
echo
echo "ttl $TTL s, loop_wait $LOOP_WAIT s, retry_timeout $RETRY_TIMEOUT s; $CLIENTS TPC-B-like clients, scale $SCALE"
echo
echo "Switchover: write-unavailability window (s) and failed transactions per round"
printf '%-8s  %-40s  %-8s  %-24s  %s\n' system windows median failed "median failed"
for s in "${SYSTEMS[@]}"; do
  printf '%-8s  %-40s  %-8s  %-24s  %s\n' "$s" "${SAMPLES[$s switchover]}" "${MEDIAN[$s switchover]}" "${FAILED[$s]}" "${MEDIAN[$s failed]}"
done
echo
echo "Crash of the primary's postmaster (agent alive, primary_start_timeout 0): s to the first commit on another member"
printf '%-8s  %-40s  %s\n' system samples median
for s in "${SYSTEMS[@]}"; do
  printf '%-8s  %-40s  %s\n' "$s" "${SAMPLES[$s crash]}" "${MEDIAN[$s crash]}"
done
if [ ${#SYSTEMS[@]} -eq 2 ]; then
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
  echo
  echo "pgherd/Patroni: switchover window $(ratio "${MEDIAN[pgherd switchover]}" "${MEDIAN[patroni switchover]}") (target <= 0.50),"\
    "crash failover $(ratio "${MEDIAN[pgherd crash]}" "${MEDIAN[patroni crash]}")"
fi
echo "crash failover target: <= loop_wait + 2 = $((LOOP_WAIT + 2)) s"
