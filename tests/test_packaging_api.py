"""Issue #14, a new user's first hour: the configs ship with the package and resolve from any
folder, a missing checkpoint is reported before any CLIP weights are read, a checkpoint holding
CLIP never triggers a download, a CLIP download that cannot happen is one clear line, and the
console commands are installed."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import uniovseg.modeling.clip_backbone as clip_backbone
from uniovseg.checkpoint import UniOVSegCheckpointer, read_checkpoint_shapes
from uniovseg.config import load_config
from uniovseg.inference import UniOVSegPredictor
from uniovseg.model_zoo import (
    available_configs,
    config_dir,
    get_config_file,
    resolve_config_file,
)
from uniovseg.modeling import open_clip_loading
from uniovseg.modeling.build import CLIP_CHECKPOINT_PREFIX, cfg_without_clip_download
from uniovseg.modeling.open_clip_loading import load_open_clip

ROOT = Path(__file__).resolve().parents[1]
TINY_NAME = "tiny/stage1_tiny.yaml"
TINY_CLIP = "uniovseg_tiny_convnext"
# A real open_clip tag of the paper's CLIP: loading it needs the hub (or its cache).
HUB_TAG = "laion2b_s29b_b131k_ft_soup"
PRETRAINED_KEY = "MODEL.UNIOVSEG.CLIP.PRETRAINED"


def _fail_loudly(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} must not be called (args {args}, {kwargs})")

    return fail


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny stage-1 model saved by the checkpointer as training does (backbone CLIP included)."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(7)
    model = UniOVSegPredictor.from_config(TINY_NAME, device="cpu").model
    UniOVSegCheckpointer(model, save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth"


# ----------------------------------------------------------------- packaged configs
def test_every_repository_config_is_packaged_and_found_by_name():
    on_disk = sorted(
        p.relative_to(ROOT / "configs").as_posix() for p in ROOT.glob("configs/**/*.yaml")
    )
    assert available_configs() == on_disk
    assert TINY_NAME in on_disk
    path = get_config_file("stage2/uniovseg_convnext_large_stage2.yaml")
    assert os.path.isabs(path) and os.path.isfile(path)
    assert (
        Path(path).read_bytes()
        == (ROOT / "configs/stage2/uniovseg_convnext_large_stage2.yaml").read_bytes()
    )
    # A path relative to the repository root (the README's) names the same packaged file.
    assert get_config_file("configs/" + TINY_NAME) == get_config_file(TINY_NAME)
    assert Path(config_dir()).is_dir()


def test_unknown_config_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.yaml") as info:
        resolve_config_file("nope.yaml")
    assert TINY_NAME in str(info.value) and "stage2/" in str(info.value)


def test_an_existing_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "stage1_tiny.yaml").write_text("MODEL:\n  DEVICE: cpu\n")
    assert resolve_config_file(TINY_NAME) == TINY_NAME
    assert resolve_config_file("configs/" + TINY_NAME) == get_config_file(TINY_NAME)


def test_packaged_configs_resolve_their_bases_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(resolve_config_file("configs/tiny/stage2_tiny.yaml"))
    assert cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME == TINY_CLIP  # from stage1_tiny.yaml, its _BASE_


def test_predictor_from_a_packaged_name_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    predictor = UniOVSegPredictor.from_config(TINY_NAME, device="cpu")
    assert predictor.cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME == TINY_CLIP
    image = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8).numpy()
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=[[20, 10]])
    assert masks.shape == (4, 48, 64) and scores.shape == (4,)


def test_check_env_builds_the_model_from_another_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "uniovseg.check_env", "--build-model"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert TINY_NAME in done.stdout and done.stdout.rstrip().endswith("OK")
    unknown = subprocess.run(
        [*command, "--config-file", "nope.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert unknown.returncode == 2 and TINY_NAME in unknown.stdout, unknown.stdout[-2000:]


# ----------------------------------------------------------------- weights before CLIP
def test_missing_weights_are_reported_before_any_clip_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_backbone, "load_open_clip", _fail_loudly("load_open_clip"))
    missing = tmp_path / "model_final.pth"
    with pytest.raises(ValueError, match="model_final.pth.*does not exist"):
        UniOVSegPredictor.from_config(
            TINY_NAME, weights=str(missing), opts=[PRETRAINED_KEY, HUB_TAG], device="cpu"
        )
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS .*model_final.pth"):
        cfg_without_clip_download(load_config(get_config_file(TINY_NAME)), str(missing))


def test_a_checkpoint_holding_clip_is_built_without_the_hub(tiny_checkpoint, monkeypatch):
    from open_clip import pretrained as open_clip_pretrained

    asked = []
    real_load = clip_backbone.load_open_clip

    def recording_load(model_name, pretrained="", **kwargs):
        asked.append(pretrained)
        return real_load(model_name, pretrained, **kwargs)

    monkeypatch.setattr(clip_backbone, "load_open_clip", recording_load)
    monkeypatch.setattr(open_clip_pretrained, "download_pretrained", _fail_loudly("download"))
    monkeypatch.setattr(open_clip_loading, "_hub_unreachable_reason", _fail_loudly("hub probe"))
    predictor = UniOVSegPredictor.from_config(
        TINY_NAME, weights=str(tiny_checkpoint), opts=[PRETRAINED_KEY, HUB_TAG], device="cpu"
    )
    assert asked == [""]
    assert predictor.cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED == HUB_TAG  # the user's config, as given
    saved = torch.load(tiny_checkpoint, weights_only=True)["model"]
    state = predictor.model.state_dict()
    clip_keys = [k for k in state if k.startswith(CLIP_CHECKPOINT_PREFIX)]
    assert clip_keys and all(torch.equal(state[k], saved[k]) for k in clip_keys)


def test_clip_pretrained_is_kept_when_the_checkpoint_lacks_clip_weights(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    cfg = load_config(get_config_file(TINY_NAME), [PRETRAINED_KEY, "clip.safetensors"])
    cfg.freeze()
    saved = torch.load(tiny_checkpoint, weights_only=True)["model"]
    clip_keys = sorted(k for k in saved if k.startswith(CLIP_CHECKPOINT_PREFIX))

    partial = {k: v.contiguous() for k, v in saved.items() if k != clip_keys[0]}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    assert cfg_without_clip_download(cfg, str(tmp_path / "partial.safetensors")) is cfg

    decoders_only = {k: v for k, v in saved.items() if k not in clip_keys}
    torch.save({"model": decoders_only}, tmp_path / "decoders.pth")
    assert cfg_without_clip_download(cfg, str(tmp_path / "decoders.pth")) is cfg

    # DDP-prefixed keys count as the plain ones (detectron2 strips the prefix on load).
    torch.save({f"module.{k}": v for k, v in saved.items()}, tmp_path / "ddp.pth")
    adjusted = cfg_without_clip_download(cfg, str(tmp_path / "ddp.pth"))
    assert adjusted.MODEL.UNIOVSEG.CLIP.PRETRAINED == "" and adjusted.is_frozen()
    assert cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED == "clip.safetensors"  # the input is untouched

    assert cfg_without_clip_download(cfg, "") is cfg
    assert cfg_without_clip_download(cfg, "https://example.org/model.pth") is cfg


def test_checkpoint_shapes_are_read_without_the_tensors(tiny_checkpoint):
    shapes = read_checkpoint_shapes(str(tiny_checkpoint))
    saved = torch.load(tiny_checkpoint, weights_only=True)["model"]
    assert shapes == {k: tuple(v.shape) for k, v in saved.items()}


# ----------------------------------------------------------------- CLIP tags
def test_an_unreachable_hub_is_one_value_error_line(monkeypatch):
    from open_clip import pretrained as open_clip_pretrained

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(
        open_clip_loading, "_hub_unreachable_reason", lambda: "the hub cannot be reached (test)"
    )
    monkeypatch.setattr(open_clip_pretrained, "download_pretrained", _fail_loudly("download"))
    with pytest.raises(ValueError, match="local path") as info:
        load_open_clip("convnext_large_d_320", HUB_TAG, device="meta")
    message = str(info.value)
    assert "\n" not in message and HUB_TAG in message and "cannot be reached" in message


def test_a_failed_download_is_one_value_error_line(monkeypatch):
    from open_clip import pretrained as open_clip_pretrained

    def offline(*args, **kwargs):
        raise OSError("Failed to download\nTraceback-like details\nmore details")

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(open_clip_loading, "_hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(open_clip_pretrained, "download_pretrained", offline)
    with pytest.raises(ValueError, match="Failed to download") as info:
        load_open_clip("convnext_large_d_320", HUB_TAG, device="meta")
    assert "\n" not in str(info.value) and "local path" in str(info.value)
    assert info.value.__suppress_context__


def test_cached_tag_weights_are_used_without_the_network(tmp_path, monkeypatch):
    from open_clip import pretrained as open_clip_pretrained
    from safetensors.torch import save_file

    torch.manual_seed(3)
    reference = load_open_clip(TINY_CLIP).state_dict()
    save_file(reference, str(tmp_path / "open_clip_model.safetensors"))

    def cached(repo_id, filename, *args, **kwargs):
        assert repo_id == "someone/tiny-clip"
        path = tmp_path / filename
        return str(path) if path.is_file() else None

    monkeypatch.setattr(
        open_clip_pretrained, "get_pretrained_cfg", lambda *a: {"hf_hub": "someone/tiny-clip/"}
    )
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", cached)
    monkeypatch.setattr(open_clip_loading, "_hub_unreachable_reason", _fail_loudly("hub probe"))
    monkeypatch.setattr(open_clip_pretrained, "download_pretrained", _fail_loudly("download"))
    loaded = load_open_clip(TINY_CLIP, "cached_tag").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())


# ----------------------------------------------------------------- console commands
def test_console_commands_are_installed():
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    expected = {
        "uniovseg-train": "uniovseg.engine.train_cli:main",
        "uniovseg-demo": "uniovseg.inference.demo_cli:main",
        "uniovseg-check-env": "uniovseg.check_env:main",
    }
    for name, target in expected.items():
        assert name in scripts, f"{name} missing: reinstall with pip install -e . (see README)"
        assert scripts[name].value == target
        assert callable(scripts[name].load())


def test_demo_command_help_runs_from_another_folder(tmp_path):
    script = shutil.which("uniovseg-demo", path=os.path.dirname(sys.executable))
    assert script, "uniovseg-demo is not installed next to this Python"
    done = subprocess.run(
        [script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--config-file" in done.stdout and "packaged" in done.stdout


def test_demo_names_the_packaged_configs_for_an_unknown_one(tmp_path, monkeypatch, capsys):
    from uniovseg.inference.demo_cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(UniOVSegPredictor, "from_config", _fail_loudly("from_config"))
    with pytest.raises(SystemExit) as info:
        main(["--config-file", "nope.yaml", "--input", "x.jpg", "--output", "out"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and TINY_NAME in err
