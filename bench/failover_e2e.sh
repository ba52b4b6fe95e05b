#!/usr/bin/env bash
# End-to-end failover: write unavailability seen by a client that knows ONLY the router's
# address, after kill -9 of the primary's whole node, pgherd vs the tutorial's glued stack,
# in one run.
#
# Stacks (each a fresh etcd and 3-member PostgreSQL 15 cluster on free loopback ports,
# ttl/loop_wait/retry_timeout 10/2/4 by default, synchronous_mode: true):
#   pgherd  3 `pgherd node` agents + one `pgherd pooler` following the cluster through
#           etcd (`postgres = cluster=bench-pgherd role=primary`, transaction pool mode);
#   glued   3 Patroni 3.0.2 (Debian) agents + HAProxy (`option httpchk OPTIONS /primary`,
#           `http-check expect status 200`, `default-server inter 1s fall 2 rise 1
#           on-marked-down shutdown-sessions`) + PgBouncer IN FRONT of HAProxy (its one
#           database points at HAProxy's port; transaction pool mode): one pooler address
#           for the client, as with pgherd.
# Both poolers read the same [pgbouncer] settings (pool 20, query_wait_timeout 30,
# server_login_retry 1 instead of PgBouncer's 15 s; see bench/e2e-lib.sh).
#
# Each round: a writer (psycopg2) connected only to the router commits one row with a
# fresh id every 50 ms (connect_timeout 2 s, an operation cancelled after 20 s, reconnect
# on any error) and logs `ok <time> <id> <server port>` per acknowledged COMMIT; after a
# random 1..(1+loop_wait) s the primary's agent and PostgreSQL process group are killed
# with -9. Recorded: the unavailability (s from the kill to the first acknowledged commit
# on another member), the longest gap between consecutive acknowledged commits, and the
# acknowledged ids missing from the new primary (must be 0), and "after the lease": from the
# dead leader's key going (polled every 50 ms) to that first acknowledged commit, the part
# each stack adds to the lease expiry that bounds both. The killed node is restarted
# and rejoins before the next round; a cluster that is not back to 1 primary + 2 streaming
# replicas within 180 s is rebuilt.
#
# Usage: bench/failover_e2e.sh [--rounds N] [--quick] [--only pgherd|glued]
#                              [--timing TTL/LW/RT] [--pgbouncer auto|debian|source|PATH] [--keep]
#   --rounds N    rounds per stack (default 5); --quick = 1 round
#   --only S      run one stack only
#   --timing T    ttl/loop_wait/retry_timeout (default 10/2/4)
#   --pgbouncer   which PgBouncer (default auto: Debian's if 1.21+, else 1.24.1 from source)
#   --keep        keep the work directory (configs, agent, router and writer logs)
# Env: PGHERD_BIN=/path/to/pgherd uses that binary (default: build target/release/pgherd).
# Runs as root (PostgreSQL, Patroni and PgBouncer run as the `postgres` OS user).
set -euo pipefail

ROUNDS=5
ONLY=""
KEEP=0
TIMING="10/2/4"
BOUNCER_CHOICE=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --quick) ROUNDS=1; shift ;;
    --only) ONLY="${2:?--only needs pgherd or glued}"; shift 2 ;;
    --timing) TIMING="${2:?--timing needs TTL/LOOP_WAIT/RETRY_TIMEOUT}"; shift 2 ;;
    --pgbouncer) BOUNCER_CHOICE="${2:?--pgbouncer needs auto, debian, source or a path}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
case "$ONLY" in ""|pgherd|glued) ;; *) echo "--only must be pgherd or glued" >&2; exit 2 ;; esac
[[ "$TIMING" =~ ^([0-9]+)/([0-9]+)/([0-9]+)$ ]] || { echo "--timing must be TTL/LOOP_WAIT/RETRY_TIMEOUT, e.g. 10/2/4" >&2; exit 2; }
TTL="${BASH_REMATCH[1]}"; LOOP_WAIT="${BASH_REMATCH[2]}"; RETRY_TIMEOUT="${BASH_REMATCH[3]}"
[ $((LOOP_WAIT + 2 * RETRY_TIMEOUT)) -le "$TTL" ] || { echo "--timing: loop_wait + 2*retry_timeout must not exceed ttl" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL, Patroni and PgBouncer are started as the postgres user)" >&2; exit 2; }

STACKS=(pgherd glued)
[ -n "$ONLY" ] && STACKS=("$ONLY")
has_stack() { local s; for s in "${STACKS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3            # Debian's python: psycopg2 and Patroni live there
SU_PASS=bench-su-pass
REPL_PASS=bench-rep-pass
HEALTHY_TIMEOUT=180            # s: bootstrap or rejoin until 1 primary + 2 streaming replicas
FAILOVER_EXTRA=60              # s: give up on a round after ttl + loop_wait + this
AFTER_FIRST=3                  # s: keep writing after the first ack on the new primary
MAX_REBUILDS=2

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

need=(postgresql-15 etcd-server python3-psycopg2 curl)
has_stack glued && need+=(patroni python3-etcd haproxy)
install_missing "${need[@]}"
PGHERD=""
PGBOUNCER=""
has_stack pgherd && PGHERD="$(pgherd_bin "$REPO" "${PGHERD_BIN:-}")"
if has_stack glued; then
  PGBOUNCER="$(pick_pgbouncer "$BOUNCER_CHOICE")"
  log "PgBouncer $(pgbouncer_version "$PGBOUNCER") at $PGBOUNCER, $(haproxy -v | head -n1 | cut -d' ' -f1-3)"
fi

BENCH_NAME=failover-e2e
EXTRA_DCS="    synchronous_mode: true"
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"
# shellcheck source=bench/e2e-lib.sh
source "$REPO/bench/e2e-lib.sh"

cluster_sys() { [ "$1" = pgherd ] && echo pgherd || echo patroni; }

# A fresh cluster and its router (not in a subshell: it sets ha-lib.sh's globals); the
# primary's index in FRESH_P.
FRESH_P=""
fresh_stack() {      # fresh_stack STACK
  local sys
  sys="$(cluster_sys "$1")"
  FRESH_P=""
  stop_routers
  new_cluster "$sys" "$TTL" "$LOOP_WAIT" "$RETRY_TIMEOUT"
  FRESH_P="$(wait_healthy)" || { dump_logs; FRESH_P=""; return 1; }
  psql_at "${PG_PORT[$FRESH_P]}" "create table if not exists bench_acks (id bigint primary key, at timestamptz)" >/dev/null
  start_router "$sys" || { router_logs; return 1; }
}

# From a writer log: the s from KILL_T to the first ok on a port other than OLD, the
# longest gap between consecutive oks, and the counts of ok, unsure and err lines.
analyse() {          # analyse LOGFILE KILL_T OLD_PORT
  sort -k2,2g "$1" | awk -v k="$2" -v old="$3" '
    $1 == "ok" {
      n++; if (n > 1 && $2 - last > gap) gap = $2 - last; last = $2
      if (first == "" && $2 + 0 > k + 0 && $4 != old) first = $2 - k
    }
    $1 == "unsure" { unsure++ }
    $1 == "err" { err++ }
    END { printf "%s %.2f %d %d %d\n", (first == "" ? "-" : sprintf("%.2f", first)), gap, n, unsure + 0, err + 0 }'
}

# The leader key, polled every 50 ms through etcd's JSON gateway: "<time> <value or ->"
# each time it changes. Tells the lease expiry apart from what each stack adds after it.
LEADER_PID=""
start_leader_log() {  # start_leader_log SYS LOGFILE MAX_SECS
  local b64
  b64="$(printf '%s' "/pgherd-bench/bench-$1/leader" | base64 -w0)"
  (
    last="" end=$((SECONDS + $3))
    while [ "$SECONDS" -lt "$end" ]; do
      v="$(curl -s --max-time 1 -X POST "http://127.0.0.1:$ETCD_PORT/v3/kv/range" -d "{\"key\":\"$b64\"}" \
        | sed -n 's/.*"value":"\([^"]*\)".*/\1/p' | base64 -d 2>/dev/null)"
      v="${v:--}"
      if [ "$v" != "$last" ]; then echo "$(date +%s.%N) $v"; last="$v"; fi
      sleep 0.05
    done
  ) >"$2" 2>/dev/null &
  LEADER_PID=$!
}
stop_leader_log() {
  if alive "$LEADER_PID"; then kill "$LEADER_PID" 2>/dev/null || true; wait "$LEADER_PID" 2>/dev/null || true; fi
  LEADER_PID=""
}

declare -A UNAVAIL GAP LOST ACKS UNSURE ERRS MED_U MED_G AFTER MED_A

run_series() {       # run_series STACK
  local stack="$1" sys r p np rebuilds=0 wlog kill_t old_port settle deadline found res lost expired after
  local -a u=() g=() l=() a=() un=() er=() af=()
  sys="$(cluster_sys "$stack")"
  log "== $stack: $ROUNDS round(s), ttl=$TTL loop_wait=$LOOP_WAIT retry_timeout=$RETRY_TIMEOUT, synchronous_mode on"
  fresh_stack "$stack" || log "$stack: the stack did not come up"
  p="$FRESH_P"
  for r in $(seq 1 "$ROUNDS"); do
    if [ -z "$p" ] || ! p="$(wait_healthy)"; then
      log "$stack: no primary with 2 streaming replicas within ${HEALTHY_TIMEOUT}s (round $r)"
      [ -n "$CL" ] && dump_logs
      if [ "$rebuilds" -ge "$MAX_REBUILDS" ]; then u+=(FAIL); g+=(-); l+=(-); a+=(-); un+=(-); er+=(-); af+=(-); p=""; continue; fi
      rebuilds=$((rebuilds + 1)); log "$stack: rebuilding the cluster"
      fresh_stack "$stack" || true
      p="$FRESH_P"
      [ -n "$p" ] || { u+=(FAIL); g+=(-); l+=(-); a+=(-); un+=(-); er+=(-); af+=(-); continue; }
    fi
    if [ -z "$ROUTER_SYS" ]; then start_router "$sys" || router_logs; fi
    if ! wait_front_on "$p" 60; then
      log "$stack round $r: writes through the router do not reach the primary node$p"
      router_logs; u+=(FAIL); g+=(-); l+=(-); a+=(-); un+=(-); er+=(-); af+=(-); continue
    fi
    wlog="$CL/writer-$r.log"; : >"$wlog"
    start_ackwriter "$wlog" $((r * 10000000)) 0.05 $((TTL + LOOP_WAIT + FAILOVER_EXTRA + 120))
    deadline=$((SECONDS + 30))
    while [ "$(grep -c '^ok' "$wlog" || true)" -lt 20 ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    settle="$(awk -v r="$RANDOM" -v lw="$LOOP_WAIT" 'BEGIN { printf "%.2f", 1 + (r / 32768) * lw }')"
    sleep "$settle"
    old_port="${PG_PORT[$p]}"
    start_leader_log "$sys" "$CL/leader-$r.log" $((TTL + LOOP_WAIT + FAILOVER_EXTRA + 30))
    sleep 0.2
    log "$stack round $r: kill -9 node$p (primary, port $old_port)"
    kill_t="$(date +%s.%N)"
    kill_node "$p"
    found=""
    deadline=$((SECONDS + TTL + LOOP_WAIT + FAILOVER_EXTRA))
    while [ -z "$found" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
      found="$(awk -v k="$kill_t" -v old="$old_port" '$1 == "ok" && $2 + 0 > k + 0 && $4 != old { print; exit }' "$wlog")"
    done
    [ -n "$found" ] && sleep "$AFTER_FIRST"
    stop_ackwriter
    stop_leader_log
    res="$(analyse "$wlog" "$kill_t" "$old_port")"
    read -r first gap nok nunsure nerr <<<"$res"
    # The stack's own part: from the dead leader's key going (expired, or another
    # member's) to the first write acknowledged on the new primary.
    expired="$(awk -v k="$kill_t" -v old="node$p" '$1 + 0 > k + 0 && $2 != old { print $1; exit }' "$CL/leader-$r.log")"
    after="-"
    if [ "$first" != "-" ] && [ -n "$expired" ]; then
      after="$(awk -v k="$kill_t" -v f="$first" -v e="$expired" 'BEGIN { printf "%.2f", k + f - e }')"
    fi
    af+=("$after")
    # The new primary, read directly (not through the router).
    np=""; deadline=$((SECONDS + 30))
    while [ -z "$np" ] && [ "$SECONDS" -lt "$deadline" ]; do np="$(current_primary)"; [ -z "$np" ] && sleep 0.5; done
    lost="-"
    if [ -n "$np" ]; then
      read -r lost _ <<<"$(lost_acks "$wlog" "$np")"
      [ -n "$lost" ] || lost="-"
    fi
    if [ "$first" = "-" ]; then
      log "$stack round $r: no acknowledged write on another member within $((TTL + LOOP_WAIT + FAILOVER_EXTRA))s of the kill"
      tail -n 5 "$wlog" >&2 || true; dump_logs; router_logs
      u+=(FAIL)
    else
      u+=("$first")
    fi
    log "$stack round $r: unavailable ${first}s (${after}s after the leader key went), longest gap ${gap}s, $nok acks, $nunsure unsure, $nerr errors, lost acknowledged writes: $lost (new primary node${np:-?})"
    if [ "$lost" != "-" ] && [ "$lost" != 0 ]; then
      log "$stack round $r: LOST acknowledged ids: $(head -c 300 "$wlog.lost" | tr '\n' ' ')"
    fi
    g+=("$gap"); l+=("$lost"); a+=("$nok"); un+=("$nunsure"); er+=("$nerr")
    if [ "$r" -lt "$ROUNDS" ]; then start_node "$sys" "$p" || true; fi   # rejoin for the next round
  done
  stop_routers
  stop_cluster
  UNAVAIL[$stack]="${u[*]}"; GAP[$stack]="${g[*]}"; LOST[$stack]="${l[*]}"
  ACKS[$stack]="${a[*]}"; UNSURE[$stack]="${un[*]}"; ERRS[$stack]="${er[*]}"
  MED_U[$stack]="$(printf '%s\n' "${u[@]}" | grep -v FAIL | median)"
  MED_G[$stack]="$(printf '%s\n' "${g[@]}" | grep -v -- '^-$' | median)"
  AFTER[$stack]="${af[*]}"
  MED_A[$stack]="$(printf '%s\n' "${af[@]}" | grep -v -- '^-$' | median)"
}

for s in "${STACKS[@]}"; do run_series "$s"; done

# ---------------------------------------------------------------- report
label() { [ "$1" = pgherd ] && echo "pgherd (node + pooler)" || echo "glued (Patroni+HAProxy+PgBouncer)"; }
echo
echo "End-to-end failover through the router: kill -9 of the primary's node, writer on the router's port only"
echo "ttl/loop_wait/retry_timeout $TTL/$LOOP_WAIT/$RETRY_TIMEOUT, synchronous_mode on; lease floor: ttl = $TTL s"
echo "(the dead leader's key lives up to ttl after its last renewal, so no stack can be back before ttl - loop_wait = $((TTL - LOOP_WAIT)) s)"
[ -n "$PGBOUNCER" ] && echo "glued: PgBouncer $(pgbouncer_version "$PGBOUNCER") in front of HAProxy $(haproxy -v | head -n1 | cut -d' ' -f3) (one pooler address for the client)"
echo "$(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-36s  %-34s  %-8s  %-34s  %-8s  %s\n' stack "unavailable s (per round)" median "longest ack gap s" median "lost acked writes"
for s in "${STACKS[@]}"; do
  printf '%-36s  %-34s  %-8s  %-34s  %-8s  %s\n' "$(label "$s")" "${UNAVAIL[$s]}" "${MED_U[$s]}" "${GAP[$s]}" "${MED_G[$s]}" "${LOST[$s]}"
done
echo
echo "after the lease: s from the dead leader's key going (expired, read every 50 ms) to the first acknowledged write"
for s in "${STACKS[@]}"; do
  printf '%-36s  %-34s  median %s\n' "$(label "$s")" "${AFTER[$s]}" "${MED_A[$s]}"
done
echo
for s in "${STACKS[@]}"; do
  echo "$s: acknowledged writes per round ${ACKS[$s]}; unsure (sync wait cancelled) ${UNSURE[$s]}; failed attempts ${ERRS[$s]}"
done
if [ ${#STACKS[@]} -eq 2 ]; then
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
  echo
  echo "pgherd/glued median ratio: unavailability $(ratio "${MED_U[pgherd]}" "${MED_U[glued]}"), longest gap $(ratio "${MED_G[pgherd]}" "${MED_G[glued]}"), after the lease $(ratio "${MED_A[pgherd]}" "${MED_A[glued]}")"
fi
