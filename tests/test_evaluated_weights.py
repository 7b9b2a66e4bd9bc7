"""Evaluation uses what the checkpoint trained: a stage-2 checkpoint's adapter weights unused by a
model without alignment, or an adapter the checkpoint lacks, stop ``train_net.py --eval-only``
with the keys and the config that accepts them; matching weights and an explicit acceptance
run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uniovseg.checkpoint import UniOVSegCheckpointer, WeightMismatchError
from uniovseg.config import load_config
from uniovseg.engine import train_cli
from uniovseg.model_zoo import get_config_file

TINY1 = "tiny/stage1_tiny.yaml"
TINY2 = "tiny/stage2_tiny.yaml"
TEST_SET = "ade20k_150_sem_seg_val"  # registered; never read (Trainer.test is replaced)
REPO = Path(__file__).resolve().parents[1]


def _build(config: str, *opts: str):
    from uniovseg.engine.trainer import Trainer

    torch.manual_seed(0)
    return Trainer.build_model(load_config(get_config_file(config), list(opts))).eval()


@pytest.fixture(scope="module")
def models():
    """The tiny stage-1 model (no adapter) and stage-2 model (adapter), built once."""
    return {TINY1: _build(TINY1), TINY2: _build(TINY2)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, models):
    """Their checkpoints, saved as training saves them."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name, config in (("stage1", TINY1), ("stage2", TINY2)):
        UniOVSegCheckpointer(models[config], save_dir=str(folder / name)).save("model_final")
        paths[name] = folder / name / "model_final.pth"
    return paths


@pytest.fixture
def load(models):
    def load(config: str, weights: Path):
        checkpointer = UniOVSegCheckpointer(models[config])
        checkpointer.load(str(weights))
        return models[config], checkpointer

    return load


# ----------------------------------------------------------------- the checkpointer
def test_matching_weights_pass(checkpoints, load):
    for config, name in ((TINY1, "stage1"), (TINY2, "stage2")):
        _, checkpointer = load(config, checkpoints[name])
        checkpointer.check_loaded_weights()  # nothing unused, nothing missing


def test_unused_adapter_weights_are_refused(checkpoints, load):
    _, checkpointer = load(TINY1, checkpoints["stage2"])  # alignment off: no adapter built
    assert any(k.startswith("feature_adapter.") for k in checkpointer.incompatible_keys[1])
    with pytest.raises(WeightMismatchError) as info:
        checkpointer.check_loaded_weights()
    message = str(info.value)
    assert "unused" in message and "feature_adapter." in message
    assert "MODEL.UNIOVSEG.ALIGNMENT.ENABLED False" in message
    assert "ALLOWED_WEIGHT_MISMATCH" in message and "benchmarks_baseline.yaml" in message
    assert "missing" not in message
    # Accepted explicitly, by prefix or wholesale.
    checkpointer.check_loaded_weights(allowed=["feature_adapter."])
    checkpointer.check_loaded_weights(allowed=["*"])
    with pytest.raises(WeightMismatchError):
        checkpointer.check_loaded_weights(allowed=["sem_seg_head."])


def test_missing_adapter_weights_are_refused(checkpoints, load):
    model, checkpointer = load(TINY2, checkpoints["stage1"])  # alignment on, no adapter saved
    with pytest.raises(WeightMismatchError) as info:
        checkpointer.check_loaded_weights()
    message = str(info.value)
    assert "missing from the checkpoint" in message and "feature_adapter." in message
    assert "ALIGNMENT.ENABLED True" in message and "unused" not in message
    checkpointer.check_loaded_weights(allowed=["feature_adapter."])
    # Weights the model got elsewhere (CLIP from its pretrained file) may be absent...
    state = torch.load(checkpoints["stage2"], weights_only=True)["model"]
    clip_free = {k: v for k, v in state.items() if not k.startswith("backbone.clip_model.")}
    path = checkpoints["stage2"].with_name("without_clip.pth")
    torch.save({"model": clip_free}, path)
    _, checkpointer = load(TINY2, path)
    with pytest.raises(WeightMismatchError, match="backbone.clip_model"):
        checkpointer.check_loaded_weights()
    checkpointer.check_loaded_weights(provided=["backbone.clip_model."])
    # ...but a wrong shape is never excused by them.
    reshaped = dict(state)
    key = next(k for k in state if k.startswith("feature_adapter.") and state[k].dim() == 2)
    reshaped[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    torch.save({"model": reshaped}, path)
    _, checkpointer = load(TINY2, path)
    with pytest.raises(WeightMismatchError, match="another shape") as info:
        checkpointer.check_loaded_weights(provided=["backbone.clip_model."])
    assert "missing" not in str(info.value)  # the reshaped key is reported once


def test_check_needs_a_load():
    with pytest.raises(ValueError, match="load"):
        UniOVSegCheckpointer(torch.nn.Linear(1, 1)).check_loaded_weights()


# ----------------------------------------------------------------- train_net.py --eval-only
@pytest.fixture
def evaluated(monkeypatch):
    """Replaces the evaluation itself: records the evaluated model's adapter and returns no
    metric (the checks under test run before it)."""
    from uniovseg.engine.trainer import Trainer

    seen = []

    def test(cfg, model, evaluators=None):
        seen.append(model.feature_adapter is not None)
        return {}

    monkeypatch.setattr(Trainer, "test", staticmethod(test))
    return seen


def _eval(config: str, weights: Path, output: Path, *opts: str) -> int:
    argv = ["--eval-only", "--config-file", config, "MODEL.WEIGHTS", str(weights)]
    argv += ["OUTPUT_DIR", str(output), "DATASETS.TEST", f"('{TEST_SET}',)", *opts]
    return train_cli.main(argv)


def test_eval_only_refuses_a_stage2_checkpoint_without_its_adapter(
    checkpoints, tmp_path, capsys, evaluated
):
    assert _eval(TINY1, checkpoints["stage2"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "error: The weights of" in err and "feature_adapter." in err and "unused" in err
    assert evaluated == []  # stopped before any image was evaluated

    # Explicitly the baseline: the adapter is left out on purpose.
    opts = ("MODEL.UNIOVSEG.TEST.ALLOWED_WEIGHT_MISMATCH", "['feature_adapter.']")
    assert _eval(TINY1, checkpoints["stage2"], tmp_path, *opts) == 0
    # The stage-2 model evaluates its own checkpoint with the adapter.
    assert _eval(TINY2, checkpoints["stage2"], tmp_path) == 0
    assert evaluated == [False, True]


def test_eval_only_refuses_a_stage1_checkpoint_for_the_stage2_model(
    checkpoints, tmp_path, capsys, evaluated
):
    assert _eval(TINY2, checkpoints["stage1"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "missing from the checkpoint" in err and "feature_adapter." in err
    assert evaluated == []


# ----------------------------------------------------------------- the benchmark configs
@pytest.mark.parametrize(
    "config,adapter,allowed",
    [
        ("eval/benchmarks.yaml", True, []),
        ("eval/cityscapes.yaml", True, []),
        ("eval/benchmarks_baseline.yaml", False, ["feature_adapter."]),
        ("eval/cityscapes_baseline.yaml", False, ["feature_adapter."]),
    ],
)
def test_benchmark_configs_say_which_model_they_evaluate(config, adapter, allowed):
    cfg = load_config(get_config_file(config))
    assert cfg.MODEL.UNIOVSEG.ALIGNMENT.ENABLED is adapter
    assert list(cfg.MODEL.UNIOVSEG.TEST.ALLOWED_WEIGHT_MISMATCH) == allowed
    assert cfg.DATASETS.TRAIN == () and cfg.DATASETS.TEST
    assert cfg.OUTPUT_DIR.startswith("./output/eval")  # never a training run's folder
    # The baseline evaluates the same benchmarks as the model.
    if not adapter:
        main = load_config(get_config_file(config.replace("_baseline", "")))
        assert cfg.DATASETS.TEST == main.DATASETS.TEST
        assert cfg.MODEL.UNIOVSEG.TEST.RESIZE_MODE == main.MODEL.UNIOVSEG.TEST.RESIZE_MODE
        assert cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE == main.MODEL.UNIOVSEG.TEST.INPUT_SIZE


def test_readme_evaluates_stage2_weights_and_names_the_baseline():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "configs/eval/benchmarks.yaml --eval-only" in readme
    assert "output/stage2/model_final.pth" in readme
    assert "configs/eval/benchmarks_baseline.yaml --eval-only" in readme
