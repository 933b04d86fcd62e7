#!/usr/bin/env bash
# The peer benchmark (issue 13), one command on a fresh machine: installs every peer from its
# registry (BullMQ, graphile-worker, pg-boss from npm by bench/node's lock file; apalis-redis
# and apalis-postgres 1.0 from crates.io as the bench-only project bench/apalis; Celery from
# PyPI into the project's .venv), builds the release `worker`, then runs jobfleet and every peer
# on the same broker back to back, round after round, and prints one table (Markdown):
# system x broker, jobs/s, p50/p99 enqueue->start, peak RSS, jobfleet's ratio to each peer.
#
#   bench/run.sh                      # everything: ~15-20 min on 2 cores
#   bench/run.sh --brokers redis --rounds 1 --redis-jobs 50000 --redis-concurrency 50
#   bench/run.sh --skip pg-boss,celery
#
# Flags after the script name go to bench/python/harness.py (`--help` lists them). Every step
# says what it does and, when it fails, what failed; nothing is silenced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
trap 'echo "bench/run.sh FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
step() { echo "== $*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
APALIS_TARGET_DIR="${APALIS_TARGET_DIR:-$HOME/.cache/jobfleet/apalis-target}"
VENV="$ROOT/.venv"

step "services: PostgreSQL, Redis, RabbitMQ (scripts/services.sh)"
scripts/services.sh up postgres redis rabbitmq >&2

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "node/npm missing: apt-get install nodejs npm"
  apt-get update -q >&2 && apt-get install -y -q nodejs npm >&2
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "bench/run.sh: Node $(node --version) is too old; the peers need Node 20 or newer" >&2
  exit 1
fi
step "Node peers: npm ci in bench/node (BullMQ, graphile-worker, pg-boss; Node $(node --version), npm $(npm --version))"
(cd bench/node && npm ci --no-audit --no-fund >&2)

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV" >&2
fi
step "Python side: Celery and the harness's clients into $VENV (bench/python/requirements.txt)"
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/python/requirements.txt >&2

step "building jobfleet's release worker (target dir $CARGO_TARGET_DIR)"
cargo build --release --locked -p jobfleet-worker --bin worker >&2
step "building the apalis peer (bench/apalis, target dir $APALIS_TARGET_DIR)"
(cd bench/apalis && CARGO_TARGET_DIR="$APALIS_TARGET_DIR" cargo build --release --locked >&2)

step "running (machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg))"
mkdir -p "$ROOT/bench/results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
"$VENV/bin/python" bench/python/harness.py \
  --worker "$CARGO_TARGET_DIR/release/worker" \
  --apalis "$APALIS_TARGET_DIR/release/jobfleet-bench-apalis" \
  --results "$ROOT/bench/results/$STAMP.jsonl" "$@" | tee "$ROOT/bench/results/$STAMP.md"
step "table saved to bench/results/$STAMP.md (every run's figures in $STAMP.jsonl)"
