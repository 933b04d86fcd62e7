#!/usr/bin/env bash
# Starts (or stops) a local Redis Cluster from the machine's own redis-server binary: one
# process per node on 127.0.0.1, ports BASE..BASE+N-1 (cluster bus on port+10000), data and
# logs in a temporary directory. Idempotent: a cluster whose nodes already answer and report
# `cluster_state:ok` is left alone. Used by scripts/services.sh (the shared test cluster on
# 7000-7005) and by the tests that fail over or kill masters, which start their own on other
# ports so the shared one never changes under the conformance suite.
#
#   scripts/redis-cluster.sh up BASE MASTERS REPLICAS_PER_MASTER [DIR]
#   scripts/redis-cluster.sh down BASE NODES [DIR]
#   scripts/redis-cluster.sh status BASE NODES
#
# `cluster-require-full-coverage no`: when one shard has no master, the others keep serving
# (ElastiCache's default too), so a worker serves the queues that are still reachable.
set -euo pipefail

note() { echo "redis-cluster: $*" >&2; }
ping() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }
state_ok() { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }
dir_for() { echo "${1:-${TMPDIR:-/tmp}/jobfleet-redis-cluster-$2}"; }

wait_ok() { # port seconds
  local i
  for ((i = 0; i < $2 * 4; i++)); do state_ok "$1" && return 0; sleep 0.25; done
  note "cluster on :$1 did not reach cluster_state:ok within $2 s"
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>&1 | head -3 >&2 || true
  return 1
}

start_node() { # port dir
  local port=$1 dir=$2
  ping "$port" && return 0
  mkdir -p "$dir/$port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir/$port" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --cluster-require-full-coverage no --save "" --appendonly no \
    --logfile "$dir/$port/redis.log" --pidfile "$dir/$port/redis.pid"
}

all_up() { # base n
  local i
  for ((i = 0; i < $2; i++)); do state_ok $(($1 + i)) || return 1; done
}

up() { # base masters replicas [dir]
  local base=$1 masters=$2 replicas=$3 dir n i
  n=$((masters * (1 + replicas)))
  dir=$(dir_for "${4:-}" "$base")
  all_up "$base" "$n" && return 0
  command -v redis-server >/dev/null || { note "redis-server is not installed"; return 1; }
  # Start whatever node is not running: all of them the first time, or one that was stopped
  # (it rejoins with the nodes.conf it kept in its directory).
  local nodes=()
  for ((i = 0; i < n; i++)); do
    start_node $((base + i)) "$dir"
    nodes+=("127.0.0.1:$((base + i))")
  done
  for ((i = 0; i < n; i++)); do
    local w
    for ((w = 0; w < 80; w++)); do ping $((base + i)) && break; sleep 0.25; done
    ping $((base + i)) || { note "node :$((base + i)) did not start (see $dir/$((base + i))/redis.log)"; return 1; }
  done
  # Nodes that know only themselves are fresh: form them into a cluster. Otherwise they
  # belong to one already; only wait for it to settle.
  local known
  known=$(redis-cli -p "$base" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')
  if [ "${known:-1}" = 1 ]; then
    note "forming a cluster of $masters masters x $replicas replicas on :$base-:$((base + n - 1)) ($dir)"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 \
      || { note "FAILED: redis-cli --cluster create (see $dir/create.log)"; tail -5 "$dir/create.log" >&2; return 1; }
  fi
  for ((i = 0; i < n; i++)); do wait_ok $((base + i)) 30; done
}

down() { # base nodes [dir]
  local base=$1 n=$2 dir i
  dir=$(dir_for "${3:-}" "$base")
  for ((i = 0; i < n; i++)); do
    redis-cli -h 127.0.0.1 -p $((base + i)) shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

status() { # base nodes
  local base=$1 n=$2 i ok=0
  for ((i = 0; i < n; i++)); do
    if state_ok $((base + i)); then
      echo "redis-cluster up   127.0.0.1:$((base + i)) $(redis-cli -p $((base + i)) role | head -1)"
    else
      echo "redis-cluster DOWN 127.0.0.1:$((base + i))"; ok=1
    fi
  done
  return $ok
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  status) shift; status "$@" ;;
  *) echo "usage: $0 up BASE MASTERS REPLICAS [DIR] | down BASE NODES [DIR] | status BASE NODES" >&2; exit 2 ;;
esac
