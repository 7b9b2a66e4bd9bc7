#!/usr/bin/env bash
# The project's main job on a fresh machine: set up the environment (idempotent), then check
# that the whole model stack builds and runs on this machine and report what it found.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/setup.sh
venv="${UNIOVSEG_VENV:-$repo_root/.venv}"
"$venv/bin/python" -m uniovseg.check_env --build-model "$@"
