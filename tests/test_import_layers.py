"""Imports run one way (the layers contract of pyproject.toml [tool.importlinter]): modeling
never imports data loading, evaluation, the engine or the user APIs of inference, and so on up.
``lint-imports`` checks it with the suite, so CI fails on a violation instead of relying on
memory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    beside_python = Path(sys.executable).with_name("lint-imports")
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.skip("import-linter is not installed (it is pinned in requirements.lock)")
    return found


def test_layers_contract_is_kept():
    result = subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
