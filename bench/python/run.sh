#!/usr/bin/env bash
# The jobd Python library against arq (lifecycle.py): a venv in bench/python/.venv with arq
# (requirements.txt) and the library from the checkout, then lifecycle.py with the arguments
# given (--small for CI's quick run). jobd: $JOBD_BIN, else target/release/jobd, else
# target/debug/jobd; measure a release build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
if [[ -z "${JOBD_BIN:-}" ]]; then
  if [[ -x "$repo/target/release/jobd" ]]; then export JOBD_BIN="$repo/target/release/jobd"
  else export JOBD_BIN="$repo/target/debug/jobd"; fi
fi
[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$here/requirements.txt" "$repo/clients/python"
exec "$venv/bin/python" "$here/lifecycle.py" "$@"
