"""Hostile files at every entry point, and checkpoints that survive a run killed while saving.

Two payloads create a marker file when they are deserialised unsafely: a pickle (raw ``.pkl``, a
raw pickle named ``.pth``, and a ``torch.save`` zip holding the object) and a YAML config with a
``!!python/object/apply`` tag (in the file itself or in its ``_BASE_``). Every entry point must
fail with a message that says what was refused, and the marker must not exist afterwards;
``test_payloads_are_live`` shows that each payload does create the marker when loaded unsafely.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from uniovseg.checkpoint import (
    CorruptCheckpointError,
    UniOVSegCheckpointer,
    UnsafeCheckpointError,
    read_checkpoint,
)
from uniovseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
TINY_CLIP = "uniovseg_tiny_convnext"
TRAIN_SET = "safe_loading_sa1b_train"


class _Payload:
    """Creates ``marker`` when unpickled by Python's unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hostile(tmp_path):
    """Hostile files in ``tmp_path/hostile``; ``marker`` is what their payload would create."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    marker = tmp_path / "PAYLOAD_RAN"
    payload = _Payload(marker)
    files = types.SimpleNamespace(marker=marker)
    files.pkl = folder / "model.pkl"
    files.pkl.write_bytes(pickle.dumps({"model": {}, "x": payload}, protocol=2))
    files.raw_pth = folder / "raw_pickle.pth"  # a plain pickle under a torch suffix
    files.raw_pth.write_bytes(pickle.dumps({"model": {}, "x": payload}, protocol=2))
    files.zip_pth = folder / "model_0000009.pth"  # what torch.save writes
    torch.save({"model": {"w": torch.zeros(1)}, "x": payload}, files.zip_pth)
    tag = f"!!python/object/apply:os.makedirs [{str(marker)!r}]"
    files.yaml = folder / "config.yaml"
    files.yaml.write_text(f"_BASE_: {TINY_CONFIG!r}\nMODEL:\n  WEIGHTS: {tag}\n")
    files.base_yaml = folder / "evil_base.yaml"
    files.base_yaml.write_text(f"MODEL:\n  WEIGHTS: {tag}\n")
    files.child_yaml = folder / "child.yaml"
    files.child_yaml.write_text("_BASE_: evil_base.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    yield files
    assert not marker.exists(), "a hostile payload ran"


def test_payloads_are_live(hostile):
    """The payloads do run when deserialised unsafely (so the other tests can fail)."""
    for load in (
        lambda: pickle.loads(hostile.pkl.read_bytes()),
        lambda: pickle.loads(hostile.raw_pth.read_bytes()),
        lambda: torch.load(hostile.zip_pth, weights_only=False),
        lambda: yaml.unsafe_load(hostile.yaml.read_text()),
        lambda: yaml.unsafe_load(hostile.base_yaml.read_text()),
    ):
        load()
        assert hostile.marker.exists()
        if hostile.marker.is_dir():  # the YAML payload makes a folder, the pickle one a file
            hostile.marker.rmdir()
        else:
            hostile.marker.unlink()


# ----------------------------------------------------------------- configs
def test_load_config_refuses_python_tags_in_the_file_and_its_bases(hostile):
    with pytest.raises(ValueError, match="config.yaml.*refused") as error:
        load_config(str(hostile.yaml))
    assert "python/object/apply" in str(error.value)
    with pytest.raises(ValueError, match="child.yaml") as error:
        load_config(str(hostile.child_yaml))
    assert "evil_base.yaml" in str(error.value)  # the YAML error's mark names the base


def test_load_config_reads_plain_configs_and_reports_bad_arguments(tmp_path):
    cfg = load_config(TINY_CONFIG, ["SOLVER.MAX_ITER", "7"])
    assert cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME == TINY_CLIP  # from the file
    assert cfg.MODEL.META_ARCHITECTURE == "UniOVSeg"  # from _BASE_
    assert cfg.SOLVER.MAX_ITER == 7
    assert load_config().MODEL.UNIOVSEG.CLIP.MODEL_NAME == "convnext_large_d_320"
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_config(TINY_CONFIG, ["SOLVER.MAX_ITER"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


# ----------------------------------------------------------------- the checkpointer
@pytest.mark.parametrize("kind", ["pkl", "raw_pth", "zip_pth"])
def test_checkpointer_refuses_pickled_objects(hostile, kind, monkeypatch):
    # fvcore's torch.load has no weights_only: this variable would make it unpickle anything.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = str(getattr(hostile, kind))
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load") as error:
        UniOVSegCheckpointer(nn.Linear(1, 1)).load(path)
    assert isinstance(error.value, ValueError)
    if kind == "pkl":
        assert ".safetensors" in str(error.value) and "OUT.pth" in str(error.value)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)


def test_checkpointer_reads_pth_and_safetensors_and_reports_missing_files(tmp_path):
    from safetensors.torch import save_file

    source = nn.Linear(3, 2)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pth")
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    for name in ("model.pth", "model.safetensors"):
        target = nn.Linear(3, 2)
        UniOVSegCheckpointer(target).load(str(tmp_path / name))
        assert torch.equal(target.weight, source.weight), name
    checkpointer = UniOVSegCheckpointer(nn.Linear(3, 2))
    with pytest.raises(FileNotFoundError, match="missing.pth.*MODEL.WEIGHTS"):
        checkpointer.load(str(tmp_path / "missing.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"\0" * 64)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        checkpointer.load(str(tmp_path / "garbage.pth"))
    checkpointer.load(str(tmp_path / "model.pth"))  # a failed load leaves it usable


# ----------------------------------------------------------------- saving and resuming
class _Progress:
    """A checkpointable with one number, standing in for the trainer's iteration."""

    def __init__(self, iteration: int = -1):
        self.iteration = iteration

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def _save_run(folder: Path, iterations: list[int]) -> None:
    """Checkpoints model_<i>.pth whose weights and progress are ``i``; the last is tagged."""
    model, progress = nn.Linear(2, 2), _Progress()
    checkpointer = UniOVSegCheckpointer(model, str(folder), progress=progress)
    for i in iterations:
        nn.init.constant_(model.weight, float(i))
        progress.iteration = i
        checkpointer.save(f"model_{i:07d}")


def _resume(folder: Path, init_weights: str = ""):
    model, progress = nn.Linear(2, 2), _Progress()
    checkpointer = UniOVSegCheckpointer(model, str(folder), progress=progress)
    checkpointer.resume_or_load(init_weights, resume=True)
    return checkpointer, float(model.weight.detach()[0, 0]), progress.iteration


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def checkpoint_warnings():
    """Warnings of uniovseg.checkpoint (train_net's setup_logger stops their propagation)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("uniovseg.checkpoint")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save_run(tmp_path, [1])
    before = sorted(os.listdir(tmp_path))
    real_save = torch.save

    def killed_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a killed run raises in the middle of torch.save

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _save_run(tmp_path, [1])  # overwrite the same file
    with pytest.raises(KeyboardInterrupt):
        _save_run(tmp_path, [2])  # a new file
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == before  # no partial or temporary file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    checkpointer, weight, iteration = _resume(tmp_path)
    assert (weight, iteration) == (1.0, 1)
    assert checkpointer.resumed_from.endswith("model_0000001.pth")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no process has this pid any more
    return child.pid


@pytest.mark.parametrize("start", ["resume", "save"])
def test_stale_temporaries_of_killed_saves_are_removed(tmp_path, start):
    _save_run(tmp_path, [1])
    dead, live = _dead_pid(), os.getppid()
    stale = [f".model_0000005.pth.{dead}.tmp", f".last_checkpoint.{os.getpid()}.tmp"]
    kept = [
        f".model_0000006.pth.{live}.tmp",  # its writer still runs
        ".model_0000005.pth.x.tmp",  # not the checkpointer's pattern
        f"model_0000005.pth.{dead}.tmp",
        f".notes.txt.{dead}.tmp",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"PK\x03\x04 half a checkpoint")

    other_rank = UniOVSegCheckpointer(nn.Linear(2, 2), str(tmp_path), save_to_disk=False)
    other_rank.resume_or_load("", resume=True)
    assert all((tmp_path / name).exists() for name in stale)  # only the saving process cleans

    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("uniovseg.checkpoint")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        if start == "resume":
            assert _resume(tmp_path)[1:] == (1.0, 1)
        else:
            _save_run(tmp_path, [2])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not any((tmp_path / name).exists() for name in stale)
    assert all((tmp_path / name).exists() for name in kept)
    (message,) = [r.getMessage() for r in records if "temporary file" in r.getMessage()]
    assert all(name in message for name in stale)


def test_resume_falls_back_from_a_torn_checkpoint(tmp_path, checkpoint_warnings):
    _save_run(tmp_path, [1, 3, 5])
    _tear(tmp_path / "model_0000005.pth")  # the tagged one
    (tmp_path / "model_0000003.pth").write_bytes(b"")  # killed before any byte was written
    checkpointer, weight, iteration = _resume(tmp_path)
    assert (weight, iteration) == (1.0, 1)
    assert checkpointer.resumed_from.endswith("model_0000001.pth")
    assert checkpointer.has_checkpoint()
    messages = [r.getMessage() for r in checkpoint_warnings]
    assert any("model_0000005.pth" in m and "truncated or corrupt" in m for m in messages)
    assert any("model_0000003.pth" in m for m in messages)


@pytest.mark.parametrize("tag", ["empty", "missing_target", "no_file"])
def test_resume_without_a_usable_last_checkpoint_takes_the_newest(tmp_path, tag):
    _save_run(tmp_path, [2, 10, 4])  # tags model_0000004.pth: newest by iteration is 10
    last = tmp_path / "last_checkpoint"
    if tag == "empty":
        last.write_text("")
    elif tag == "missing_target":
        last.write_text("model_0000099.pth")
    else:
        last.unlink()
    checkpointer, weight, iteration = _resume(tmp_path)
    assert (weight, iteration) == (10.0, 10)
    # model_final.pth counts as the newest of all.
    _save_run(tmp_path, [7])
    os.replace(tmp_path / "model_0000007.pth", tmp_path / "model_final.pth")
    last.write_text("")
    assert _resume(tmp_path)[1:] == (7.0, 7)


def test_resume_with_only_torn_checkpoints_starts_over(tmp_path, checkpoint_warnings):
    _save_run(tmp_path, [1, 2])
    _tear(tmp_path / "model_0000001.pth")
    _tear(tmp_path / "model_0000002.pth")
    init = nn.Linear(2, 2)
    nn.init.constant_(init.weight, 42.0)
    torch.save({"model": init.state_dict()}, tmp_path / "init.pth")
    checkpointer, weight, iteration = _resume(tmp_path, str(tmp_path / "init.pth"))
    assert (weight, iteration) == (42.0, -1)  # MODEL.WEIGHTS only, no progress
    assert checkpointer.resumed_from == "" and not checkpointer.has_checkpoint()
    assert any("No intact checkpoint" in r.getMessage() for r in checkpoint_warnings)


def test_resume_stops_at_a_hostile_checkpoint(tmp_path, hostile):
    _save_run(tmp_path, [1])
    os.replace(hostile.zip_pth, tmp_path / "model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(UnsafeCheckpointError, match="model_0000009.pth"):
        _resume(tmp_path)
    (tmp_path / "last_checkpoint").write_text("hostile/model.pkl")
    with pytest.raises(UnsafeCheckpointError, match="model.pkl"):
        _resume(tmp_path)


# ----------------------------------------------------------------- API and demo
@pytest.mark.parametrize("kind", ["pkl", "zip_pth"])
def test_predictor_refuses_hostile_weights(hostile, kind):
    from uniovseg.inference import UniOVSegPredictor

    with pytest.raises(ValueError, match="Refusing to load"):
        UniOVSegPredictor.from_config(
            TINY_CONFIG, weights=str(getattr(hostile, kind)), device="cpu"
        )


def test_predictor_refuses_hostile_configs(hostile):
    from uniovseg.inference import UniOVSegPredictor

    for config in (hostile.yaml, hostile.child_yaml):
        with pytest.raises(ValueError, match="refused"):
            UniOVSegPredictor.from_config(str(config), device="cpu")


def test_demo_refuses_hostile_configs_and_weights(hostile, tmp_path, capsys):
    demo = _load_demo_module()
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), (200, 100, 50)).save(image)
    common = ["--input", str(image), "--output", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", str(hostile.yaml), *common])
    assert exit_info.value.code == 2
    assert "refused" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        demo.main(
            ["--config-file", TINY_CONFIG, *common, "--opts", "MODEL.WEIGHTS", str(hostile.pkl)]
        )
    assert exit_info.value.code == 2
    assert "Refusing to load" in capsys.readouterr().err


def _load_demo_module():
    return _load_module("uniovseg_demo_safe_loading", ROOT / "demo" / "demo.py")


# ----------------------------------------------------------------- train_net
@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    """A 2-image synthetic SA-1B set registered as TRAIN_SET."""
    from uniovseg.data.datasets import register_synthetic_world
    from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world

    world = tmp_path_factory.mktemp("world")
    generate_synthetic_world(
        str(world),
        world=load_world(None),
        counts=SplitCounts(sa1b=2, captions=0, eval=0, pretrain=0),
        image_size=64,
        progress=False,
    )
    register_synthetic_world(str(world), prefix="safe_loading")
    return TRAIN_SET


def _train_net_args(output: Path, *flags: str, opts: tuple[str, ...] = (), config=TINY_CONFIG):
    from uniovseg.engine.train_cli import build_parser

    argv = [*flags, "--config-file", str(config), "OUTPUT_DIR", str(output)]
    argv += ["DATASETS.TRAIN", f"('{TRAIN_SET}',)", "SOLVER.IMS_PER_BATCH", "1"]
    if "--eval-only" in flags:  # a registered test set; the refusals come before it is read
        argv += ["DATASETS.TEST", "('ade20k_150_sem_seg_val',)"]
    argv += [str(opt) for opt in opts]
    return build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def train_net():
    """train_net.py's per-process steps (it wraps uniovseg.engine.train_cli)."""
    from uniovseg.engine import train_cli
    from uniovseg.engine.trainer import Trainer

    return types.SimpleNamespace(setup=train_cli.setup, main=train_cli.run, Trainer=Trainer)


def test_train_net_refuses_hostile_configs(hostile, tmp_path, train_net):
    for config in (hostile.yaml, hostile.child_yaml):
        with pytest.raises(ValueError, match="refused"):
            train_net.setup(_train_net_args(tmp_path / "run", "--eval-only", config=config))


def test_train_net_eval_only_refuses_hostile_weights(hostile, tmp_path, train_net):
    args = _train_net_args(tmp_path / "run", "--eval-only", opts=("MODEL.WEIGHTS", hostile.pkl))
    with pytest.raises(ValueError, match="Refusing to load"):
        train_net.main(args)
    # --eval-only --resume reads the checkpoint named in OUTPUT_DIR/last_checkpoint.
    (tmp_path / "run" / "last_checkpoint").write_text(str(hostile.zip_pth))
    with pytest.raises(ValueError, match="Refusing to load"):
        train_net.main(_train_net_args(tmp_path / "run", "--eval-only", "--resume"))


def test_training_refuses_hostile_weights_and_resumes_past_torn_checkpoints(
    hostile, tmp_path, train_set, train_net
):
    output = tmp_path / "run"
    periodic = ("SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1")
    with pytest.raises(ValueError, match="Refusing to load"):
        train_net.main(_train_net_args(output, opts=("MODEL.WEIGHTS", hostile.pkl, *periodic)))

    train_net.main(_train_net_args(output, opts=periodic))
    names = {n for n in os.listdir(output) if n.startswith(("model_", "."))}
    assert names == {"model_0000000.pth", "model_0000001.pth", "model_final.pth"}
    assert (output / "last_checkpoint").read_text() == "model_final.pth"

    def resumed_trainer():
        trainer = train_net.Trainer(train_net.setup(_train_net_args(output, "--resume")))
        trainer.resume_or_load(resume=True)
        return trainer

    _tear(output / "model_final.pth")
    (output / "model_0000001.pth").write_bytes(b"")
    assert resumed_trainer().start_iter == 1  # model_0000000.pth: iteration 0 was done
    _tear(output / "model_0000000.pth")
    assert resumed_trainer().start_iter == 0  # nothing intact: start over

    os.replace(hostile.zip_pth, output / "model_0000009.pth")
    with pytest.raises(ValueError, match="Refusing to load"):
        resumed_trainer()


# ----------------------------------------------------------------- tools and libraries
def test_converter_refuses_hostile_checkpoints_and_configs(hostile, capsys):
    tool = _load_module("convert_safe", ROOT / "tools" / "convert_official_checkpoint.py")
    for path in (hostile.pkl, hostile.raw_pth, hostile.zip_pth):
        assert tool.main(["--input", str(path), "--check-only"]) == 1
        assert "Refusing to load" in capsys.readouterr().err
    argv = ["--input", str(hostile.zip_pth), "--check-only", "--config-file", str(hostile.yaml)]
    assert tool.main(argv) == 1
    assert "refused" in capsys.readouterr().err


def test_promptable_baselines_refuses_hostile_configs(hostile, capsys):
    tool = _load_module("promptable_baselines_safe", ROOT / "tools" / "promptable_baselines.py")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--dataset", "synthetic_promptable_val", "--config-file", str(hostile.yaml)])
    assert exit_info.value.code == 2
    assert "refused" in capsys.readouterr().err


def test_benchmarks_and_model_check_refuse_hostile_files(hostile):
    sys.path.insert(0, str(ROOT / "tools"))  # the suite lives beside tools/benchmark.py
    from benchmark_suite.items import _build_model, build_config
    from uniovseg.model_check import build_and_run

    with pytest.raises(ValueError, match="refused"):
        build_config(str(hostile.yaml), [], "cpu")
    with pytest.raises(ValueError, match="refused"):
        build_and_run(config_file=str(hostile.child_yaml), opts=[], image_size=64)
    cfg = build_config(TINY_CONFIG, ["MODEL.WEIGHTS", str(hostile.zip_pth)], "cpu")
    with pytest.raises(ValueError, match="Refusing to load"):
        _build_model(cfg)


@pytest.mark.parametrize("kind", ["pkl", "raw_pth", "zip_pth"])
def test_clip_weights_refuse_pickled_objects(hostile, kind, monkeypatch):
    from uniovseg.modeling.open_clip_loading import load_open_clip

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="pickled"):
        load_open_clip(TINY_CLIP, str(getattr(hostile, kind)))
