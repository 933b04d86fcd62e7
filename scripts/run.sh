#!/usr/bin/env bash
# Runs jobfleet locally with the embedded defaults (no config file needed): PostgreSQL is both
# the queue backend and the jobs' database. Brings PostgreSQL up, builds, applies migrations,
# then runs the scheduler in the background and the worker in the foreground. Ctrl-C drains both.
#
#   scripts/run.sh            # worker + scheduler until Ctrl-C
#   scripts/run.sh demo       # a one-minute tour: every job kind, one failure, queue table, DLQ
#
# Set JOBFLEET_CONFIG=path/to/config.toml to use a config file (see deploy/config.example.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"

scripts/services.sh up postgres
cargo build --release --locked -q -p jobfleet-worker -p jobfleet-scheduler
BIN="$CARGO_TARGET_DIR/release"

"$BIN/worker" migrate
if [ "${1:-}" = demo ]; then
  exec "$BIN/worker" demo
fi

"$BIN/scheduler" run &
SCHED=$!
trap 'kill -TERM $SCHED 2>/dev/null; wait $SCHED 2>/dev/null || true' EXIT
"$BIN/worker" run
