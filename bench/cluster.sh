#!/usr/bin/env bash
# Redis Cluster benchmark (issue 12), every figure next to the single Redis node measured in the
# same run on the same machine:
#  1. the raw queue layer (queues/benches/throughput.rs) with 6 queues: the single node on
#     :6379 vs the 3-master cluster on :7000-7005 (scripts/services.sh up redis-cluster);
#  2. the cost of `WAIT 1` after every send on the cluster (RedisBroker::with_replica_wait);
#  3. the end-to-end drain of no-op jobs through the real `worker run` process (pool of 50,
#     bench/lib/worker-drain.sh) on the single node vs the cluster, interleaved 3 times.
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
cargo build --release --locked -q -p jobfleet-worker --bin worker >&2 || fail "building the release worker"
WORKER="$CARGO_TARGET_DIR/release/worker"
PG_URL="${JOBFLEET_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
newest() { ls -t "$CARGO_TARGET_DIR"/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
THROUGHPUT=$(newest throughput)
DRAIN=$(newest drain)

TMP=$(mktemp -d)
PORT=19390
# shellcheck source=bench/lib/worker-drain.sh
. "$ROOT/bench/lib/worker-drain.sh"
trap '[ -n "$WPID" ] && kill -TERM "$WPID" 2>/dev/null; rm -rf "$TMP"' EXIT

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

echo "== end-to-end drain through \`worker run\`: $JOBS no-op jobs, pool of 50, 3 rounds" >&2
for r in 1 2 3; do
  s=$(worker_drain single "$SINGLE" "$JOBS" 50) || fail "worker run drain on the single node"
  c=$(worker_drain cluster "$CLUSTER" "$JOBS" 50) || fail "worker run drain on the cluster"
  echo "round $r  single $s jobs/s  cluster $c jobs/s" >&2
  echo "$s $c" >>"$TMP/drains.txt"
done

python3 - "$TMP" <<'PY'
import re, statistics, sys, pathlib
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
rounds = [tuple(map(float, l.split())) for l in (tmp / "drains.txt").read_text().split("\n") if l.strip()]
print(f"\nend-to-end drain through `worker run` ({len(rounds)} rounds, jobs/s each round)")
print(f"{'single node':<20}" + "".join(f"{s:>10,.0f}" for s, _ in rounds))
print(f"{'cluster':<20}" + "".join(f"{c:>10,.0f}" for _, c in rounds))
print(f"cluster / single (median of the rounds): {statistics.median(c / s for s, c in rounds):.2f}x")
PY
