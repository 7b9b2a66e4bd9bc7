#!/usr/bin/env bash
# Installs the environment if needed (scripts/setup.sh, idempotent), then runs the whole test
# suite. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k deform -x`).
# Exits non-zero on any failure, and also when no test ran (pytest's exit status 5).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/setup.sh
venv="${UNIOVSEG_VENV:-$repo_root/.venv}"
set +e
"$venv/bin/python" -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "[test] ERROR: pytest collected no tests" >&2
fi
exit $status
