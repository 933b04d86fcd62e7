# Sourced by bench/fleet.sh and bench/cluster.sh: one end-to-end drain through the real
# `worker run` process, as operators run it. The queue is filled first by the in-process drain
# bench (`--enqueue-only`), then `worker run` starts and the drain is timed from outside, from
# the worker's own /metrics read every 20 ms: first job done .. JOBS jobs done. The worker's CPU
# time over the same span (from /proc), divided by the jobs, is appended to $TMP/LABEL.cpu in
# microseconds per job: on a VM whose wall-clock rate swings from round to round, what the worker
# itself spends per job is the steadier figure.
#
# The caller sets DRAIN (the drain bench binary), WORKER (the release `worker`), TMP (a scratch
# directory), PG_URL (the jobs' database) and PORT (a free admin port to start from), and traps
# EXIT to stop "$WPID" if it is set.
#
#   worker_drain LABEL BROKER_URL JOBS CONC [EXTRA_TOML]   # prints jobs/s on stdout
WPID=
worker_drain() {
  local label=$1 url=$2 jobs=$3 conc=$4 extra=${5:-} ns="jfbd$$${RANDOM}"
  cat >"$TMP/$label.toml" <<TOML
[broker]
backend = "redis"
url = "$url"
namespace = "$ns"
[database]
url = "$PG_URL"
[worker]
budget = $conc
admin_addr = "127.0.0.1:$PORT"
[queues.drainbench]
min = $conc
max = $conc
[routes]
noop = "drainbench"
[scheduler]
schedules = []
$extra
TOML
  "$DRAIN" --backend redis --url "$url" --enqueue-only --jobs "$jobs" --queue drainbench \
    --namespace "$ns" >/dev/null || { echo "worker_drain: FAILED to fill the queue on $url" >&2; return 1; }
  RUST_LOG=warn "$WORKER" --config "$TMP/$label.toml" run 2>"$TMP/$label.log" &
  WPID=$!
  if ! python3 - "$PORT" "$jobs" "$WPID" "$TMP/$label.cpu" <<'PY'
import os, re, sys, time, urllib.request
port, jobs, pid, cpu_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")

def cpu_seconds():
    # utime and stime, fields 14 and 15 of /proc/PID/stat (after the command's closing paren).
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick

pat = re.compile(r'^jobfleet_jobs_succeeded_total\{[^}]*\} (\d+)', re.M)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
first = None
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        text = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        time.sleep(0.02)
        continue
    done = sum(int(n) for n in pat.findall(text))
    now = time.monotonic()
    if done > 0 and first is None:
        first, cpu_first = now, cpu_seconds()
    if done >= jobs:
        print(f"{jobs / (now - first):.0f}")
        with open(cpu_file, "a") as f:
            f.write(f"{(cpu_seconds() - cpu_first) * 1e6 / jobs:.2f}\n")
        sys.exit(0)
    time.sleep(0.02)
sys.exit("FAIL: the drain did not finish within 600 s")
PY
  then
    echo "worker_drain: FAILED: $label on $url; the worker's log ($TMP/$label.log) ends:" >&2
    tail -n 20 "$TMP/$label.log" >&2
    kill -TERM "$WPID" 2>/dev/null; wait "$WPID" || true; WPID=
    return 1
  fi
  kill -TERM "$WPID"; wait "$WPID" || true; WPID=
  PORT=$((PORT + 1))
}
