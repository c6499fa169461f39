#!/usr/bin/env bash
# What the sweeper spends forgetting empty queues: N queues left in the due index, due at once,
# with their promises and no job (what a drained queue is once its retention ended), in a
# redis-server of its own; one jobd (BIN) started on it; the wall time until the due index is
# empty, jobd's CPU time then, and the Redis commands it took.
#
#   bench/forget-cost.sh [BIN] [N]      # defaults: target/debug/jobd, 10000
#
# Prints one JSON line, then Redis's commandstats of the commands the sweeper sends.
set -euo pipefail

bin=${1:-target/debug/jobd}
queues=${2:-10000}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis=$!
trap 'kill "$redis" ${jobd:+"$jobd"} 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
redis-cli -p "$port" EVAL "for i = 1, tonumber(ARGV[1]) do
    local queue = 'forget.' .. i
    redis.call('ZADD', KEYS[1], 0, queue)
    redis.call('SET', 'jobd:{' .. queue .. '}:due', '1')
  end
  return 1" 1 'jobd:{:queues}:due' "$queues" >/dev/null
redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
started=$(date +%s%N)
REDIS_URL=redis://127.0.0.1:$port RUST_LOG=${RUST_LOG:-info} "$bin" --listen 127.0.0.1:0 \
  --redis-pool-size=4 >"$dir/jobd.log" 2>&1 &
jobd=$!
until [ "$(redis-cli -p "$port" ZCARD 'jobd:{:queues}:due')" = 0 ]; do sleep 0.1; done
ended=$(date +%s%N)
read -ra stat < <(cut -d')' -f2 "/proc/$jobd/stat")
ticks=$(getconf CLK_TCK)
cpu_ms=$(( (stat[11] + stat[12]) * 1000 / ticks ))
wall_ms=$(( (ended - started) / 1000000 ))
echo "{\"queues\": $queues, \"wall_ms\": $wall_ms, \"jobd_cpu_ms\": $cpu_ms," \
  "\"jobd_cpu_us_per_queue\": $(( cpu_ms * 1000 / queues ))}"
redis-cli -p "$port" INFO commandstats | grep -E '^cmdstat_(evalsha|zadd|zrem|get|del):' || true
