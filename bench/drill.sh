#!/usr/bin/env bash
# Fault drill (issue 15): runs the release `worker` and `scheduler` against real brokers, kills
# and restarts workers, brokers, a DLQ replay and a scheduler leader under load, and prints one
# row per scenario: jobs enqueued / completed / lost / run twice / seconds until jobs flow again
# / seconds until the last job completed. Not part of the test command: it restarts shared
# services. Jobs are enqueued by native producers (bench/drill/produce.py: redis-cli, psql,
# pika), and each job is a `diag_record` (worker/src/diag.rs) that writes one row per run to
# jobfleet_diag.runs on the PostgreSQL database, which is how runs are counted.
#
#   bench/drill.sh [--jobs N] [--no-build] [--keep] [SCENARIO ...]   # default: all, in order
#   bench/drill.sh --list
#
# Services (defaults: the local ones from scripts/services.sh):
#   DRILL_REDIS_URL     redis://127.0.0.1:6379
#   DRILL_PG_URL        postgres://postgres@127.0.0.1:5432/postgres   (also the jobs database)
#   DRILL_AMQP_URL      amqp://guest:guest@127.0.0.1:5672/%2f
#   DRILL_PG_RESTART    pg_ctlcluster 15 main restart
#   DRILL_PG_START      pg_ctlcluster 15 main start        (trap: if the restart left it down)
#   DRILL_RABBIT_STOP   rabbitmqctl stop_app
#   DRILL_RABBIT_START  rabbitmqctl start_app
#   DRILL_VISIBILITY    15s   visibility timeout of the drill queue
#   DRILL_JOB_MS        50    how long each job runs (3 workers x 8 slots: ~20 s for 10,000)
#   DRILL_TIMEOUT       180   seconds a scenario may take to drain before it counts the rest lost
#   DRILL_PORT_BASE     19340 admin ports of the drill's workers and schedulers (base .. base+9)
#
# "flow again" is measured from the end of the fault (worker killed, broker answering again,
# replay restarted, new leader's first enqueue) to the next job completed; "last job" from the
# start of the fault to the moment every job has run. Every service stopped is started again on
# exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REDIS_URL="${DRILL_REDIS_URL:-redis://127.0.0.1:6379}"
PG_URL="${DRILL_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
AMQP_URL="${DRILL_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
PG_RESTART="${DRILL_PG_RESTART:-pg_ctlcluster 15 main restart}"
PG_START="${DRILL_PG_START:-pg_ctlcluster 15 main start}"
RABBIT_STOP="${DRILL_RABBIT_STOP:-rabbitmqctl stop_app}"
RABBIT_START="${DRILL_RABBIT_START:-rabbitmqctl start_app}"
VISIBILITY="${DRILL_VISIBILITY:-15s}"
JOB_MS="${DRILL_JOB_MS:-50}"
TIMEOUT="${DRILL_TIMEOUT:-180}"
PORT_BASE="${DRILL_PORT_BASE:-19340}"
PY="${DRILL_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

ALL=(kill-redis kill-postgres kill-rabbitmq replay-postgres poison-redis leader-scheduler
  stall-redis restart-postgres restart-rabbitmq)
JOBS=10000
BUILD=1
KEEP=0
SCENARIOS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "drill: unknown flag $1 (see --help)" >&2; exit 2 ;;
    *) SCENARIOS+=("$1"); shift ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=("${ALL[@]}")
for s in "${SCENARIOS[@]}"; do
  [[ " ${ALL[*]} " == *" $s "* ]] || { echo "drill: unknown scenario $s (--list shows them)" >&2; exit 2; }
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
if [ "$BUILD" = 1 ]; then
  cargo build --release --locked -q -p jobfleet-worker -p jobfleet-scheduler
fi
WORKER="$CARGO_TARGET_DIR/release/worker"
SCHEDULER="$CARGO_TARGET_DIR/release/scheduler"
for b in "$WORKER" "$SCHEDULER"; do
  [ -x "$b" ] || { echo "drill: $b is missing (run without --no-build)" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/jobfleet-drill.XXXXXX)
echo "drill: logs and configs in $TMP" >&2

log() { echo "drill: $*" >&2; }
die() { echo "drill: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
sql() { psql "$PG_URL" -XAtq -v ON_ERROR_STOP=1 -F ' ' -c "$1"; }

# ---------------------------------------------------------------- what runs, and the trap
PIDS=()          # every process this drill started and has not reaped
RABBIT_DOWN=0    # set while RabbitMQ's app is stopped by us
PG_DOWN=0        # set while a PostgreSQL restart of ours is in progress
REDIS_PAUSED=0

restore() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$RABBIT_DOWN" = 1 ]; then log "restoring RabbitMQ: $RABBIT_START"; $RABBIT_START >&2 || log "FAILED to start RabbitMQ: run '$RABBIT_START'"; fi
  if [ "$PG_DOWN" = 1 ] && ! pg_isready -d "$PG_URL" -q; then log "restoring PostgreSQL: $PG_START"; $PG_START >&2 || log "FAILED to start PostgreSQL: run '$PG_START'"; fi
  if [ "$REDIS_PAUSED" = 1 ]; then redis-cli -u "$REDIS_URL" CLIENT UNPAUSE >&2 || log "FAILED to unpause Redis"; fi
  [ "$rc" = 0 ] || log "exit $rc; logs kept in $TMP"
  [ "$rc" != 0 ] || [ "$KEEP" = 1 ] || rm -rf "$TMP"
}
trap restore EXIT
trap 'exit 130' INT TERM

forget() { local keep=() p; for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# ---------------------------------------------------------------- per-scenario setup
# Sets NS, RUN, DIR, BACKEND, BURL and writes $DIR/worker.toml.
setup() {
  local name="$1"
  BACKEND="$2"
  NS="drill$$${name//-/}"
  NS="${NS:0:40}"
  RUN="$NS"
  DIR="$TMP/$name"
  mkdir -p "$DIR"
  case "$BACKEND" in
    redis) BURL="$REDIS_URL" ;;
    postgres) BURL="$PG_URL" ;;
    rabbitmq) BURL="$AMQP_URL" ;;
  esac
  cat >"$DIR/worker.toml" <<TOML
[broker]
backend = "$BACKEND"
url = "$BURL"
namespace = "$NS"

[database]
url = "$PG_URL"
max_connections = 4

[worker]
budget = 8
sample_interval = "500ms"
receive_wait = "1s"
shutdown_grace = "20s"

[queues.drill]
min = 8
max = 8
visibility_timeout = "$VISIBILITY"

[routes]
diag_record = "drill"

# Outages last seconds; a run must not be dead-lettered while the database is restarting.
[retry.diag_record]
max_attempts = 25
backoff_base = "200ms"
backoff_cap = "2s"
timeout = "30s"

[cloudwatch]
enabled = false

[log]
format = "json"
level = "info"
TOML
}

# Worker number $1 (0..8), with or without the diagnostic kinds ($2 = 1 | 0).
WPID=()
start_worker() {
  local i="$1" diag="${2:-1}" envs=(-u JOBFLEET_CONFIG -u JOBFLEET_BROKER_URL -u JOBFLEET_BROKER_BACKEND -u JOBFLEET_DATABASE_URL -u DATABASE_URL -u RUST_LOG)
  [ "$diag" = 1 ] && envs+=(JOBFLEET_DIAGNOSTIC_KINDS=1) || envs+=(-u JOBFLEET_DIAGNOSTIC_KINDS)
  env "${envs[@]}" JOBFLEET_ADMIN_ADDR="127.0.0.1:$((PORT_BASE + i))" \
    "$WORKER" --config "$DIR/worker.toml" run >>"$DIR/worker-$i.log" 2>&1 &
  WPID[$i]=$!
  PIDS+=($!)
}

wait_ready() {
  local i="$1" t
  for t in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$((PORT_BASE + i))/readyz" 2>/dev/null && return 0
    kill -0 "${WPID[$i]}" 2>/dev/null || { tail -5 "$DIR/worker-$i.log" >&2; die "worker $i exited before it was ready (log above, $DIR/worker-$i.log)"; }
    sleep 0.2
  done
  die "worker $i not ready after 20 s ($DIR/worker-$i.log)"
}

# SIGTERM, then the exit status must be 0: a drain that fails is a finding, not noise.
stop_worker() {
  local i="$1" rc=0
  kill -TERM "${WPID[$i]}" 2>/dev/null || true
  wait "${WPID[$i]}" || rc=$?
  forget "${WPID[$i]}"
  [ "$rc" = 0 ] || log "worker $i exited $rc after SIGTERM (see $DIR/worker-$i.log)"
}

produce() { "$PY" bench/drill/produce.py --backend "$BACKEND" --url "$BURL" --namespace "$NS" --run "$RUN" --ms "$JOB_MS" "$@"; }

# "<distinct keys run> <rows>" of this run; empty when the database does not answer.
counts() { sql "SELECT count(DISTINCT key), count(*) FROM jobfleet_diag.runs WHERE run = '$RUN'" 2>/dev/null || true; }
done_count() { local c; c=$(counts); echo "${c%% *}"; }
twice() { sql "SELECT count(*) FROM (SELECT key FROM jobfleet_diag.runs WHERE run = '$RUN' GROUP BY key HAVING count(*) > 1) t"; }

dlq_count() {
  case "$BACKEND" in
    redis) redis-cli -u "$REDIS_URL" XLEN "$NS:drill:dlq" ;;
    postgres) sql "SELECT count(*) FROM jobfleet.dead_letters WHERE ns = '$NS' AND queue = 'drill'" ;;
    rabbitmq) rabbitmqctl -q list_queues name messages | awk -v q="$NS.drill.dlq" '$1 == q { print $2; f = 1 } END { if (!f) print 0 }' ;;
  esac
}

# One job end to end before the load: proves the path works and creates the runs table.
warmup() {
  local t
  "$PY" bench/drill/produce.py --backend "$BACKEND" --url "$BURL" --namespace "$NS" --run "$RUN-warmup" --jobs 1 --ms 0 >/dev/null
  for t in $(seq 1 150); do
    [ "$(sql "SELECT count(*) FROM jobfleet_diag.runs WHERE run = '$RUN-warmup'" 2>/dev/null || echo 0)" = 1 ] && return 0
    sleep 0.2
  done
  sql "SELECT count(*) FROM jobfleet_diag.runs WHERE run = '$RUN-warmup'" >&2 || true
  tail -n 3 "$DIR"/worker-*.log >&2
  die "the warm-up job did not run within 30 s (database answer and worker logs above)"
}

wait_done_at_least() {
  local want="$1" t
  for t in $(seq 1 $((TIMEOUT * 10))); do
    [ "$(done_count)" -ge "$want" ] 2>/dev/null && return 0
    sleep 0.1
  done
  die "$want jobs did not complete within $TIMEOUT s"
}

# Samples until every job ran (or TIMEOUT): sets FLOW (s from $2 to the first job completed
# after it) and LAST (s from $1 to the last job completed).
measure() {
  local t_fault="$1" t_back="$2" want="$3" base="" d t
  FLOW="-"
  LAST="-"
  for t in $(seq 1 $((TIMEOUT * 10))); do
    d=$(done_count)
    if [ -n "$d" ]; then
      [ -n "$base" ] || base="$d"
      if [ "$FLOW" = "-" ] && [ "$d" -gt "$base" ]; then FLOW=$(elapsed "$t_back" "$(now)"); fi
      if [ "$d" -ge "$want" ]; then
        LAST=$(elapsed "$t_fault" "$(now)")
        [ "$FLOW" != "-" ] || FLOW="0.0"
        return 0
      fi
    fi
    sleep 0.1
  done
  log "not every job ran within $TIMEOUT s of the fault"
}

errors_logged() { cat "$DIR"/worker-*.log 2>/dev/null | grep -c '"level":"ERROR"' || true; }

ROWS=()
row() {  # scenario enqueued completed lost twice flow last notes
  ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s |' "$@")")
  log "${ROWS[-1]}"
}

cleanup() {
  [ "$KEEP" = 1 ] && return 0
  sql "DELETE FROM jobfleet_diag.runs WHERE run IN ('$RUN', '$RUN-warmup')" >/dev/null || log "could not delete the runs of $RUN"
  case "$BACKEND" in
    redis) redis-cli -u "$REDIS_URL" --scan --pattern "$NS:*" | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null ;;
    postgres) sql "DELETE FROM jobfleet.messages WHERE ns = '$NS'; DELETE FROM jobfleet.dead_letters WHERE ns = '$NS'; DELETE FROM jobfleet.queues WHERE ns = '$NS'" >/dev/null ;;
    rabbitmq) for q in "$NS.drill" "$NS.drill.dlq"; do rabbitmqctl -q delete_queue "$q" >/dev/null || log "could not delete queue $q"; done ;;
  esac
}

# ---------------------------------------------------------------- scenarios
# N jobs on three workers; at 30 % done (and everything enqueued) the fault function runs.
load_with_fault() {
  local name="$1" backend="$2" fault="$3" note="$4" i c t0 t1 lost
  setup "$name" "$backend"
  for i in 0 1 2; do start_worker "$i"; done
  for i in 0 1 2; do wait_ready "$i"; done
  warmup
  local sent
  sent=$(produce --jobs "$JOBS")
  wait_done_at_least $((JOBS * 3 / 10))
  t0=$(now)
  "$fault"
  t1=$(now)
  measure "$t0" "$t1" "$JOBS"
  for i in 0 1 2; do stop_worker "$i"; done
  c=$(counts)
  lost=$((JOBS - ${c%% *}))
  row "$name" "$sent" "${c%% *}" "$lost" "$(twice)" "$FLOW" "$LAST" "$note; DLQ $(dlq_count); ERROR lines $(errors_logged)"
  cleanup
}

fault_kill_worker() {
  log "SIGKILL worker 0 (pid ${WPID[0]}) at $(done_count) done; restarting it"
  kill -KILL "${WPID[0]}"
  wait "${WPID[0]}" 2>/dev/null || true
  forget "${WPID[0]}"
  start_worker 0
}

fault_restart_postgres() {
  log "restarting PostgreSQL: $PG_RESTART"
  PG_DOWN=1
  $PG_RESTART || die "'$PG_RESTART' failed"
  until pg_isready -d "$PG_URL" -q; do sleep 0.05; done
  PG_DOWN=0
}

fault_restart_rabbitmq() {
  log "restarting RabbitMQ: $RABBIT_STOP; $RABBIT_START"
  RABBIT_DOWN=1
  $RABBIT_STOP >&2 || die "'$RABBIT_STOP' failed"
  $RABBIT_START >&2 || die "'$RABBIT_START' failed"
  RABBIT_DOWN=0
}

# The local Redis keeps nothing on disk (appendonly no, no save points), so a real restart
# would lose every queue by design. Instead: drop every client connection and pause all
# commands for 5 s, which is what workers see when Redis restarts with its data intact.
fault_stall_redis() {
  log "Redis: CLIENT KILL TYPE normal, then CLIENT PAUSE 5000 ALL"
  redis-cli -u "$REDIS_URL" CLIENT KILL TYPE normal >/dev/null || die "CLIENT KILL failed"
  REDIS_PAUSED=1
  redis-cli -u "$REDIS_URL" CLIENT PAUSE 5000 ALL >/dev/null || die "CLIENT PAUSE failed"
  sleep 5
  REDIS_PAUSED=0
}

scenario() {
  case "$1" in
    kill-redis|kill-postgres|kill-rabbitmq)
      load_with_fault "$1" "${1#kill-}" fault_kill_worker "SIGKILL 1 of 3 workers, restarted at once" ;;
    restart-postgres)
      load_with_fault "$1" postgres fault_restart_postgres "broker and jobs database restarted" ;;
    restart-rabbitmq)
      load_with_fault "$1" rabbitmq fault_restart_rabbitmq "rabbitmqctl stop_app + start_app" ;;
    stall-redis)
      load_with_fault "$1" redis fault_stall_redis "simulated (no persistence here): connections dropped + 5 s pause" ;;
    replay-postgres) replay_killed postgres ;;
    poison-redis) poison redis 100 ;;
    leader-scheduler) leader_killed redis ;;
  esac
}

# N jobs dead-lettered by a worker that lacks their kind; then a replay with the kind deployed,
# SIGKILLed half-way and run again.
replay_killed() {
  local name="replay-$1" c lost rc=0 sent t0 t1
  setup "$name" "$1"
  start_worker 0 0
  wait_ready 0
  sent=$(produce --jobs "$JOBS")
  local t
  for t in $(seq 1 $((TIMEOUT * 10))); do [ "$(dlq_count)" -ge "$JOBS" ] && break; sleep 0.1; done
  [ "$(dlq_count)" -ge "$JOBS" ] || die "only $(dlq_count) of $JOBS reached the DLQ"
  stop_worker 0
  for i in 0 1 2; do start_worker "$i"; done
  for i in 0 1 2; do wait_ready "$i"; done
  warmup
  JOBFLEET_DIAGNOSTIC_KINDS=1 "$WORKER" --config "$DIR/worker.toml" dlq replay drill --rate 2000 >"$DIR/replay-1.log" 2>&1 &
  local rp=$!
  PIDS+=($rp)
  until [ "$(dlq_count)" -le $((JOBS / 2)) ]; do
    kill -0 "$rp" 2>/dev/null || { cat "$DIR/replay-1.log" >&2; die "the replay ended before half-way"; }
    sleep 0.05
  done
  t0=$(now)
  log "SIGKILL the replay at $(dlq_count) left in the DLQ; replaying again"
  kill -KILL "$rp"
  wait "$rp" 2>/dev/null || true
  forget "$rp"
  t1=$(now)
  JOBFLEET_DIAGNOSTIC_KINDS=1 "$WORKER" --config "$DIR/worker.toml" dlq replay drill >"$DIR/replay-2.log" 2>&1 &
  rp=$!
  PIDS+=($rp)
  measure "$t0" "$t1" "$JOBS"
  wait "$rp" || rc=$?
  forget "$rp"
  [ "$rc" = 0 ] || { cat "$DIR/replay-2.log" >&2; die "the second replay exited $rc"; }
  for i in 0 1 2; do stop_worker "$i"; done
  c=$(counts)
  lost=$((JOBS - ${c%% *}))
  row "$name" "$sent" "${c%% *}" "$lost" "$(twice)" "$FLOW" "$LAST" "replay SIGKILLed half-way, run again; DLQ $(dlq_count); ERROR lines $(errors_logged)"
  cleanup
}

# N good jobs with K poison bodies spread among them: every good job runs, every poison body
# ends in the DLQ, nothing crashes.
poison() {
  local c sent t0 lost dlq t
  setup "poison-$1" "$1"
  for i in 0 1 2; do start_worker "$i"; done
  for i in 0 1 2; do wait_ready "$i"; done
  warmup
  t0=$(now)
  sent=$(produce --jobs "$JOBS" --poison "$2")
  measure "$t0" "$t0" "$JOBS"
  for t in $(seq 1 100); do [ "$(dlq_count)" -ge "$2" ] && break; sleep 0.1; done
  for i in 0 1 2; do
    kill -0 "${WPID[$i]}" 2>/dev/null || log "worker $i died during the poison run ($DIR/worker-$i.log)"
    stop_worker "$i"
  done
  c=$(counts)
  dlq=$(dlq_count)
  lost=$((JOBS - ${c%% *} + $2 - dlq))
  row "poison-$1" "$sent" "${c%% *}" "$lost" "$(twice)" "-" "$LAST" "$2 poison bodies, $dlq in the DLQ; ERROR lines $(errors_logged)"
  cleanup
}

# Two scheduler replicas, a schedule firing every second; the leader is SIGKILLed. Each tick
# is a job keyed by its tick, so a missed tick shows as a gap and a doubled one as run twice.
leader_killed() {
  local sched="drill_$$" lease="drill-$$" i a t kill_at leader=-1 c stats
  setup leader-scheduler "$1"
  for i in 0 1; do
    { sed '/^\[log\]/,$d' "$DIR/worker.toml"
      cat <<TOML
[scheduler]
lease = "3s"
admin_addr = "127.0.0.1:$((PORT_BASE + 5 + i))"

[[scheduler.schedules]]
name = "$sched"
cron = "* * * * * *"
kind = "diag_record"
queue = "drill"
payload = { run = "$RUN", key = "{{tick}}" }

[log]
format = "json"
level = "info"
TOML
    } >"$DIR/scheduler-$i.toml"
  done
  start_worker 0
  wait_ready 0
  warmup
  local SP=()
  start_sched() {
    env -u JOBFLEET_CONFIG "$SCHEDULER" --config "$DIR/scheduler-$1.toml" --lease-name "$lease" run >>"$DIR/scheduler-$1.log" 2>&1 &
    SP[$1]=$!
    PIDS+=($!)
  }
  is_leader() { curl -fsS "http://127.0.0.1:$((PORT_BASE + 5 + $1))/metrics" 2>/dev/null | grep -q '^jobfleet_scheduler_leader 1'; }
  start_sched 0
  for t in $(seq 1 100); do is_leader 0 && break; sleep 0.2; done
  is_leader 0 || die "scheduler 0 did not become leader within 20 s ($DIR/scheduler-0.log)"
  start_sched 1
  sleep 8
  for i in 0 1; do is_leader "$i" && leader=$i; done
  [ "$leader" -ge 0 ] || die "no scheduler replica reports leadership"
  log "SIGKILL scheduler $leader (the leader)"
  kill -KILL "${SP[$leader]}"
  wait "${SP[$leader]}" 2>/dev/null || true
  forget "${SP[$leader]}"
  kill_at=$(sql "SELECT clock_timestamp()")
  a=$((1 - leader))
  for t in $(seq 1 100); do is_leader "$a" && break; sleep 0.2; done
  is_leader "$a" || die "scheduler $a did not take over within 20 s ($DIR/scheduler-$a.log)"
  sleep 8
  kill -TERM "${SP[$a]}"
  wait "${SP[$a]}" || log "scheduler $a exited $? after SIGTERM ($DIR/scheduler-$a.log)"
  forget "${SP[$a]}"
  # Let the worker run what was enqueued, then compare the ledger with the runs.
  for t in $(seq 1 100); do
    [ "$(done_count)" -ge "$(sql "SELECT count(*) FROM jobfleet.scheduler_ticks WHERE schedule = '$sched'")" ] && break
    sleep 0.1
  done
  stop_worker 0
  stats=$(sql "
    WITH ticks AS (SELECT tick_at, enqueued_at FROM jobfleet.scheduler_ticks WHERE schedule = '$sched'),
         runs AS (SELECT key::timestamptz AS tick_at, min(at) AS first_at, count(*) AS n
                  FROM jobfleet_diag.runs WHERE run = '$RUN' GROUP BY key),
         flow AS (SELECT min(enqueued_at) AS at FROM ticks WHERE enqueued_at > '$kill_at')
    SELECT (SELECT count(*) FROM ticks),
           (SELECT count(*) FROM runs),
           (SELECT count(*) FROM generate_series((SELECT min(tick_at) FROM ticks), (SELECT max(tick_at) FROM ticks), '1 second') s
             WHERE s NOT IN (SELECT tick_at FROM runs)),
           (SELECT count(*) FROM runs WHERE n > 1),
           coalesce((SELECT round(extract(epoch FROM at - '$kill_at')::numeric, 1)::text FROM flow), '-'),
           coalesce((SELECT round(extract(epoch FROM max(first_at) - '$kill_at')::numeric, 1)::text FROM runs
             WHERE tick_at > '$kill_at'::timestamptz - interval '1 second' AND tick_at <= (SELECT at FROM flow)), '-')")
  read -r en co lo tw fl la <<<"$stats"
  row leader-scheduler "$en" "$co" "$lo" "$tw" "$fl" "$la" "2 replicas, lease 3 s, 1 tick/s; ticks due during the failover counted in last job; ERROR lines $(errors_logged)"
  if [ "$KEEP" = 0 ]; then
    sql "DELETE FROM jobfleet.scheduler_ticks WHERE schedule = '$sched'; DELETE FROM jobfleet.scheduler_leases WHERE name = '$lease'" >/dev/null
  fi
  cleanup
}

# ---------------------------------------------------------------- run
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
for s in "${SCENARIOS[@]}"; do
  log "== $s"
  scenario "$s"
done
echo "bench/drill.sh --jobs $JOBS ${SCENARIOS[*]}   # $STARTED, visibility timeout $VISIBILITY"
echo
echo "| scenario | enqueued | completed | lost | run twice | flow again (s) | last job (s) | notes |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
