#!/usr/bin/env bash
# The project's main job on a fresh machine: set up the environment (idempotent), check the
# model stack, then show the whole method learning on a synthetic world (generate data, pretrain
# a tiny CLIP, train stage 1 and stage 2, evaluate, write demo pictures; ~20 min on 2 CPU cores).
# Re-running continues where it stopped. Arguments go to tools/quickstart.py (e.g. --quick).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/setup.sh
venv="${UNIOVSEG_VENV:-$repo_root/.venv}"
"$venv/bin/python" -m uniovseg.check_env --build-model
"$venv/bin/python" tools/quickstart.py "$@"
