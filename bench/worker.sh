#!/usr/bin/env bash
# End-to-end worker benchmark (issue 6): no-op jobs through the worker on Redis and RabbitMQ,
# BullMQ 5 on the same Redis in the same run as the peer, and the resident memory of a real
# `worker run` process idle and while running 200 concurrent no-op jobs.
#
#   bench/worker.sh [JOBS] [CONCURRENCY]      # defaults: 50000 50
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${1:-50000}"
CONC="${2:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
scripts/services.sh up redis rabbitmq postgres >&2

cargo build --release --locked -q -p jobfleet-worker >&2
cargo bench --locked -q -p jobfleet-worker --bench drain --no-run >&2
DRAIN=$(ls -t "$CARGO_TARGET_DIR"/release/deps/drain-* | grep -v '\.d$' | head -1)
WORKER="$CARGO_TARGET_DIR/release/worker"
(cd bench/bullmq && [ -d node_modules ] || npm ci --no-audit --no-fund --silent >&2)

echo "== drain of $JOBS no-op jobs at concurrency $CONC (pre-filled queue)" >&2
RESULTS=()
for b in redis rabbitmq; do
  RESULTS+=("$("$DRAIN" --backend "$b" --jobs "$JOBS" --concurrency "$CONC")")
  echo "${RESULTS[-1]}"
done
RESULTS+=("$(node bench/bullmq/drain.mjs --jobs="$JOBS" --concurrency="$CONC")")
echo "${RESULTS[-1]}"

echo "== resident memory of \`worker run\` (Redis, pool of 200)" >&2
TMP=$(mktemp -d)
NS="jfrss$$"
cat >"$TMP/rss.toml" <<TOML
[broker]
backend = "redis"
url = "redis://127.0.0.1:6379"
namespace = "$NS"
[worker]
budget = 200
admin_addr = "127.0.0.1:19190"
[queues.rss]
min = 200
max = 200
[routes]
noop = "rss"
[scheduler]
schedules = []
TOML
RUST_LOG=warn "$WORKER" --config "$TMP/rss.toml" run 2>"$TMP/worker.log" &
WPID=$!
trap 'kill -TERM $WPID 2>/dev/null || true; rm -rf "$TMP"' EXIT
rss() { awk '/VmRSS/ {print $2/1024}' "/proc/$WPID/status"; }
sleep 3
IDLE=$(rss)
"$DRAIN" --backend redis --enqueue-only --jobs 200000 --queue rss --namespace "$NS" >/dev/null &
FILL=$!
PEAK=$IDLE
for _ in $(seq 1 150); do
  r=$(rss); PEAK=$(awk -v a="$PEAK" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
  sleep 0.2
done
wait $FILL
kill -TERM $WPID
wait $WPID && EXIT=0 || EXIT=$?
trap 'rm -rf "$TMP"' EXIT
echo "{\"rss_idle_mb\": $IDLE, \"rss_peak_busy_mb\": $PEAK, \"sigterm_exit\": $EXIT}"

python3 - "${RESULTS[@]}" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
bull = next(r for r in rows if r["impl"] == "bullmq")
print(f"\n{'impl':<22}{'jobs/s':>10}{'drain s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs BullMQ':>11}")
for r in rows:
    name = r["impl"] + ("/" + r["backend"] if "backend" in r else "")
    print(f"{name:<22}{r['jobs_per_s']:>10}{r['drain_s']:>10}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['jobs_per_s']/bull['jobs_per_s']:>10.2f}x")
PY
