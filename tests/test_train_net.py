"""train_net.py end to end on a tiny generated SA-1B folder: a two-process run over gloo on the
CPU (detectron2's launcher), then --resume continuing from the saved iteration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world

REPO = Path(__file__).resolve().parents[1]


def _train(world: Path, output: Path, max_iter: int, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "train_net.py", *extra,
        "--config-file", "configs/tiny/stage1_tiny.yaml",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    env = {**os.environ, "UNIOVSEG_SYNTHETIC_ROOT": str(world), "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _iterations(output: Path) -> list[int]:
    lines = (output / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if '"iteration"' in line]


@pytest.mark.slow
def test_two_process_gloo_training_then_resume(tmp_path):
    world = tmp_path / "world"
    generate_synthetic_world(
        str(world),
        world=load_world(None),
        counts=SplitCounts(sa1b=6, captions=0, eval=0, pretrain=0),
        image_size=128,
        progress=False,
    )
    output = tmp_path / "run"
    first = _train(world, output, 3, "--num-gpus", "2")
    assert first.returncode == 0, first.stderr[-4000:]
    assert "World size: 2" in first.stderr + first.stdout
    assert (output / "model_final.pth").is_file()
    assert (output / "last_checkpoint").read_text().strip() == "model_final.pth"

    resumed = _train(world, output, 5, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Starting training from iteration 3" in resumed.stderr + resumed.stdout
    assert max(_iterations(output)) == 4
