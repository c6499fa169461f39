#!/usr/bin/env bash
# Instructions Redis spends on one call of a Lua script, counted by callgrind: the script (the
# helpers in --lib, then BODY, after a shebang) is loaded into a redis-server of its own, then
# called N times by EVALSHA with no keys, instrumentation on for those calls only. Subtract the
# count of `return 1` to get what BODY or the helpers cost.
#
#   bench/lua-cost.sh [--lib FILE] [--calls N] BODY
#
# e.g. what defining lib.lua's helpers costs every call, and what packing one event costs:
#   bench/lua-cost.sh 'return 1'; bench/lua-cost.sh --lib src/store/lua/lib.lua 'return 1'
#   bench/lua-cost.sh --lib src/store/lua/lib.lua "return pack_event('queued', packed_at(0), 0)"
# Prints one JSON line: the calls and the instructions (Ir) per call.
set -euo pipefail

lib=/dev/null
calls=2000
while [ $# -gt 1 ]; do
  case "$1" in
    --lib) lib=$2; shift 2 ;;
    --calls) calls=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
body=${1:?a Lua body, e.g. 'return 1'}

dir=$(mktemp -d /tmp/jobd-lua-cost.XXXXXX)
redis=
cleanup() {
  [ -n "$redis" ] && kill "$redis" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --instr-atstart=no -q --callgrind-out-file="$dir/callgrind.out" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
  >/dev/null &
redis=$!
for _ in $(seq 600); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
sha=$(redis-cli -p "$port" script load "$(printf '#!lua\n%s\n%s' "$(cat "$lib")" "$body")")
redis-cli -p "$port" evalsha "$sha" 0 >/dev/null # a first call outside the count
callgrind_control -i on "$redis" >/dev/null 2>&1
for _ in $(seq "$calls"); do echo "EVALSHA $sha 0"; done | redis-cli -p "$port" >/dev/null
callgrind_control -i off "$redis" >/dev/null 2>&1
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$redis" || true
redis=
instructions=$(sed -n 's/^totals: //p' "$dir/callgrind.out")
echo "{\"calls\":$calls,\"instructions_per_call\":$((instructions / calls))}"
