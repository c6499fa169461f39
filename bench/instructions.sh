#!/usr/bin/env bash
# Instructions per job of jobd or of Redis, counted by callgrind (this machine has no hardware
# counters for `perf stat -e instructions`): a redis-server and `jobd-bench serve`, one of them
# under callgrind, a warm-up lifecycle, then instrumentation on for the measured one only.
# --of bench counts the benchmark's own process (its clients, on jobd-client) instead: two
# lifecycles each under callgrind as a whole, of N/10 and N + N/10 jobs; the difference of their
# counts over N is the cost per job, without the process's start, connections and end.
#
#   bench/instructions.sh [--of jobd|redis|bench] [--perimeter plain|auth|tls|auth-tls]
#                         [--jobs N] [--bench BIN] [--keep DIR] [-- <lifecycle options>]
#
# --bench is the jobd-bench binary whose `serve` is measured and whose `lifecycle` drives it
# (target/release/jobd-bench by default); a binary from before the perimeter serves plain only.
# --keep DIR keeps the callgrind file there (callgrind_annotate shows where the time went).
# Prints one JSON line: what was measured, the jobs, instructions (Ir) per job.
set -euo pipefail

bench=target/release/jobd-bench
of=jobd
perimeter=plain
jobs=2000
keep=
while [ $# -gt 0 ]; do
  case "$1" in
    --of) of=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --perimeter) perimeter=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
lifecycle_options=("$@")

case "$of" in
  jobd) jobd_under=(valgrind --tool=callgrind --instr-atstart=no -q) redis_under=() ;;
  redis) redis_under=(valgrind --tool=callgrind --instr-atstart=no -q) jobd_under=() ;;
  bench) redis_under=() jobd_under=() ;;
  *) echo "--of jobd, redis or bench" >&2; exit 64 ;;
esac
dir=$(mktemp -d /tmp/jobd-instructions.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

serve_flags=()
client_flags=()
scheme=http
case "$perimeter" in
  plain) ;;
  auth | tls | auth-tls)
    # The files `jobd-bench --perimeter` gives the jobd it starts: an auth file and its token,
    # a CA and a certificate it signed for 127.0.0.1.
    "$bench" perimeter-files --perimeter "$perimeter" --dir "$dir/perimeter"
    ;;
  *) echo "unknown perimeter $perimeter" >&2; exit 64 ;;
esac
case "$perimeter" in
  auth | auth-tls)
    serve_flags+=(--auth-file "$dir/perimeter/auth.toml")
    client_flags+=(--token-file "$dir/perimeter/token")
    ;;
esac
case "$perimeter" in
  tls | auth-tls)
    serve_flags+=(--tls-cert-file "$dir/perimeter/jobd.crt" --tls-key-file "$dir/perimeter/jobd.key")
    client_flags+=(--tls-ca-file "$dir/perimeter/ca.crt")
    scheme=https
    ;;
esac

out="$dir/callgrind.out"
redis_port=$(free_port)
"${redis_under[@]}" ${redis_under:+--callgrind-out-file="$out"} \
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --loglevel warning >/dev/null &
redis=$!
pids+=("$redis")
wait_for_port "$redis_port"
redis_url="redis://127.0.0.1:$redis_port"

jobd_port=$(free_port)
# Under callgrind jobd runs some 50 times slower, on a machine that may be busy: timeouts it
# measures in wall-clock time are raised, so that none ends a call or hands a job back.
RUST_LOG=warn MIMALLOC_ARENA_EAGER_COMMIT=0 JOBD_REDIS_COMMAND_TIMEOUT=120s JOBD_ACK_TIMEOUT=120s \
  "${jobd_under[@]}" \
  ${jobd_under:+--callgrind-out-file="$out"} \
  "$bench" serve --redis-url "$redis_url" --listen "127.0.0.1:$jobd_port" --pool-size 4 \
  "${serve_flags[@]}" &
jobd=$!
pids+=("$jobd")
wait_for_port "$jobd_port"
measured_pid=$jobd
[ "$of" = redis ] && measured_pid=$redis

run() {
  "${bench_under[@]}" "$bench" lifecycle --jobd "$scheme://127.0.0.1:$jobd_port" \
    --redis-url "$redis_url" "${client_flags[@]}" "${lifecycle_options[@]}" --jobs "$1" | tail -1
}
bench_under=()
if [ "$of" = bench ]; then
  bench_under=(valgrind --tool=callgrind -q --callgrind-out-file="$dir/callgrind.small")
  run $((jobs / 10)) >/dev/null # also jobd's warm-up
  bench_under=(valgrind --tool=callgrind -q --callgrind-out-file="$out")
  measured=$(run $((jobs + jobs / 10)))
else
  run $((jobs / 10)) >/dev/null # warm-up: connections up, scripts loaded, allocator grown
  callgrind_control -i on "$measured_pid" >/dev/null 2>&1
  measured=$(run "$jobs")
  callgrind_control -i off "$measured_pid" >/dev/null 2>&1
fi
kill -TERM "$jobd"
wait "$jobd" || true
kill -TERM "$redis"
wait "$redis" || true
instructions=$(sed -n 's/^totals: //p' "$out")
if [ "$of" = bench ]; then
  instructions=$((instructions - $(sed -n 's/^totals: //p' "$dir/callgrind.small")))
fi
if [ -n "$keep" ]; then
  mkdir -p "$keep"
  cp "$out" "$keep/callgrind.$of.$perimeter.$$.out"
fi
# TLS handshakes (one per client connection: 16 workers and 4 submitters by default) are a
# cost per connection, not per job: reported apart.
handshakes=0
case "$of/$perimeter" in
  jobd/tls | jobd/auth-tls)
    handshakes=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
      awk '/MidHandshake<IS> as core::future::future::Future>::poll/ && !n++ {
        gsub(",", "", $1); print $1 }')
    ;;
esac
jobs_per_sec=$(sed -n 's/.*"jobs_per_sec":\([0-9.]*\).*/\1/p' <<<"$measured")
echo "{\"of\":\"$of\",\"perimeter\":\"$perimeter\",\"jobs\":$jobs,\"instructions_per_job\":$((instructions / jobs)),\"tls_handshake_instructions\":${handshakes:-0},\"instructions_per_job_but_handshakes\":$(((instructions - ${handshakes:-0}) / jobs)),\"jobs_per_sec_under_callgrind\":${jobs_per_sec:-null}}"
