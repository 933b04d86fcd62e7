#!/usr/bin/env bash
# Redis Cluster benchmark (issue 12), every figure next to the single Redis node measured in the
# same run on the same machine:
#  1. the raw queue layer (queues/benches/throughput.rs) with 6 queues: the single node on
#     :6379 vs the 3-master cluster on :7000-7005 (scripts/services.sh up redis-cluster);
#  2. the cost of `WAIT 1` after every send on the cluster (RedisBroker::with_replica_wait);
#  3. the end-to-end drain of no-op jobs through the worker (worker/benches/drain.rs, what
#     `worker run` runs) on the single node vs the cluster.
#
#   bench/cluster.sh [MESSAGES] [JOBS]        # defaults: 60000 30000
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MESSAGES="${1:-60000}"
JOBS="${2:-30000}"
QUEUES=6
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
SINGLE="redis://127.0.0.1:6379"
CLUSTER="redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"

fail() { echo "bench/cluster.sh: FAILED: $*" >&2; exit 1; }

scripts/services.sh up redis redis-cluster postgres >&2 || fail "services did not come up"
cargo bench --locked -q -p jobfleet-queues --bench throughput --no-run >&2 || fail "building the throughput bench"
cargo bench --locked -q -p jobfleet-worker --bench drain --no-run >&2 || fail "building the drain bench"
newest() { ls -t "$CARGO_TARGET_DIR"/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
THROUGHPUT=$(newest throughput)
DRAIN=$(newest drain)

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# rate LABEL FILE PHASE: the msgs/s figure of one phase line of the throughput bench.
rate() { sed -n "s/^$2: .*= *\([0-9]*\) msgs\/s/\1/p" "$1"; }

raw() { # name url [extra args]
  local name=$1 url=$2; shift 2
  echo "== throughput $name: $MESSAGES messages over $QUEUES queues, 8 consumers each" >&2
  "$THROUGHPUT" --backend redis --url "$url" --messages "$MESSAGES" --queues "$QUEUES" \
    --consumers 8 --batch 100 --probe 500 "$@" | tee "$TMP/$name.txt" >&2 \
    || fail "throughput bench on $name ($url)"
  grep -q '^warning' "$TMP/$name.txt" && fail "throughput bench on $name left work behind: $(grep '^warning' "$TMP/$name.txt")"
  [ -n "$(rate "$TMP/$name.txt" "receive+ack")" ] || fail "no receive+ack figure for $name"
}

raw single "$SINGLE"
raw cluster "$CLUSTER"
raw cluster-wait "$CLUSTER" --wait-replicas 1

echo "== end-to-end drain through the worker: $JOBS no-op jobs, concurrency 50" >&2
"$DRAIN" --backend redis --url "$SINGLE" --jobs "$JOBS" --concurrency 50 >"$TMP/drain-single.json" \
  || fail "drain bench on the single node"
"$DRAIN" --backend redis --url "$CLUSTER" --jobs "$JOBS" --concurrency 50 >"$TMP/drain-cluster.json" \
  || fail "drain bench on the cluster"

python3 - "$TMP" <<'PY'
import json, re, sys, pathlib
tmp = pathlib.Path(sys.argv[1])
def phases(name):
    text = (tmp / f"{name}.txt").read_text()
    out = {}
    for label in ("send", "receive+ack", "send+receive+ack"):
        m = re.search(rf"^{re.escape(label)}: .*= *(\d+) msgs/s", text, re.M)
        if not m:
            sys.exit(f"bench/cluster.sh: FAILED: no `{label}` figure for {name}")
        out[label] = int(m.group(1))
    m = re.search(r"idle consumers.*p50 ([\d.]+) ms  p99 ([\d.]+) ms", text)
    out["p50"], out["p99"] = (m.group(1), m.group(2)) if m else ("?", "?")
    return out
single, cluster, wait = phases("single"), phases("cluster"), phases("cluster-wait")
print(f"\nraw queue layer, 6 queues (msgs/s; ratio to the single node in this run)")
print(f"{'phase':<20}{'single':>10}{'cluster':>10}{'ratio':>8}{'cluster+WAIT 1':>16}{'ratio':>8}")
for label in ("send", "receive+ack", "send+receive+ack"):
    s, c, w = single[label], cluster[label], wait[label]
    print(f"{label:<20}{s:>10}{c:>10}{c/s:>7.2f}x{w:>16}{w/s:>7.2f}x")
print(f"{'idle latency p50/p99':<20}{single['p50'] + '/' + single['p99']:>10}{cluster['p50'] + '/' + cluster['p99']:>10}"
      f"{'':>8}{wait['p50'] + '/' + wait['p99']:>16}  ms")
ds = json.loads((tmp / "drain-single.json").read_text().strip().splitlines()[-1])
dc = json.loads((tmp / "drain-cluster.json").read_text().strip().splitlines()[-1])
print(f"\nend-to-end drain through the worker ({ds['jobs']} no-op jobs, concurrency {ds['concurrency']})")
print(f"{'':<20}{'jobs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
for name, d in (("single node", ds), ("cluster", dc)):
    print(f"{name:<20}{d['jobs_per_s']:>10}{d['p50_ms']:>10}{d['p99_ms']:>10}")
print(f"cluster / single: {dc['jobs_per_s'] / ds['jobs_per_s']:.2f}x")
PY
