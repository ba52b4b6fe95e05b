#!/usr/bin/env bash
# End-to-end planned switchover through the router: pgbench TPC-B through the one address a
# client knows while the primary moves, pgherd vs the tutorial's glued stack, in one run.
#
# Stacks (each a fresh etcd and 3-member PostgreSQL 15 cluster on free loopback ports,
# ttl/loop_wait/retry_timeout 10/2/4 by default), as in bench/failover_e2e.sh:
#   pgherd  3 `pgherd node` agents + one `pgherd pooler` following the cluster through
#           etcd (transaction pool mode); switchover: `pgherd ctl switchover --leader L
#           --candidate C --force`;
#   glued   3 Patroni 3.0.2 (Debian) agents + HAProxy (`OPTIONS /primary`, inter 1s fall 2
#           rise 1 on-marked-down shutdown-sessions) + PgBouncer IN FRONT of HAProxy
#           (transaction pool mode); switchover: `patronictl switchover --leader L
#           --candidate C --force`.
#
# `pgbench -i -s 10` once, then per switchover (N of them, back and forth: each moves the
# primary to the next member) one `pgbench -n -c 10 -j 2 -T T -P 1 -l --failures-detailed`
# run through the router, no retries, and a probe writer (psycopg2, one acknowledged
# INSERT every 20 ms, reconnecting after errors) through the router; the switchover
# command starts 6 s into the run. Recorded per switchover:
#   failed    pgbench's failed transactions + clients aborted (pgbench 15 aborts a client
#             on a lost connection or any non-retryable error; its transaction in flight
#             fails with it, and the client runs no more transactions);
#   stall     the longest interval without any committed pgbench transaction, from the
#             switchover command's start to the end of the run (from `-l` per-transaction
#             logs; clients that abort stall to the run's planned end, and a stall
#             marked `+` had every client aborted: no commit came back at all);
#   probe     the longest gap between the probe's acknowledged commits over the same span
#             and its failed attempts.
# Target for pgherd (issue 10): 0 failed, stall <= 1 s.
#
# Usage: bench/switchover_e2e.sh [--switchovers N] [--time T] [--only pgherd|glued]
#                                [--timing TTL/LW/RT] [--pgbouncer auto|debian|source|PATH] [--keep]
#   --switchovers N   switchovers per stack (default 3)
#   --time T          seconds per pgbench run (default 20, at least 12)
#   --only S          run one stack only
#   --timing T        ttl/loop_wait/retry_timeout (default 10/2/4)
#   --pgbouncer       which PgBouncer (default auto: Debian's if 1.21+, else 1.24.1 from source)
#   --keep            keep the work directory (configs, logs, pgbench logs)
# Env: PGHERD_BIN=/path/to/pgherd uses that binary (default: build target/release/pgherd).
# Runs as root (PostgreSQL, Patroni and PgBouncer run as the `postgres` OS user).
set -euo pipefail

SWITCHOVERS=3
T=20
ONLY=""
KEEP=0
TIMING="10/2/4"
BOUNCER_CHOICE=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --switchovers) SWITCHOVERS="${2:?--switchovers needs a number}"; shift 2 ;;
    --time) T="${2:?--time needs seconds}"; shift 2 ;;
    --only) ONLY="${2:?--only needs pgherd or glued}"; shift 2 ;;
    --timing) TIMING="${2:?--timing needs TTL/LOOP_WAIT/RETRY_TIMEOUT}"; shift 2 ;;
    --pgbouncer) BOUNCER_CHOICE="${2:?--pgbouncer needs auto, debian, source or a path}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$SWITCHOVERS" =~ ^[1-9][0-9]*$ ]] || { echo "--switchovers must be a positive integer" >&2; exit 2; }
[[ "$T" =~ ^[0-9]+$ ]] && [ "$T" -ge 12 ] || { echo "--time must be an integer >= 12" >&2; exit 2; }
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
PY=/usr/bin/python3
SU_PASS=bench-su-pass
REPL_PASS=bench-rep-pass
HEALTHY_TIMEOUT=180
CLIENTS=10
SCALE=10
LEAD_IN=6                      # s of pgbench before the switchover command
CMD_LIMIT=90                   # s: the switchover command is killed after this

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

need=(postgresql-15 postgresql-client-15 etcd-server python3-psycopg2 curl)
has_stack glued && need+=(patroni python3-etcd haproxy)
install_missing "${need[@]}"
PGHERD=""
PGBOUNCER=""
has_stack pgherd && PGHERD="$(pgherd_bin "$REPO" "${PGHERD_BIN:-}")"
if has_stack glued; then
  PGBOUNCER="$(pick_pgbouncer "$BOUNCER_CHOICE")"
  log "PgBouncer $(pgbouncer_version "$PGBOUNCER") at $PGBOUNCER, $(haproxy -v | head -n1 | cut -d' ' -f1-3)"
fi

BENCH_NAME=switchover-e2e
EXTRA_DCS=""
# shellcheck source=bench/ha-lib.sh
source "$REPO/bench/ha-lib.sh"
# shellcheck source=bench/e2e-lib.sh
source "$REPO/bench/e2e-lib.sh"

PGBENCH_PID=""
e2e_extra_stop() {
  if alive "$PGBENCH_PID"; then kill -9 "$PGBENCH_PID" 2>/dev/null || true; wait "$PGBENCH_PID" 2>/dev/null || true; fi
  PGBENCH_PID=""
}

cluster_sys() { [ "$1" = pgherd ] && echo pgherd || echo patroni; }

switchover_cmd() {   # switchover_cmd SYSTEM FROM TO
  if [ "$1" = pgherd ]; then
    timeout "$CMD_LIMIT" "$PGHERD" ctl -c "$CL/node1/node.yml" \
      switchover --leader "node$2" --candidate "node$3" --force
  else
    timeout "$CMD_LIMIT" setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$CL/node1" \
      "$PY" /usr/bin/patronictl -c "$CL/node1/node.yml" \
      switchover --leader "node$2" --candidate "node$3" --force
  fi
}

# Longest interval without a commit from T0 to T_END, over pgbench's -l logs (PREFIX.*:
# client tx time script epoch_s epoch_us; failed transactions have a word for time).
pgbench_stall() {    # pgbench_stall PREFIX T0 T_END
  cat "$1".* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { printf "%d.%06d\n", $5, $6 }' | sort -g \
    | awk -v t0="$2" -v te="$3" 'BEGIN { last = t0; worst = 0 }
        $1 + 0 > t0 + 0 && $1 + 0 <= te + 0 { if ($1 - last > worst) worst = $1 - last; last = $1 }
        END { if (te - last > worst) worst = te - last; printf "%.2f\n", worst }'
}

# The probe's longest gap between acknowledged commits from T0 to T_END, and its errors.
probe_stall() {      # probe_stall LOG T0 T_END
  sort -k2,2g "$1" | awk -v t0="$2" -v te="$3" 'BEGIN { last = t0; worst = 0 }
    $2 + 0 <= t0 + 0 || $2 + 0 > te + 0 { next }
    $1 == "ok" { if ($2 - last > worst) worst = $2 - last; last = $2 }
    $1 == "err" { err++ }
    END { if (te - last > worst) worst = te - last; printf "%.2f %d\n", worst, err + 0 }'
}

declare -A R_FAILED R_ABORTED R_STALL R_PROBE R_PERR R_TX R_CMD MED_F MED_S MED_P

run_stack() {        # run_stack STACK
  local stack="$1" sys k p c dir prefix out err t0 t1 tstart tend rc failed aborted stall probe perr tx cmd_s
  local -a f=() ab=() st=() pr=() pe=() txs=() cmds=()
  sys="$(cluster_sys "$stack")"
  log "== $stack: $SWITCHOVERS switchover(s), pgbench -c $CLIENTS -T $T, ttl=$TTL loop_wait=$LOOP_WAIT retry_timeout=$RETRY_TIMEOUT"
  stop_routers
  new_cluster "$sys" "$TTL" "$LOOP_WAIT" "$RETRY_TIMEOUT"
  if ! p="$(wait_healthy)"; then dump_logs; log "$stack: the cluster did not come up"; R_TX[$stack]="FAIL"; return 0; fi
  PGPASSWORD="$SU_PASS" "$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "${PG_PORT[$p]}" -U postgres postgres \
    >"$CL/pgbench-init.log" 2>&1
  psql_at "${PG_PORT[$p]}" "create table if not exists bench_acks (id bigint primary key, at timestamptz)" >/dev/null
  start_router "$sys" || { router_logs; R_TX[$stack]="FAIL"; stop_cluster; return 0; }
  for k in $(seq 1 "$SWITCHOVERS"); do
    if ! p="$(wait_healthy)"; then dump_logs; f+=(FAIL); continue; fi
    c=$(( p % 3 + 1 ))
    wait_front_on "$p" 60 || { log "$stack $k: the router does not reach node$p"; router_logs; f+=(FAIL); continue; }
    dir="$CL/so-$k"; mkdir -p "$dir"
    prefix="$dir/pgbench_log"; out="$dir/pgbench.out"; err="$dir/pgbench.err"
    start_ackwriter "$dir/probe.log" $((k * 10000000)) 0.02 $((T + 30))
    tstart="$(date +%s.%N)"
    PGPASSWORD="$SU_PASS" timeout -k 5 $((T + 60)) "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$T" -P 1 \
      -l --log-prefix="$prefix" --failures-detailed -h 127.0.0.1 -p "$FRONT_PORT" -U postgres postgres \
      >"$out" 2>"$err" &
    PGBENCH_PID=$!
    sleep "$LEAD_IN"
    log "$stack switchover $k: node$p -> node$c"
    t0="$(date +%s.%N)"
    if ! cmd_out="$(switchover_cmd "$sys" "$p" "$c" 2>&1)"; then
      log "$stack switchover $k: the command failed: $(tail -n 3 <<<"$cmd_out")"
    fi
    t1="$(date +%s.%N)"
    cmd_s="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
    rc=0; wait "$PGBENCH_PID" || rc=$?
    PGBENCH_PID=""
    # The window ends when the run was due to end: clients that aborted early stall to it,
    # and the probe keeps writing until then.
    tend="$(date +%s.%N)"
    tend="$(awk -v a="$tend" -v b="$tstart" -v t="$T" 'BEGIN { printf "%.3f", (a > b + t ? a : b + t) }')"
    sleep "$(awk -v e="$tend" -v now="$(date +%s.%N)" 'BEGIN { d = e - now + 0.2; printf "%.2f", (d > 0 ? (d < 60 ? d : 60) : 0) }')"
    stop_ackwriter
    tx="$(awk '/^number of transactions actually processed: /{ split($6, a, "/"); print a[1]; exit }' "$out")"
    failed="$(awk '/^number of failed transactions: /{ print $5; exit }' "$out")"
    aborted="$(grep -cE 'client [0-9]+ .*aborted' "$err" || true)"
    stall="$(pgbench_stall "$prefix" "$t0" "$tend")"
    # No client left to commit: the stall lasts to the end of the run (a lower bound).
    [ "$aborted" -ge "$CLIENTS" ] && stall="${stall}+"
    read -r probe perr <<<"$(probe_stall "$dir/probe.log" "$t0" "$tend")"
    local np; np="$(current_primary)"
    log "$stack switchover $k: command ${cmd_s}s; pgbench rc $rc, ${tx:-?} tx, ${failed:-?} failed, $aborted client(s) aborted;" \
      "stall ${stall}s; probe gap ${probe}s, $perr probe errors; primary now node${np:-?}"
    [ "$np" = "$c" ] || log "$stack switchover $k: the primary is node${np:-?}, not node$c"
    if [ "$aborted" -gt 0 ] || [ "${failed:-0}" != 0 ]; then
      grep -m 5 -iE 'abort|error' "$err" | sed 's/^/    /' >&2 || true
    fi
    f+=($(( ${failed:-0} + aborted ))); ab+=("$aborted"); st+=("$stall"); pr+=("$probe"); pe+=("$perr")
    txs+=("${tx:--}"); cmds+=("$cmd_s")
  done
  stop_routers
  stop_cluster
  R_FAILED[$stack]="${f[*]}"; R_ABORTED[$stack]="${ab[*]:-}"; R_STALL[$stack]="${st[*]:-}"
  R_PROBE[$stack]="${pr[*]:-}"; R_PERR[$stack]="${pe[*]:-}"; R_TX[$stack]="${txs[*]:-}"; R_CMD[$stack]="${cmds[*]:-}"
  MED_F[$stack]="$(printf '%s\n' "${f[@]}" | grep -v FAIL | median)"
  MED_S[$stack]="$(printf '%s\n' "${st[@]:-}" | grep -v '^$' | tr -d + | median)"
  MED_P[$stack]="$(printf '%s\n' "${pr[@]:-}" | grep -v '^$' | median)"
}

for s in "${STACKS[@]}"; do run_stack "$s"; done

# ---------------------------------------------------------------- report
label() { [ "$1" = pgherd ] && echo "pgherd (node + pooler)" || echo "glued (Patroni+HAProxy+PgBouncer)"; }
echo
echo "Switchover through the router: pgbench TPC-B -c $CLIENTS -j 2 -T $T (scale $SCALE, no retries) per switchover,"
echo "the switchover $LEAD_IN s into the run; ttl/loop_wait/retry_timeout $TTL/$LOOP_WAIT/$RETRY_TIMEOUT"
[ -n "$PGBOUNCER" ] && echo "glued: PgBouncer $(pgbouncer_version "$PGBOUNCER") in front of HAProxy $(haproxy -v | head -n1 | cut -d' ' -f3) (one pooler address for the client)"
echo "$(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-36s  %-22s  %-6s  %-18s  %-26s  %-6s  %-26s  %-6s\n' stack "failed (tx + aborted)" median "clients aborted" "stall s" median "probe gap s" median
for s in "${STACKS[@]}"; do
  printf '%-36s  %-22s  %-6s  %-18s  %-26s  %-6s  %-26s  %-6s\n' "$(label "$s")" "${R_FAILED[$s]:-}" "${MED_F[$s]:--}" \
    "${R_ABORTED[$s]:-}" "${R_STALL[$s]:-}" "${MED_S[$s]:--}" "${R_PROBE[$s]:-}" "${MED_P[$s]:--}"
done
echo
for s in "${STACKS[@]}"; do
  echo "$s: transactions per run ${R_TX[$s]:-}; switchover command s ${R_CMD[$s]:-}; probe errors ${R_PERR[$s]:-}"
done
if [ ${#STACKS[@]} -eq 2 ]; then
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
  echo
  echo "pgherd/glued median ratio: stall $(ratio "${MED_S[pgherd]:--}" "${MED_S[glued]:--}"), probe gap $(ratio "${MED_P[pgherd]:--}" "${MED_P[glued]:--}")"
fi
echo "stall: longest interval without a committed pgbench transaction from the switchover command's start to the run's"
echo "planned end; '+' = every client aborted (a lower bound: no commit ever came back). probe gap: the 20 ms probe"
echo "writer (reconnects after errors) through the same router: the router-level unavailability."
echo "target for pgherd: 0 failed, stall <= 1 s"
