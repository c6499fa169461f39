#!/usr/bin/env bash
# CI for clients/typescript: install from the lockfile (which builds: protos copied and types
# generated from proto/, then tsc), the strict type check of sources, tests and examples, then
# the test suite, which runs against a real jobd and redis-server (JOBD_BIN, else
# target/debug/jobd, built when missing) and runs the example worker and submitter; then the
# benchmark at a small size (figures printed, not asserted).
# Everything it writes is ignored by git (node_modules, dist, build, proto, src/generated);
# it fails if it changed what git sees.
set -euo pipefail
cd "$(dirname "$0")"
before=$(git status --porcelain --untracked-files=all -- . 2>/dev/null || true)

npm ci --no-audit --no-fund
npm run check
npm test
# The benchmark at a small size, so it cannot rot; its figures are printed, not asserted.
node build/bench/lifecycle.js --small

after=$(git status --porcelain --untracked-files=all -- . 2>/dev/null || true)
if [ "$before" != "$after" ]; then
  echo "clients/typescript/ci.sh changed the checkout:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
