#!/usr/bin/env bash
# Sets up (or refreshes) the project's virtual environment: exact versions from
# requirements.lock, detectron2 from the registry (re-tagged, sha256-checked), and uniovseg itself
# in editable mode with its compiled deformable-attention op when a compiler is available.
#
# Idempotent: when nothing that affects the environment changed since the last successful run,
# it returns in about a second. Environment variables:
#   UNIOVSEG_VENV   where the venv lives (default: .venv in the repository)
#   PYTHON          the interpreter that creates it (default: python3.11, else python3)
#   FORCE_CUDA=1    also build the CUDA kernel without a visible GPU
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="${UNIOVSEG_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

"$python_bin" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || die "Python >= 3.10 is needed (found $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.11"

# Everything that changes what gets installed goes into the stamp.
stamp_inputs=(requirements.lock pyproject.toml setup.py scripts/setup.sh scripts/install_detectron2.py)
while IFS= read -r -d '' source_file; do stamp_inputs+=("$source_file"); done \
  < <(find uniovseg/csrc -type f -print0 2>/dev/null | sort -z)
stamp_value="$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1) FORCE_CUDA=${FORCE_CUDA:-0}"
stamp_file="$venv/.uniovseg-setup-stamp"

if [[ -x "$venv/bin/python" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_value" ]]; then
  say "environment at $venv is up to date"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating virtual environment at $venv ($("$python_bin" --version))"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

say "installing pinned dependencies from requirements.lock (torch is large: ~1 min from a local cache)"
pip_log="$(mktemp)"
# This machine's pip configuration lists local mirrors that warn for every package; keep the
# log readable by dropping those lines, but fail on pip's own exit status.
if ! "${pip[@]}" install -q -r requirements.lock >"$pip_log" 2>&1; then
  grep -v "is ignored: it is neither" "$pip_log" >&2 || true
  die "pip could not install requirements.lock (log above)"
fi
grep -v "is ignored: it is neither" "$pip_log" || true
rm -f "$pip_log"

say "installing detectron2 (sal-detectron2 wheel, sha256-checked and re-tagged)"
"$venv/bin/python" scripts/install_detectron2.py

say "installing uniovseg (editable) and building its deformable-attention op"
# --no-build-isolation: the op is compiled against the torch installed above.
"${pip[@]}" install -q --no-build-isolation --no-deps -e . \
  || die "pip could not install uniovseg itself (the op build never fails this step; see above)"

"$venv/bin/python" -c "import uniovseg" || die "uniovseg does not import after installation"
"$venv/bin/python" - <<'PY'
from uniovseg.layers.ms_deform_attn import compiled_backends
built = sorted(compiled_backends())
print("[setup] deformable-attention kernels compiled:", ", ".join(built) if built else
      "none (the PyTorch path will be used; see README 'The compiled op')")
PY

# An independent implementation of the op, used only by the tests as an oracle. It compiles
# against the installed torch (hence --no-build-isolation); if it cannot be built the oracle
# tests are skipped, which the test summary shows.
if ! "$venv/bin/python" -c "import torch, torch_ms_deform_attn" 2>/dev/null; then
  say "installing the test oracle torch-ms-deform-attn==0.1.1 (compiles, ~30 s)"
  "${pip[@]}" install -q --no-build-isolation --no-deps torch-ms-deform-attn==0.1.1 \
    || say "WARNING: torch-ms-deform-attn did not build; its oracle tests will be skipped"
fi
printf '%s' "$stamp_value" > "$stamp_file"
say "done: activate with 'source $venv/bin/activate'"
