"""The quickstart's shortened version: every stage runs through the real command-line tools and
writes its outputs (numbers are meaningless at these sizes), and a second run skips every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_quickstart_runs_every_stage_and_is_idempotent(tmp_path):
    output = tmp_path / "quickstart"
    command = [sys.executable, "tools/quickstart.py", "--quick", "--output", str(output)]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for relative in [
        "world/sa1b/uniovseg_sa1b_index.txt",
        "clip/synthetic_clip.pt",
        "stage1/model_final.pth",
        "stage2/model_final.pth",
        "eval_baseline/eval_results.json",
        "eval_aligned/eval_results.json",
        "eval_promptable/eval_results.json",
        "promptable_baselines.json",
        "results.md",
        "bundles/stage1/model.safetensors",
        "bundles/stage2/config.yaml",
    ]:
        assert (output / relative).is_file(), relative
    aligned = json.loads((output / "eval_aligned" / "eval_results.json").read_text())
    assert "mIoU" in aligned["synthetic_sem_seg_val"]["sem_seg"]
    assert "PQ" in aligned["synthetic_panoptic_val"]["panoptic_seg"]
    overlays = [name for name in os.listdir(output / "demo") if name.endswith("_overlay.png")]
    assert overlays
    assert "| + mask-text alignment |" in first.stdout

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already done") == 11
