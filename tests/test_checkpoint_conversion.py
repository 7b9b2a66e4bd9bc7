"""The release's checkpoint layout: our model reproduces it, and the converter checks it."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch import nn

from uniovseg.config import add_uniovseg_config
from uniovseg.modeling import checkpoint_conversion as cc
from uniovseg.modeling.segmentation_head import SegmentationHead

REPO = Path(__file__).resolve().parents[1]
# The release's manifest of parameter names and shapes (not part of the repository).
MANIFEST = Path(
    os.environ.get(
        "UNIOVSEG_OFFICIAL_MANIFEST",
        REPO.parent / "shared" / "data" / "official_stage1" / "state_dict_shapes.json",
    )
)
needs_manifest = pytest.mark.skipif(not MANIFEST.is_file(), reason="release manifest not found")

RELEASE_SHAPES = {
    "res2": ShapeSpec(channels=192, stride=4),
    "res3": ShapeSpec(channels=384, stride=8),
    "res4": ShapeSpec(channels=768, stride=16),
    "res5": ShapeSpec(channels=1536, stride=32),
}


def release_cfg():
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    return cfg


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "convert_official_checkpoint", REPO / "tools" / "convert_official_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release_layout():
    """Our full model's names and shapes with release defaults (meta device)."""
    return cc.expected_layout(release_cfg())


def head_layout(layout):
    return {k: v for k, v in layout.items() if k.startswith("sem_seg_head.")}


def synthetic_checkpoint(layout, extra_backbone_keys: int = 3) -> dict[str, torch.Tensor]:
    """Random tensors with the release's head layout plus a few backbone tensors."""
    state = {name: torch.randn(shape) for name, shape in head_layout(layout).items()}
    backbone = [k for k in layout if k.startswith("backbone.")][:extra_backbone_keys]
    state.update({name: torch.randn(layout[name]) for name in backbone})
    return state


# ----------------------------------------------------------------- the layout itself
def test_our_layout_is_the_release_layout(release_layout):
    """All 901 names and shapes, checked through their digest (works without the manifest)."""
    assert len(release_layout) == 901
    assert cc.layout_digest(release_layout) == cc.RELEASE_LAYOUT_SHA256
    assert cc.layout_digest(head_layout(release_layout)) == cc.RELEASE_HEAD_LAYOUT_SHA256


@needs_manifest
def test_our_layout_matches_the_manifest_name_by_name(release_layout):
    manifest = cc.load_manifest(str(MANIFEST))
    report = cc.compare_layout(manifest, release_layout)
    assert report.ok, report.format()
    assert report.num_checked == len(manifest) == 901
    assert cc.layout_digest(manifest) == cc.RELEASE_LAYOUT_SHA256


def test_head_parameter_count_and_buffers():
    with torch.device("meta"):
        head = SegmentationHead(release_cfg(), RELEASE_SHAPES)
    assert sum(p.numel() for p in head.parameters()) == 21_978_565
    buffers = dict(head.named_buffers())
    assert sorted(buffers) == [
        "pixel_decoder.pe_layer.positional_encoding_gaussian_matrix",
        "predictor.pe_layer.positional_encoding_gaussian_matrix",
        "predictor.prompt_encoder.pos_emb.positional_encoding_gaussian_matrix",
    ]


def test_layout_report_lists_every_problem():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    found = {"a": (3, 2), "c": (1,), "d": (5,)}
    report = cc.compare_layout(found, expected)
    assert not report.ok
    assert report.missing == ["b"] and report.unexpected == ["d"]
    assert report.mismatched == [("a", (2, 3), (3, 2))]
    text = report.format()
    assert "b" in text and "d" in text and "a: [2, 3] vs [3, 2]" in text
    assert cc.compare_layout(found, expected, prefixes=("c",)).ok


# ----------------------------------------------------------------- reading checkpoints
def test_extract_state_dict_unwraps_and_strips_ddp_prefix():
    t = torch.zeros(1)
    assert cc.extract_state_dict({"model": {"module.x": t}, "iteration": 5}) == {"x": t}
    assert cc.extract_state_dict({"state_dict": {"y": t}}) == {"y": t}
    assert cc.extract_state_dict({"z": t}) == {"z": t}
    with pytest.raises(ValueError, match="not name -> tensor"):
        cc.extract_state_dict({"z": t, "step": 3})
    with pytest.raises(ValueError, match="non-empty state dict"):
        cc.extract_state_dict([t])


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": nn.Linear(1, 1)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        cc.load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        cc.load_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "old.pkl").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="pickle"):
        cc.load_checkpoint(str(tmp_path / "old.pkl"))


def test_load_checkpoint_reports_a_truncated_file_and_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.pth"
    torch.save({"model": {"x": torch.ones(2)}}, good)
    torn = tmp_path / "torn.pth"
    torn.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        cc.load_checkpoint(str(torn))
    assert torch.equal(cc.load_checkpoint(str(good))["x"], torch.ones(2))
    save_file({"y": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(cc.load_checkpoint(str(tmp_path / "w.safetensors"))["y"], torch.zeros(3))


# ----------------------------------------------------------------- the tool
def test_round_trip_loads_strictly_and_keeps_the_fourier_matrices(tmp_path, release_layout, capsys):
    official = synthetic_checkpoint(release_layout)
    src, dst = tmp_path / "stage1.pth", tmp_path / "converted.pth"
    torch.save({"model": official}, src)

    tool = load_tool()
    assert (
        tool.main(["--input", str(src), "--output", str(dst), "--only-prefix", "sem_seg_head."])
        == 0
    )
    assert "OK: all 358" in capsys.readouterr().out

    saved = torch.load(dst, weights_only=True)
    assert set(saved) == {"model"}
    assert set(saved["model"]) == set(head_layout(release_layout))  # backbone keys dropped

    # detectron2's checkpointer loads it into a model holding the head as `sem_seg_head`.
    model = nn.Module()
    model.sem_seg_head = SegmentationHead(release_cfg(), RELEASE_SHAPES)
    DetectionCheckpointer(model).load(str(dst))
    loaded = model.state_dict()
    assert set(loaded) == set(head_layout(release_layout))
    for name, tensor in loaded.items():
        assert torch.equal(tensor, official[name]), name
    gaussian = "sem_seg_head.predictor.prompt_encoder.pos_emb.positional_encoding_gaussian_matrix"
    assert torch.equal(loaded[gaussian], official[gaussian])
    model.sem_seg_head.load_state_dict(
        {k.removeprefix("sem_seg_head."): v for k, v in saved["model"].items()}, strict=True
    )


def test_broken_checkpoint_fails_with_a_clear_report(tmp_path, release_layout, capsys):
    official = synthetic_checkpoint(release_layout, extra_backbone_keys=0)
    missing = "sem_seg_head.predictor.level_embed.weight"
    reshaped = "sem_seg_head.predictor.iou_embed.2.layers.2.weight"
    del official[missing]
    official[reshaped] = torch.zeros(256, 256)
    official["sem_seg_head.predictor.extra_token"] = torch.zeros(3)
    src = tmp_path / "broken.pth"
    torch.save(official, src)  # unwrapped state dict

    tool = load_tool()
    rc = tool.main(
        [
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.pth"),
            "--only-prefix",
            "sem_seg_head.",
        ]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert "1 missing, 1 unexpected, 1 with a different shape" in out
    assert missing in out and "sem_seg_head.predictor.extra_token" in out
    assert f"{reshaped}: [1, 256] vs [256, 256]" in out
    assert not (tmp_path / "out.pth").exists()


def test_full_checkpoint_without_prefix_reports_the_missing_backbone(
    tmp_path, release_layout, capsys
):
    src = tmp_path / "head_only.pth"
    torch.save({"model": synthetic_checkpoint(release_layout, extra_backbone_keys=2)}, src)
    assert load_tool().main(["--input", str(src), "--check-only"]) == 1
    assert "541 missing, 0 unexpected, 0 with a different shape" in capsys.readouterr().out


@needs_manifest
def test_tool_checks_the_manifest():
    assert load_tool().main(["--manifest", str(MANIFEST)]) == 0


def test_unreadable_input_is_an_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"definitely not a zip file")
    assert load_tool().main(["--input", str(bad), "--check-only"]) == 1
    assert "weights_only" in capsys.readouterr().err
