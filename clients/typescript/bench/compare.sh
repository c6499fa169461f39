#!/usr/bin/env bash
# BullMQ's lifecycle (bench/bullmq) and this library's (bench/lifecycle.ts), alternated run by
# run in the same minutes (BENCHMARKS.md, "Why alternated runs"): ROUNDS rounds (default 5) of
# JOBS jobs (default 20000), 64 in flight, 16 workers x concurrency 8, each run on a fresh
# redis-server (and jobd: $JOBD_BIN, else target/release/jobd). Prints one line per round (with
# each process's CPU per job: node's own, jobd's from /proc, Redis's from INFO) and the JSON
# reports, and the machine's load before and after. Run after `npm ci` (which builds); builds the bench with the tests' tsconfig.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
jobs=${JOBS:-20000}
npx tsc -p tsconfig.test.json
(cd ../../bench/bullmq && npm ci --no-audit --no-fund --loglevel=error)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
  bullmq=$(node ../../bench/bullmq/lifecycle.mjs --runs 1 --jobs "$jobs" | tail -1)
  client=$(node build/bench/lifecycle.js --runs 1 --jobs "$jobs" | tail -1)
  echo "$bullmq" >&2
  echo "$client" >&2
  node -e '
    const [b, c] = process.argv.slice(1).map((line) => JSON.parse(line));
    const f = (x) => x.toFixed(0);
    console.log(`round: bullmq ${f(b.jobs_per_sec)} jobs/s (p50 ${b.p50_ms.toFixed(1)} ms, p99 ${b.p99_ms.toFixed(1)} ms, ` +
      `CPU us/job: node ${f(b.node_cpu_us_per_job)}, redis ${f(b.redis_cpu_us_per_job)}), ` +
      `@jobd/client ${f(c.jobs_per_sec)} jobs/s (p50 ${c.p50_ms.toFixed(1)} ms, p99 ${c.p99_ms.toFixed(1)} ms, ` +
      `CPU us/job: node ${f(c.node_cpu_us_per_job)}, jobd ${f(c.jobd_cpu_us_per_job)}, redis ${f(c.redis_cpu_us_per_job)}), ` +
      `ratio ${(c.jobs_per_sec / b.jobs_per_sec).toFixed(2)}`);
  ' "$bullmq" "$client"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
