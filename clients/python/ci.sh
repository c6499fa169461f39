#!/usr/bin/env bash
# The Python client's CI: a venv in clients/python/.venv, the package installed from the checkout
# (its gRPC modules generated from proto/ by the build), then ruff, mypy and pytest. The tests
# start their own redis-server and jobd on free ports; one of them runs examples/worker.py
# against a real jobd for a few jobs and stops it with SIGTERM. Leaves the checkout as it found
# it: the venv, build/ and *.egg-info are gitignored.
#
# jobd: $JOBD_BIN if set, else <repo>/target/debug/jobd, built with cargo when missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${JOBD_PY_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
if [[ -z "${JOBD_BIN:-}" && ! -x "$repo/target/debug/jobd" ]]; then
  (cd "$repo" && cargo build --locked --bin jobd)
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$here[test]"

cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy" src examples tests
"$venv/bin/pytest" -q -p no:cacheprovider
