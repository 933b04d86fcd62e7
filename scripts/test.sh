#!/usr/bin/env bash
# The project's test command (README): brings the local services up, checks formatting and
# lints, and runs every test (unit, conformance suite per backend, integration) against the real
# PostgreSQL, Redis, RabbitMQ and moto.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jobfleet/target}"
export JOBFLEET_SQS_ENDPOINT="${JOBFLEET_SQS_ENDPOINT:-http://127.0.0.1:5000}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

scripts/services.sh up
# The in-process all-MiniLM-L6-v2 provider is opt-in for users; the tests build and test it.
FEATURES=(--features jobfleet-jobs/minilm)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
scripts/lint-deploy.sh
# The peer bench's pure helpers (quantiles, the table); the bench itself is not a test.
python3 -m unittest discover -s bench/python -p 'test_*.py'
cargo nextest run --workspace --locked --no-fail-fast "${FEATURES[@]}" "$@"
# nextest does not run doctests.
cargo test --workspace --locked --doc "${FEATURES[@]}"
