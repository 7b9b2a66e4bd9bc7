"""A new user's first hour with the training command (train_net.py / uniovseg.engine.train_cli):
datasets registered from config keys and refused early when missing, --eval-only refused without
weights, strict eval_results.json, a fast project-specific --help and quiet logging."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.data.datasets import register_training_datasets
from uniovseg.data.datasets.sa1b import build_sa1b_index
from uniovseg.engine import train_cli

REPO = Path(__file__).resolve().parents[1]
STAGE1 = "configs/stage1/uniovseg_convnext_large_stage1.yaml"
STAGE2 = "configs/stage2/uniovseg_convnext_large_stage2.yaml"
TINY = "configs/tiny/stage1_tiny.yaml"


@pytest.fixture(autouse=True)
def _default_training_sets():
    """Tests re-register sa1b_train/captions_train from their configs: restore the defaults."""
    yield
    register_training_datasets()


@pytest.fixture
def no_launch(monkeypatch):
    """Fails the test if the command gets as far as starting the run (building a model)."""

    def launch(*args, **kwargs):
        raise AssertionError("the run was started; it should have been refused first")

    monkeypatch.setattr("detectron2.engine.launch", launch)


def _write_sa1b(root: Path, ids=(1, 2)) -> None:
    """SA-1B-style pairs: a 48 x 64 image and its JSON with one rectangle mask."""
    folder = root / "sa_000000"
    folder.mkdir(parents=True)
    height, width = 48, 64
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[8:32, 16:48] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    annotation = {
        "id": 0,
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
        "bbox": [16, 8, 32, 24],
        "area": int(mask.sum()),
    }
    for image_id in ids:
        Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(
            folder / f"sa_{image_id}.jpg"
        )
        record = {
            "image": {"image_id": image_id, "height": height, "width": width},
            "annotations": [annotation],
        }
        (folder / f"sa_{image_id}.json").write_text(json.dumps(record))


def _write_manifest(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "images" / "a.jpg")
    manifest = folder / "captions_entities.jsonl"
    manifest.write_text(
        json.dumps({"image": "images/a.jpg", "caption": "a cat on a mat", "entities": ["cat"]})
        + "\n"
    )
    return manifest


def _args(*argv: str):
    return train_cli.build_parser().parse_args(list(argv))


# ----------------------------------------------------------------- datasets
def test_missing_sa1b_root_is_refused_before_any_model(tmp_path, monkeypatch, capsys, no_launch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    argv = ["--config-file", STAGE1, "OUTPUT_DIR", str(tmp_path / "run")]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    default_root = str(tmp_path / "data" / "sa1b")  # $DETECTRON2_DATASETS/sa1b
    assert f"SA-1B root '{default_root}' does not exist" in err
    assert f"python datasets/prepare_sa1b.py --root {default_root}" in err
    assert "DATASETS.UNIOVSEG.SA1B_ROOT" in err

    # The config key wins over the environment; a root without index names the index.
    root = tmp_path / "sa1b"
    _write_sa1b(root)
    assert train_cli.main([*argv, "DATASETS.UNIOVSEG.SA1B_ROOT", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"SA-1B index '{root / 'uniovseg_sa1b_index.txt'}' not found" in err
    assert f"prepare_sa1b.py --root {root}" in err


def test_missing_caption_manifest_names_the_command_that_writes_it(
    tmp_path, monkeypatch, capsys, no_launch
):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    assert train_cli.main(["--config-file", STAGE2, "OUTPUT_DIR", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    manifest = tmp_path / "data" / "captions" / "captions_entities.jsonl"
    assert f"caption manifest '{manifest}' does not exist" in err
    assert f"tools/extract_entities.py --manifest {manifest.parent / 'captions.jsonl'}" in err
    assert f"--output {manifest}" in err


def test_unregistered_dataset_is_refused_with_the_known_names(tmp_path, capsys, no_launch):
    argv = ["--config-file", TINY, "OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('nope',)"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "dataset 'nope' in DATASETS.TRAIN is not registered" in err
    assert "sa1b_train" in err and "captions_train" in err


def test_training_sets_register_from_config_keys(tmp_path):
    root = tmp_path / "my_sa1b"
    _write_sa1b(root, ids=(1, 2, 3, 4))
    index = build_sa1b_index(str(root), str(tmp_path / "index.txt"))
    manifest = _write_manifest(tmp_path / "caps")
    keys = [
        "DATASETS.UNIOVSEG.SA1B_ROOT", str(root),
        "DATASETS.UNIOVSEG.SA1B_INDEX_FILE", index,
        "DATASETS.UNIOVSEG.SA1B_FRACTION", "0.5",
        "DATASETS.UNIOVSEG.CAPTION_MANIFEST", str(manifest),
    ]  # fmt: skip
    for config in (STAGE1, STAGE2):
        args = _args("--config-file", config, "OUTPUT_DIR", str(tmp_path / "run"), *keys)
        cfg = train_cli.build_config(args)
        train_cli.check_run(cfg, args)  # no error: both datasets exist

    sa1b = DatasetCatalog.get("sa1b_train")
    assert len(sa1b) == 2  # SA1B_FRACTION 0.5 of the 4 indexed images
    assert all(d["file_name"].startswith(str(root)) for d in sa1b)
    assert MetadataCatalog.get("sa1b_train").index_file == index
    (caption,) = DatasetCatalog.get("captions_train")
    assert caption["caption"] == "a cat on a mat" and caption["entities"] == ["cat"]
    assert caption["file_name"] == str(manifest.parent / "images" / "a.jpg")


def test_resolved_dataset_paths_are_in_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    cfg = train_cli.build_config(_args("--config-file", STAGE2))
    assert cfg.DATASETS.UNIOVSEG.SA1B_ROOT == str(tmp_path / "sa1b")
    assert cfg.DATASETS.UNIOVSEG.SA1B_INDEX_FILE == str(
        tmp_path / "sa1b" / "uniovseg_sa1b_index.txt"
    )
    assert cfg.DATASETS.UNIOVSEG.CAPTION_MANIFEST == str(
        tmp_path / "captions" / "captions_entities.jsonl"
    )


def test_flags_after_the_overrides_are_refused(tmp_path, capsys, no_launch):
    assert train_cli.main(["--config-file", TINY, "MODEL.WEIGHTS", "m.pth", "--eval-only"]) == 2
    assert "put every --flag before the KEY VALUE pairs" in capsys.readouterr().err


# ----------------------------------------------------------------- evaluation
def test_eval_only_without_weights_is_refused(tmp_path, capsys, no_launch):
    argv = ["--eval-only", "--config-file", TINY, "OUTPUT_DIR", str(tmp_path)]
    argv += ["DATASETS.TEST", "('ade20k_150_sem_seg_val',)"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "randomly initialised model" in err
    assert "MODEL.WEIGHTS" in err and "--allow-random-weights" in err

    # --resume counts as weights only when OUTPUT_DIR holds a checkpoint.
    assert train_cli.main(["--resume", *argv]) == 2
    (tmp_path / "model_final.pth").write_bytes(b"not read by the check")
    args = _args("--resume", *argv)
    train_cli.check_run(train_cli.build_config(args), args)
    args = _args("--allow-random-weights", *argv)
    train_cli.check_run(train_cli.build_config(args), args)


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory):
    from uniovseg.data.datasets import register_synthetic_world
    from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world

    world = tmp_path_factory.mktemp("first_hour_world")
    generate_synthetic_world(
        str(world),
        world=load_world(None),
        counts=SplitCounts(sa1b=0, captions=0, eval=2, pretrain=0),
        image_size=64,
        progress=False,
    )
    register_synthetic_world(str(world), prefix="first_hour")
    return world


def test_eval_with_allowed_random_weights_keeps_outputs_and_writes_strict_json(
    tmp_path, eval_world
):
    output = tmp_path / "run"
    datasets = ("first_hour_sem_seg_val", "first_hour_panoptic_val")
    argv = ["--eval-only", "--allow-random-weights", "--config-file", TINY]
    argv += ["OUTPUT_DIR", str(output), "DATASETS.TEST", repr(datasets)]
    argv += ["MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "4"]
    assert train_cli.main(argv) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in eval_results.json")

    results = json.loads((output / "eval_results.json").read_text(), parse_constant=refuse)
    assert set(results) == set(datasets)
    assert "mIoU" in results["first_hour_sem_seg_val"]["sem_seg"]
    assert "PQ" in results["first_hour_panoptic_val"]["panoptic_seg"]
    # Evaluator files are kept per dataset instead of in a deleted temporary folder.
    assert (output / "inference" / "first_hour_sem_seg_val" / "sem_seg_evaluation.pth").is_file()
    assert (output / "inference" / "first_hour_panoptic_val" / "predictions.json").is_file()


def test_eval_results_json_writes_nan_and_inf_as_null(tmp_path):
    results = {
        "d": {"sem_seg": {"mIoU": math.nan, "IoU-x": math.inf, "f": np.float32(1.5), "n": 3}}
    }
    path = train_cli.write_eval_results(results, str(tmp_path / "eval_results.json"))
    text = Path(path).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"d": {"sem_seg": {"mIoU": None, "IoU-x": None, "f": 1.5, "n": 3}}}
    assert os.listdir(tmp_path) == ["eval_results.json"]  # no temporary file left


# ----------------------------------------------------------------- --help and logging
def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_help_describes_the_project_and_imports_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from uniovseg.engine.train_cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'detectron2', 'open_clip') if m in sys.modules]\n"
        "print('HEAVY:', heavy)\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout

    # The script itself, from another working directory.
    script = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr
    for text in (
        "configs/stage1/uniovseg_convnext_large_stage1.yaml",
        "configs/stage2/uniovseg_convnext_large_stage2.yaml",
        "configs/eval/benchmarks.yaml",
        "configs/tiny/",
        "configs/synthetic/",
        "DATASETS.UNIOVSEG.SA1B_ROOT",
        "DATASETS.UNIOVSEG.CAPTION_MANIFEST",
        "datasets/prepare_sa1b.py",
        "--allow-random-weights",
        "--num-machines",
        "--dist-url",
    ):
        assert text in script.stdout, text


def test_setup_logging_silences_open_clip_info_and_the_jit_warning(tmp_path):
    code = (
        "import logging, sys\n"
        "from uniovseg.logs import setup_logging\n"
        "verbose = len(sys.argv) > 1\n"
        "setup_logging(verbose=verbose)\n"
        "if not verbose:\n"
        "    import detectron2.modeling  # fvcore's torch.jit.script calls\n"
        "import open_clip\n"
        "from uniovseg.model_zoo import register_open_clip_configs\n"
        "register_open_clip_configs()\n"
        "open_clip.create_model('uniovseg_tiny_convnext')\n"
        "logging.getLogger('uniovseg.first_hour').info('our own INFO line')\n"
    )
    quiet = _python(code, tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "our own INFO line" in quiet.stderr
    assert "Instantiating model architecture" not in quiet.stderr
    assert "torch.jit.script" not in quiet.stderr

    # --verbose lets open_clip's lines through (what the quiet run filtered).
    verbose = subprocess.run(
        [sys.executable, "-c", code, "verbose"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "Instantiating model architecture" in verbose.stderr
