#!/usr/bin/env bash
# Control-plane overhead benchmark (issue 10): the Redis end-to-end drain of `worker run`
# (JOBS no-op jobs, pool of CONC) three ways, interleaved ROUNDS times in one run:
#   off      [fleet] enabled = false: no control plane at all (the peer)
#   on       the control plane on, no limit configured
#   limited  [limits.noop] rate = 6000000/min (100,000/s), far above the drain rate
# Drain = first job done .. JOBS done, read from the worker's own /metrics (bench/lib/worker-drain.sh).
# Targets: on >= 0.95 x off, limited >= 0.85 x off (medians of the per-round ratios); a miss
# prints FAIL and exits 1. The worker's own CPU time per job is printed next to it, variant
# against variant: on a VM whose drain rate swings by 20% between rounds, it shows what the
# control plane costs the worker with far less noise.
#
#   bench/fleet.sh [JOBS] [CONC] [ROUNDS]     # defaults: 200000 50 5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${1:-200000}"
CONC="${2:-50}"
ROUNDS="${3:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
PG_URL="${JOBFLEET_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/services.sh up redis postgres >&2

cargo build --release --locked -q -p jobfleet-worker >&2
cargo bench --locked -q -p jobfleet-worker --bench drain --no-run >&2
DRAIN=$(ls -t "$CARGO_TARGET_DIR"/release/deps/drain-* | grep -v '\.d$' | head -1)
WORKER="$CARGO_TARGET_DIR/release/worker"
TMP=$(mktemp -d)
PORT=19290
# shellcheck source=bench/lib/worker-drain.sh
. "$ROOT/bench/lib/worker-drain.sh"
trap '[ -n "$WPID" ] && kill -TERM "$WPID" 2>/dev/null; rm -rf "$TMP"' EXIT

# One drain of a variant: prints jobs/s.
drain() {
  case $1 in
    off) worker_drain off redis://127.0.0.1:6379 "$JOBS" "$CONC" $'[fleet]\nenabled = false' ;;
    on) worker_drain on redis://127.0.0.1:6379 "$JOBS" "$CONC" ;;
    limited) worker_drain limited redis://127.0.0.1:6379 "$JOBS" "$CONC" $'[limits.noop]\nrate = "6000000/min"' ;;
  esac
}

echo "== $ROUNDS rounds of: drain $JOBS no-op jobs through \`worker run\` on Redis, pool of $CONC" >&2
RES=()
for r in $(seq 1 "$ROUNDS"); do
  for v in off on limited; do
    s=$(drain "$v")
    echo "round $r  $v  $s jobs/s" >&2
    RES+=("$v:$s")
  done
done

python3 - "$TMP" "${RES[@]}" <<'PY'
import statistics, sys
tmp = sys.argv[1]
rows = [a.split(":") for a in sys.argv[2:]]
by = {}
for v, s in rows:
    by.setdefault(v, []).append(float(s))
n = len(by["off"])
ratio = {v: statistics.median(by[v][i] / by["off"][i] for i in range(n)) for v in ("on", "limited")}
print(f"\n{'variant':<10}{'jobs/s (each round)':<44}{'median ratio vs off':>20}{'target':>8}")
fail = False
for v, target in (("off", None), ("on", 0.95), ("limited", 0.85)):
    each = ", ".join(f"{x:,.0f}" for x in by[v])
    r = "1.000" if v == "off" else f"{ratio[v]:.3f}"
    t = "" if target is None else f">= {target}"
    print(f"{v:<10}{each:<44}{r:>20}{t:>8}")
    if target is not None and ratio[v] < target:
        print(f"FAIL: {v} drains at {ratio[v]:.3f} x the speed without the control plane (target >= {target})")
        fail = True
cpu = {v: [float(x) for x in open(f"{tmp}/{v}.cpu").read().split()] for v in ("off", "on", "limited")}
print(f"\n{'variant':<10}{'worker CPU us/job (each round)':<44}{'median ratio vs off':>20}")
for v in ("off", "on", "limited"):
    each = ", ".join(f"{x:.2f}" for x in cpu[v])
    r = statistics.median(cpu[v][i] / cpu["off"][i] for i in range(n))
    print(f"{v:<10}{each:<44}{r:>20.3f}")
sys.exit(1 if fail else 0)
PY
