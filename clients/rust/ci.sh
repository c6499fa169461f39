#!/usr/bin/env bash
# CI for clients/rust (the workspace member jobd-client): clippy on its sources, tests and
# example, then its tests, which start their own redis-server and jobd ($JOBD_BIN, else
# target/debug/jobd, built when missing) and run examples/worker (built by cargo test) against
# them until SIGTERM. Formatting is checked with the workspace (`cargo fmt --all`).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
cargo clippy --locked -p jobd-client --all-targets -- -D warnings
cargo test --locked -p jobd-client
