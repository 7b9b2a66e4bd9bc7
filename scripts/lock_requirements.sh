#!/usr/bin/env bash
# Regenerates requirements.lock from requirements.in in a throw-away venv, so that the lock lists
# exactly what a fresh machine resolves (run after editing requirements.in; takes ~2 minutes).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
tmp_venv="$(mktemp -d)/venv"
"$python_bin" -m venv "$tmp_venv"
"$tmp_venv/bin/python" -m pip install -q -r requirements.in 2>&1 | grep -v "is ignored: it is neither" || true
{
  echo "# Exact versions resolved from requirements.in by scripts/lock_requirements.sh."
  echo "# Python $("$tmp_venv/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m). Do not edit by hand."
  "$tmp_venv/bin/python" -m pip freeze --all --exclude pip --exclude wheel | LC_ALL=C sort -f
} > requirements.lock
rm -rf "$(dirname "$tmp_venv")"
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
