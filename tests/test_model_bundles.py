"""Model bundles: save -> load gives the same weights and outputs, by folder or through a hub
cache offline (no network), and hostile or broken bundles are refused with a clear error before
any of their content can run."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import pickle
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from uniovseg.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, WeightMismatchError
from uniovseg.config import load_config
from uniovseg.inference import UniOVSegPredictor, save_pretrained
from uniovseg.inference.bundle_location import resolve_bundle
from uniovseg.inference.bundle_weights import (
    read_weight_shapes,
    read_weights,
    storable_tensors,
    write_weights,
)
from uniovseg.inference.model_bundle import BUNDLE_FILES

ROOT = Path(__file__).resolve().parents[1]
TINY_STAGE1 = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
TINY_STAGE2 = str(ROOT / "configs" / "tiny" / "stage2_tiny.yaml")
TINY_CLIP = "uniovseg_tiny_convnext"
H, W = 50, 90
POINTS = np.array([[20.0, 30.0], [70.0, 10.0]])
BOX = np.array([10.0, 5.0, 60.0, 45.0])
# Decoders 64 channels wide instead of the tiny configs' 32 (the three must be equal).
WIDER = [
    "MODEL.UNIOVSEG.PIXEL_DECODER.CONV_DIM", "64",
    "MODEL.UNIOVSEG.PIXEL_DECODER.MASK_DIM", "64",
    "MODEL.UNIOVSEG.MASK_DECODER.HIDDEN_DIM", "64",
]  # fmt: skip


class _Payload:
    """Creates ``marker`` when unpickled by Python's unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[0:H, 0:W]
    picture = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1)
    picture[(yy - 25) ** 2 + (xx - 30) ** 2 < 15**2] = (200, 40, 120)
    return picture.astype(np.uint8)


@pytest.fixture(scope="module")
def stage1():
    torch.manual_seed(0)
    return UniOVSegPredictor.from_config(TINY_STAGE1, device="cpu")


@pytest.fixture(scope="module")
def reference(stage1, image):
    """The tiny stage-1 model's weights and outputs, computed once."""
    return _weights_and_outputs(stage1, image)


@pytest.fixture(scope="module")
def bundle(stage1, tmp_path_factory):
    """The tiny stage-1 model saved as a bundle (read-only for the tests: copy it to change it)."""
    return Path(save_pretrained(stage1, str(tmp_path_factory.mktemp("bundles") / "stage1")))


@pytest.fixture()
def copy_of(bundle, tmp_path):
    def copy(name: str = "copy") -> Path:
        return Path(shutil.copytree(bundle, tmp_path / name))

    return copy


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Loading must never reach torch.load or the unpickler."""

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load called torch.load / pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _outputs(predictor, image):
    predictor.set_image(image)
    points = predictor.predict(point_coords=POINTS, return_logits=True)
    box = predictor.predict(box=BOX)
    return [*points, *box]


def _weights_and_outputs(predictor, image):
    return predictor.model.state_dict(), _outputs(predictor, image)


def _assert_same_model(reference, predictor, image):
    """``predictor`` has the weights and gives the outputs of ``reference``
    (:func:`_weights_and_outputs` of the original model)."""
    state_a, outputs_a = reference
    state_b = predictor.model.state_dict()
    assert list(state_a) == list(state_b)
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name
    for x, y in zip(outputs_a, _outputs(predictor, image), strict=True):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------- round trips
def test_round_trip_gives_the_same_weights_and_outputs(
    reference, stage1, bundle, image, no_unpickling
):
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    loaded = UniOVSegPredictor.from_pretrained(str(bundle), device="cpu")
    assert loaded.model is not stage1.model
    _assert_same_model(reference, loaded, image)
    # The config travels whole; the weights come from the bundle only.
    assert loaded.cfg.MODEL.WEIGHTS == "" and loaded.cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED == ""
    assert loaded.cfg.MODEL.UNIOVSEG.MASK_DECODER.HIDDEN_DIM == 32
    assert loaded.cfg.is_frozen()


def test_bundle_files_are_self_contained_and_documented(bundle):
    config = yaml.safe_load((bundle / "config.yaml").read_text())
    assert "_BASE_" not in config
    assert (
        config["MODEL"]["WEIGHTS"] == "" and config["MODEL"]["UNIOVSEG"]["CLIP"]["PRETRAINED"] == ""
    )
    assert load_config(str(bundle / "config.yaml")).MODEL.UNIOVSEG.CLIP.MODEL_NAME == TINY_CLIP
    clip = json.loads((bundle / "open_clip_config.json").read_text())
    packaged = ROOT / "uniovseg" / "model_zoo" / "open_clip_configs" / f"{TINY_CLIP}.json"
    assert clip == {"model_name": TINY_CLIP, "model_cfg": json.loads(packaged.read_text())}
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: uniovseg\n")
    for text in (
        "stage 1",
        TINY_CLIP,
        "128 px",
        "from_pretrained",
        "## Licence",
        "`synthetic_sa1b_train`",
    ):
        assert text in card, text


def test_stage2_round_trip_keeps_the_adapter_and_the_labels(tmp_path, image):
    torch.manual_seed(1)
    stage2 = UniOVSegPredictor.from_config(TINY_STAGE2, device="cpu")
    torch.nn.init.normal_(next(stage2.model.feature_adapter.parameters()))  # not its zero init
    expected = _weights_and_outputs(stage2, image)
    folder = stage2.save_pretrained(str(tmp_path / "stage2"), training_data="captions")
    loaded = UniOVSegPredictor.from_pretrained(folder)
    _assert_same_model(expected, loaded, image)
    labelled = []
    for predictor in (stage2, loaded):
        predictor.set_vocabulary("cat; dog, puppy; sky")
        predictor.set_image(image)
        labelled.append(predictor.predict_with_labels(point_coords=POINTS))
    np.testing.assert_array_equal(labelled[0].labels, labelled[1].labels)
    np.testing.assert_array_equal(labelled[0].scores, labelled[1].scores)
    card = (Path(folder) / "README.md").read_text()
    assert "stage 2" in card and "LoRA rank 4" in card and "captions" in card


def test_saving_again_replaces_an_earlier_bundle_and_refuses_other_folders(stage1, tmp_path):
    target = tmp_path / "bundle"
    save_pretrained(stage1, str(target))
    (target / "README.md").write_text("stale")
    save_pretrained(stage1, str(target), training_data="again")
    assert "again" in (target / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no hidden leftovers
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_pretrained(stage1, str(tmp_path / "work"))
    assert (tmp_path / "work" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="cfg="):
        save_pretrained(stage1.model, str(tmp_path / "no_cfg"))


def test_a_failed_save_leaves_no_half_bundle_and_keeps_the_earlier_one(
    stage1, tmp_path, monkeypatch
):
    import uniovseg.inference.bundle_weights as bundle_weights

    target = tmp_path / "bundle"

    def disk_full(path, state_dict):
        pathlib.Path(path).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(bundle_weights, "write_weights", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(stage1, str(target))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_pretrained(stage1, str(target))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(bundle_weights, "write_weights", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(stage1, str(target), training_data="other")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_save_refuses_a_config_that_does_not_describe_the_model(stage1, tmp_path):
    wider = load_config(TINY_STAGE1, WIDER)
    with pytest.raises(WeightMismatchError, match="of another shape, the first 'sem_seg_head"):
        save_pretrained(stage1.model, str(tmp_path / "b"), cfg=wider)
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------- tied weights
def test_tied_weights_are_stored_once_and_restored(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 8))
    model[1].weight = model[0].weight  # tied
    buffer = torch.arange(12.0)
    state = {**model.state_dict(), "view.a": buffer[:6], "view.b": buffer[3:9]}  # overlapping
    tensors, aliases = storable_tensors(state)
    assert aliases == {"1.weight": "0.weight"} and "1.weight" not in tensors
    assert (
        tensors["view.a"].untyped_storage().data_ptr()
        != tensors["view.b"].untyped_storage().data_ptr()
    )
    path = str(tmp_path / "tied.safetensors")
    write_weights(path, state)
    shapes, read_aliases = read_weight_shapes(path)
    assert read_aliases == aliases and shapes["1.weight"] == (4, 4)
    loaded = read_weights(path, read_aliases)
    assert loaded["1.weight"] is loaded["0.weight"]
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 8))
    fresh[1].weight = fresh[0].weight
    fresh.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("view")})
    assert torch.equal(fresh[1].weight, model[0].weight)


# ----------------------------------------------------------------- hub ids, offline
def _fake_hub_cache(bundle: Path, cache: Path, repo_id: str, commit: str) -> None:
    """The layout huggingface_hub gives a downloaded repo: blobs, a snapshot per commit whose
    files link to the blobs, and refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, source in enumerate(sorted(bundle.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        shutil.copyfile(source, blob)
        (snapshot / source.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_cache_offline(
    reference, bundle, image, tmp_path, monkeypatch, no_network, no_unpickling
):
    import huggingface_hub.constants

    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(bundle, cache, "uniovseg/tiny-stage1", commit)
    monkeypatch.chdir(tmp_path)  # no local folder named like the repo
    loaded = UniOVSegPredictor.from_pretrained(
        "uniovseg/tiny-stage1", cache_dir=str(cache), local_files_only=True
    )
    _assert_same_model(reference, loaded, image)
    snapshot = cache / "models--uniovseg--tiny-stage1" / "snapshots" / commit
    assert (
        Path(
            resolve_bundle(
                "uniovseg/tiny-stage1",
                BUNDLE_FILES,
                revision=commit,
                cache_dir=str(cache),
                local_files_only=True,
            )
        )
        == snapshot
    )
    # HF_HUB_OFFLINE=1 (read by huggingface_hub at import) without local_files_only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    found = resolve_bundle("uniovseg/tiny-stage1", BUNDLE_FILES, cache_dir=str(cache))
    assert Path(found) == snapshot
    with pytest.raises(FileNotFoundError, match="not in the hub cache.*HF_HUB_OFFLINE"):
        UniOVSegPredictor.from_pretrained("uniovseg/not-cached", cache_dir=str(cache))


def test_missing_folders_and_repos_are_clear_errors(bundle, tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="not in the hub cache.*local_files_only"):
        UniOVSegPredictor.from_pretrained(
            "uniovseg/absent", cache_dir=str(tmp_path), local_files_only=True
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UniOVSegPredictor.from_pretrained(str(tmp_path / "nowhere" / "bundle"))
    with pytest.raises(ValueError, match="is a file"):
        UniOVSegPredictor.from_pretrained(str(bundle / "model.safetensors"))
    with pytest.raises(ValueError, match="revision"):
        UniOVSegPredictor.from_pretrained(str(bundle), revision="main")


# ----------------------------------------------------------------- refused bundles
def test_the_payloads_are_live(tmp_path):
    """The hostile payloads below do run when deserialised unsafely (so those tests can fail)."""
    import io

    marker = tmp_path / "PAYLOAD_RAN"
    pickle.loads(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    assert marker.is_file()
    marker.unlink()
    payload = _torch_save_bytes({"w": torch.zeros(1), "x": _Payload(marker)})
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.is_file()
    marker.unlink()
    yaml.unsafe_load(f"WEIGHTS: !!python/object/apply:os.makedirs [{str(marker)!r}]")
    assert marker.is_dir()


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save"])
def test_pickled_weights_are_refused_and_never_run(copy_of, tmp_path, kind, no_unpickling):
    folder, marker = copy_of(), tmp_path / "PAYLOAD_RAN"
    weights = folder / "model.safetensors"
    if kind == "raw_pickle":
        weights.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    else:  # what torch.save writes: a zip holding the pickled payload
        weights.write_bytes(_torch_save_bytes({"w": torch.zeros(1), "x": _Payload(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load.*pickle"):
        UniOVSegPredictor.from_pretrained(str(folder))
    assert not marker.exists()


def _torch_save_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_bundle_without_safetensors_weights_is_refused(copy_of, no_unpickling):
    folder = copy_of()
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80 would be unpickled")
    with pytest.raises(FileNotFoundError, match="model.safetensors missing.*not read"):
        UniOVSegPredictor.from_pretrained(str(folder))


def test_damaged_weights_are_reported(copy_of):
    folder = copy_of()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        UniOVSegPredictor.from_pretrained(str(folder))


def test_hostile_configs_are_refused_and_never_run(copy_of, tmp_path, no_unpickling):
    marker = tmp_path / "PAYLOAD_RAN"
    folder = copy_of("tag")
    config = folder / "config.yaml"
    config.write_text(
        config.read_text().replace(
            "WEIGHTS: ''", f"WEIGHTS: !!python/object/apply:os.makedirs [{str(marker)!r}]"
        )
    )
    assert "python/object/apply" in config.read_text()
    with pytest.raises(ValueError, match="not plain YAML.*refused"):
        UniOVSegPredictor.from_pretrained(str(folder))
    folder = copy_of("base")
    evil = tmp_path / "evil_base.yaml"
    evil.write_text(f"MODEL:\n  WEIGHTS: !!python/object/apply:os.makedirs [{str(marker)!r}]\n")
    config = folder / "config.yaml"
    config.write_text(f"_BASE_: {str(evil)!r}\n" + config.read_text())
    with pytest.raises(ValueError, match="_BASE_.*refuse"):
        UniOVSegPredictor.from_pretrained(str(folder))
    assert not marker.exists()


def test_weights_and_clip_paths_in_a_bundle_config_are_never_read(
    reference, copy_of, tmp_path, image, no_unpickling, no_network
):
    marker = tmp_path / "PAYLOAD_RAN"
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=2))
    folder = copy_of()
    config = folder / "config.yaml"
    text = config.read_text()
    text = text.replace("WEIGHTS: ''", f"WEIGHTS: {str(pickled)!r}")
    text = text.replace("PRETRAINED: ''", "PRETRAINED: laion2b_s29b_b131k_ft_soup")  # a download
    config.write_text(text)
    loaded = UniOVSegPredictor.from_pretrained(str(folder))
    _assert_same_model(reference, loaded, image)
    assert loaded.cfg.MODEL.WEIGHTS == str(pickled)  # shown as written, never used
    assert not marker.exists()


def test_a_config_that_does_not_fit_the_weights_names_the_first_key(copy_of):
    folder = copy_of()
    config = folder / "config.yaml"
    text = config.read_text()
    for key in ("CONV_DIM", "MASK_DIM", "HIDDEN_DIM"):
        assert f"{key}: 32" in text
        text = text.replace(f"{key}: 32", f"{key}: 64")
    config.write_text(text)
    with pytest.raises(WeightMismatchError) as error:
        UniOVSegPredictor.from_pretrained(str(folder))
    message = str(error.value)
    assert "do not fit the model its config.yaml builds" in message
    # The first weight of the model (state-dict order) whose shape differs, with both shapes.
    first = "sem_seg_head.pixel_decoder.input_proj.0.0.weight"
    assert f"of another shape, the first {first!r}: (32, " in message
    assert "in the weights, (64, " in message
    with pytest.raises(WeightMismatchError, match="of another shape"):
        UniOVSegPredictor.from_pretrained(str(copy_of("opts")), opts=WIDER)


def test_open_clip_configs_that_do_not_fit_or_would_download_are_refused(copy_of):
    folder = copy_of("fetch")
    path = folder / "open_clip_config.json"
    data = json.loads(path.read_text())
    data["model_cfg"]["vision_cfg"]["timm_model_pretrained"] = True
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fetch weights.*timm_model_pretrained"):
        UniOVSegPredictor.from_pretrained(str(folder))
    folder = copy_of("other")
    path = folder / "open_clip_config.json"
    data = json.loads(path.read_text())
    data["model_cfg"]["text_cfg"]["layers"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="differs from the one open_clip knows.*text_cfg"):
        UniOVSegPredictor.from_pretrained(str(folder))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        UniOVSegPredictor.from_pretrained(str(folder))


def test_a_clip_unknown_to_open_clip_rebuilds_from_the_bundle(reference, copy_of, image):
    import open_clip

    name = f"bundle_test_clip_{uuid.uuid4().hex[:8]}"
    assert open_clip.get_model_config(name) is None
    folder = copy_of()
    clip_path = folder / "open_clip_config.json"
    clip_path.write_text(clip_path.read_text().replace(TINY_CLIP, name))
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace(TINY_CLIP, name))
    loaded = UniOVSegPredictor.from_pretrained(str(folder))
    assert loaded.cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME == name
    assert open_clip.get_model_config(name) == json.loads(clip_path.read_text())["model_cfg"]
    _assert_same_model(reference, loaded, image)


# ----------------------------------------------------------------- tools
def test_converter_writes_a_bundle(reference, stage1, tmp_path, image, capsys):
    release = tmp_path / "stage1.pth"
    torch.save({"model": stage1.model.state_dict()}, release)
    tool = _load_tool("convert_official_checkpoint")
    bundle = tmp_path / "release_bundle"
    rc = tool.main(["--input", str(release), "--bundle", str(bundle), "--config-file", TINY_STAGE1])
    assert rc == 0, capsys.readouterr().err
    assert "Saved the model bundle" in capsys.readouterr().out
    card = (bundle / "README.md").read_text()
    assert "SA-1B" in card and "stage1.pth" in card
    _assert_same_model(reference, UniOVSegPredictor.from_pretrained(str(bundle)), image)
    with pytest.raises(SystemExit):
        tool.parse_args(["--input", "x.pth", "--bundle", "b", "--only-prefix", "sem_seg_head."])


def test_export_tool_writes_a_checkpoint_as_a_bundle(reference, stage1, tmp_path, image, capsys):
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": stage1.model.state_dict(), "iteration": 19}, checkpoint)
    tool = _load_tool("export_bundle")
    bundle = tmp_path / "bundle"
    args = ["--config-file", TINY_STAGE1, "--weights", str(checkpoint), "--output", str(bundle)]
    assert tool.main([*args, "--training-data", "shapes"]) == 0, capsys.readouterr().err
    assert "## Training data\n\nshapes\n" in (bundle / "README.md").read_text()
    _assert_same_model(reference, UniOVSegPredictor.from_pretrained(str(bundle)), image)
    # A checkpoint that lacks a trained weight would give a bundle with a random one: refused.
    state = stage1.model.state_dict()
    dropped = next(k for k in state if k.startswith("sem_seg_head."))
    del state[dropped]
    torch.save({"model": state}, checkpoint)
    assert tool.main([*args[:-1], str(tmp_path / "partial")]) == 1
    assert f"missing from the weights, the first {dropped!r}" in capsys.readouterr().err
    assert not (tmp_path / "partial").exists()
