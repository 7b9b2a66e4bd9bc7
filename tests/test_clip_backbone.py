"""Contract tests of the frozen CLIP ConvNeXt backbone (tiny random-weight open_clip model)."""

import json
import pathlib

import pytest
import torch

from uniovseg.modeling.clip_backbone import (
    CLIPConvNeXtBackbone,
    build_clip_backbone,
    load_open_clip,
)
from uniovseg.modeling.clip_text_encoding import can_skip_padding, pooled_token_positions
from uniovseg.modeling.open_clip_loading import read_clip_state_dict

TINY = "uniovseg_tiny_convnext"
SHAPES_FILE = (
    pathlib.Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "official_stage1"
    / "state_dict_shapes.json"
)


def _tiny_backbone(seed: int = 0, **kwargs) -> CLIPConvNeXtBackbone:
    torch.manual_seed(seed)
    return CLIPConvNeXtBackbone(model_name=TINY, pretrained="", **kwargs)


@pytest.fixture(scope="module")
def backbone() -> CLIPConvNeXtBackbone:
    return _tiny_backbone()


def _images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


# ---------------------------------------------------------------------------- features
@pytest.mark.parametrize("height,width", [(64, 64), (64, 128)])
def test_outputs_match_output_shape(backbone, height, width):
    images = torch.randn(2, 3, height, width)
    outputs = backbone(images)
    specs = backbone.output_shape()
    assert set(outputs) == set(specs) == {"res2", "res3", "res4", "res5", "clip_vis_dense"}
    assert [specs[f"res{i}"].stride for i in range(2, 6)] == [4, 8, 16, 32]
    # convnext_atto widths, the tiny tower of the packaged config.
    assert [specs[f"res{i}"].channels for i in range(2, 6)] == [40, 80, 160, 320]
    for name, spec in specs.items():
        assert outputs[name].shape == (
            2,
            spec.channels,
            height // spec.stride,
            width // spec.stride,
        )
    assert backbone.size_divisibility == 32


def test_stage_outputs_are_the_trunk_features(backbone):
    """res5 and clip_vis_dense are what timm's forward_features computes (norm_pre output)."""
    images = _images()
    outputs = backbone(images)
    trunk = backbone.clip_model.visual.trunk
    with torch.no_grad():
        expected = trunk.forward_features(images)
        stage_maps = trunk.forward_intermediates(images, intermediates_only=True)
    torch.testing.assert_close(outputs["clip_vis_dense"], expected)
    for i, stage_map in enumerate(stage_maps):
        torch.testing.assert_close(outputs[f"res{i + 2}"], stage_map)


def test_feature_maps_are_contiguous_as_the_releases(backbone):
    """timm's ConvNeXt stages return channels-last strides; the release hands the pixel decoder
    contiguous NCHW maps (its kernels then sum in the release's order)."""
    images = _images()
    trunk = backbone.clip_model.visual.trunk
    with torch.no_grad():
        raw = trunk.stages[0](trunk.stem(images))
    # Without the fix there is something to fix: otherwise this test could not fail.
    assert not raw.is_contiguous()
    outputs = backbone(images)
    for name, features in outputs.items():
        assert features.is_contiguous(), name
    torch.testing.assert_close(outputs["res2"], raw, rtol=0, atol=0)


def test_rejects_non_rgb_images(backbone):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.zeros(1, 1, 64, 64))


# ---------------------------------------------------------------------------- region embeddings
def test_full_image_mask_equals_encode_image(backbone):
    """Eq. 5 with a mask of ones is CLIP's own global image embedding (golden test)."""
    images = _images(batch=2, size=128)
    dense = backbone(images)["clip_vis_dense"]
    masks = torch.ones(2, 3, 128, 128)
    regions = backbone.embed_regions(dense, masks)
    with torch.no_grad():
        expected = backbone.clip_model.encode_image(images, normalize=False)
    assert regions.shape == (2, 3, backbone.embed_dim)
    for n in range(3):
        torch.testing.assert_close(regions[:, n], expected, rtol=1e-4, atol=1e-5)


def test_mask_pooling_is_a_weighted_average(backbone):
    """Hand-made dense map: a mask on cells a, b with weights 1 and 3 pools (f_a + 3 f_b) / 4."""
    torch.manual_seed(3)
    channels = backbone.output_shape()["clip_vis_dense"].channels
    dense = torch.randn(1, channels, 2, 2)
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0, 1] = 1.0  # one cell
    masks[0, 1, 0, 0], masks[0, 1, 1, 1] = 0.25, 0.75  # weighted pair
    masks[0, 2] = 0.5  # uniform half-weight: the plain mean
    regions = backbone.embed_regions(dense, masks)

    pooled = torch.stack(
        [
            dense[0, :, 0, 1],
            (dense[0, :, 0, 0] + 3 * dense[0, :, 1, 1]) / 4,
            dense[0].mean(dim=(1, 2)),
        ]
    )
    visual = backbone.clip_model.visual
    head_norm = visual.trunk.head.norm
    expected = visual.head(
        torch.nn.functional.layer_norm(
            pooled, (channels,), head_norm.weight, head_norm.bias, head_norm.eps
        )
    )
    torch.testing.assert_close(regions[0], expected, rtol=1e-4, atol=1e-5)


def test_masks_are_resized_to_the_dense_map(backbone):
    """A 64x64 mask of the left half equals the 2x2 mask of the left column after resizing."""
    channels = backbone.output_shape()["clip_vis_dense"].channels
    dense = torch.randn(1, channels, 2, 2)
    full_res = torch.zeros(1, 1, 64, 64)
    full_res[..., :32] = 1.0
    low_res = torch.zeros(1, 1, 2, 2)
    low_res[..., 0] = 1.0
    torch.testing.assert_close(
        backbone.embed_regions(dense, full_res), backbone.embed_regions(dense, low_res)
    )


def test_empty_mask_is_finite(backbone):
    dense = backbone(_images())["clip_vis_dense"].clone().requires_grad_(True)
    masks = torch.zeros(2, 2, 64, 64, requires_grad=True)
    regions = backbone.embed_regions(dense, masks)
    regions.sum().backward()
    assert torch.isfinite(regions).all()
    assert torch.isfinite(masks.grad).all() and torch.isfinite(dense.grad).all()


def test_embed_regions_validates_inputs(backbone):
    dense = torch.zeros(1, 320, 2, 2)
    with pytest.raises(ValueError, match="channels"):
        backbone.embed_regions(torch.zeros(1, 7, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        backbone.embed_regions(dense, torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, N, H, W\]"):
        backbone.embed_regions(dense, torch.ones(1, 2, 2))


# ---------------------------------------------------------------------------- freezing
def test_frozen_and_eval_mode_survive_train():
    backbone = _tiny_backbone()
    parent = torch.nn.Module()
    parent.backbone = backbone
    parent.head = torch.nn.Linear(4, 4)
    parent.train()
    assert parent.head.training
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    parent.eval().train(True)
    assert not any(m.training for m in backbone.modules())


def test_gradients_reach_masks_and_features_but_no_backbone_parameter():
    backbone = _tiny_backbone()
    outputs = backbone(_images())
    assert not any(o.requires_grad for o in outputs.values())
    # Stand-ins for trainable modules upstream: an adapter on the dense map, a mask head.
    adapter_scale = torch.ones(1, requires_grad=True)
    mask_logits = torch.randn(2, 3, 64, 64, requires_grad=True)
    dense = outputs["clip_vis_dense"] * adapter_scale
    regions = backbone.embed_regions(dense, mask_logits.sigmoid())
    text = backbone.encode_text(["a cat", "a dog"])
    loss = (regions @ text.T * backbone.logit_scale).logsumexp(-1).mean()
    loss.backward()
    assert mask_logits.grad is not None and mask_logits.grad.abs().sum() > 0
    assert adapter_scale.grad is not None and adapter_scale.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


# ---------------------------------------------------------------------------- text tower
@pytest.mark.parametrize("chunk_size", [2, 256])
def test_encode_text_matches_open_clip(chunk_size):
    backbone = _tiny_backbone(text_chunk_size=chunk_size)
    texts = [
        "a photo of a cat.",
        "a dog",
        "sky",
        "There is a tree in the scene",
        "road",
        "x",
        "grass",
        "",  # start and end of text only
        "a very long caption " * 30,  # cut at the context length, EOT in the last position
    ]
    embeds = backbone.encode_text(texts)
    tokens = backbone.tokenizer(texts)
    with torch.no_grad():
        expected = backbone.clip_model.encode_text(tokens, normalize=True)
        expected_raw = backbone.clip_model.encode_text(tokens, normalize=False)
    assert embeds.shape == (len(texts), backbone.embed_dim)
    torch.testing.assert_close(embeds, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(len(texts)))
    torch.testing.assert_close(
        backbone.encode_text(texts, normalize=False), expected_raw, rtol=1e-4, atol=1e-5
    )
    assert backbone.encode_text([]).shape == (0, backbone.embed_dim)


def test_text_tower_runs_only_up_to_each_chunks_last_end_of_text():
    """The tower is causal and pools the EOT token, so positions after it are skipped; texts
    are batched by length (chunk size 2: the two short texts together)."""
    backbone = _tiny_backbone(text_chunk_size=2)
    assert can_skip_padding(backbone.clip_model)
    lengths = []
    hook = backbone.clip_model.transformer.register_forward_hook(
        lambda module, args, output: lengths.append(args[0].shape[1])
    )
    texts = ["a photo of a small dog in the scene.", "sky", "a photo of a cat.", "x"]
    positions = pooled_token_positions(backbone.clip_model, backbone.tokenizer(texts))
    embeds = backbone.encode_text(texts)
    hook.remove()
    assert sorted(lengths) == sorted([int(positions[[1, 3]].max()) + 1, int(positions.max()) + 1])
    assert max(lengths) < backbone.tokenizer(texts).shape[1]
    with torch.no_grad():
        expected = backbone.clip_model.encode_text(backbone.tokenizer(texts), normalize=True)
    torch.testing.assert_close(embeds, expected, rtol=1e-4, atol=1e-5)


def test_non_causal_text_towers_run_whole():
    backbone = _tiny_backbone()
    backbone.clip_model.attn_mask = torch.zeros_like(backbone.clip_model.attn_mask)
    assert not can_skip_padding(backbone.clip_model)
    texts = ["a cat", "There is a tree in the scene"]
    with torch.no_grad():
        expected = backbone.clip_model.encode_text(backbone.tokenizer(texts), normalize=True)
    torch.testing.assert_close(backbone.encode_text(texts), expected)


def test_encode_text_rejects_a_bare_string(backbone):
    with pytest.raises(ValueError, match="list of strings"):
        backbone.encode_text("a cat")


def test_properties(backbone):
    assert backbone.embed_dim == 64
    # open_clip initialises logit_scale to log(1 / 0.07).
    torch.testing.assert_close(backbone.logit_scale, torch.tensor(1 / 0.07))
    with torch.no_grad():
        backbone.clip_model.logit_scale.fill_(10.0)
    try:
        assert backbone.logit_scale.item() == 100.0
    finally:
        with torch.no_grad():
            backbone.clip_model.logit_scale.fill_(torch.log(torch.tensor(1 / 0.07)).item())


# ---------------------------------------------------------------------------- weights files
def _save(state_dict: dict, path: pathlib.Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return str(path)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A seed-123 random tiny model and its weights saved in every accepted format."""
    torch.manual_seed(123)
    model = load_open_clip(TINY)
    state_dict = model.state_dict()
    folder = tmp_path_factory.mktemp("clip_weights")
    paths = {
        "safetensors": _save(state_dict, folder / "tiny.safetensors"),
        "bin": _save(state_dict, folder / "tiny.bin"),
        "pt": _save(state_dict, folder / "tiny.pt"),
        # open_clip training checkpoint layout, saved from a DDP-wrapped model.
        "training_pth": _save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}},
            folder / "epoch_3.pth",
        ),
    }
    return model, paths


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "pt", "training_pth"])
def test_local_weights_round_trip(saved_tiny, fmt):
    reference, paths = saved_tiny
    torch.manual_seed(0)  # a different random init, overwritten by the file
    loaded = load_open_clip(TINY, paths[fmt])
    expected = reference.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), reference.encode_image(images))


def test_random_inits_differ(saved_tiny):
    """Guards the round trip: without the file, a fresh model would not match the reference."""
    reference, _ = saved_tiny
    torch.manual_seed(0)
    fresh = load_open_clip(TINY)
    name = "visual.head.mlp.fc1.weight"
    assert not torch.equal(fresh.state_dict()[name], reference.state_dict()[name])


def test_backbone_from_config_loads_local_weights(saved_tiny):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from uniovseg.config import add_uniovseg_config

    reference, paths = saved_tiny
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "CLIPConvNeXtBackbone"
    cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME = TINY
    cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED = paths["safetensors"]
    cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE = 3
    backbone = build_backbone(cfg)
    assert isinstance(backbone, CLIPConvNeXtBackbone)
    images = _images(size=128)
    dense = backbone(images)["clip_vis_dense"]
    regions = backbone.embed_regions(dense, torch.ones(2, 1, 128, 128))[:, 0]
    with torch.no_grad():
        expected = reference.encode_image(images)
    torch.testing.assert_close(regions, expected, rtol=1e-4, atol=1e-5)


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "clip.safetensors")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_open_clip(TINY, missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_clip_state_dict(missing)


@pytest.mark.parametrize("name", ["bad.bin", "bad.safetensors", "bad.pt"])
def test_corrupt_file_names_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 this is not a checkpoint " * 8)
    with pytest.raises(ValueError, match=name):
        load_open_clip(TINY, str(path))


def test_truncated_checkpoint_is_refused(saved_tiny, tmp_path):
    _, paths = saved_tiny
    data = pathlib.Path(paths["pt"]).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_open_clip(TINY, str(path))


class _Trap:
    """Unpickling this object creates a marker file: proof that arbitrary code would run."""

    marker = ""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    trap = _Trap()
    trap.marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.trunk.stem.0.weight": trap}}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_open_clip(TINY, str(path))
    assert not (tmp_path / "code_ran").exists()


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"visual.trunk.stem.0.weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(ValueError, match="note"):
        read_clip_state_dict(str(path))


def test_mismatched_state_dict_lists_keys(saved_tiny, tmp_path):
    reference, _ = saved_tiny
    state_dict = dict(reference.state_dict())
    del state_dict["visual.head.mlp.fc2.weight"]
    state_dict["text_projection"] = torch.zeros(3, 3)
    path = _save(state_dict, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="partial.safetensors") as info:
        load_open_clip(TINY, path)
    assert "visual.head.mlp.fc2.weight" in str(info.value)
    assert "text_projection (3, 3)" in str(info.value)


def test_unknown_tag_and_model_are_explained():
    with pytest.raises(ValueError, match="laion2b_s29b_b131k_ft_soup"):
        load_open_clip("convnext_large_d_320", "no_such_tag")
    with pytest.raises(ValueError, match="Unknown open_clip model"):
        load_open_clip("no_such_model")


def test_failed_tag_download_suggests_a_local_path(monkeypatch):
    from open_clip import pretrained as open_clip_pretrained

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip_pretrained, "download_pretrained", offline)
    with pytest.raises(ValueError, match="local path"):
        load_open_clip("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")


# ---------------------------------------------------------------------------- config
def test_build_backbone_from_detectron2_config():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "CLIPConvNeXtBackbone"
    cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME = TINY
    cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED = ""
    backbone = build_backbone(cfg)
    assert isinstance(backbone, CLIPConvNeXtBackbone)
    assert backbone.output_shape()["clip_vis_dense"] == ShapeSpec(channels=320, stride=32)
    assert isinstance(build_clip_backbone(cfg, ShapeSpec(channels=3)), CLIPConvNeXtBackbone)
    with pytest.raises(ValueError, match="RGB"):
        build_clip_backbone(cfg, ShapeSpec(channels=1))


# ---------------------------------------------------------------------------- checkpoint layout
@pytest.mark.skipif(not SHAPES_FILE.is_file(), reason="official state_dict_shapes.json absent")
def test_convnext_large_layout_matches_official_checkpoint():
    """backbone.clip_model.* of the authors' stage-1 checkpoint, built on the meta device."""
    official = {
        name: list(shape)
        for name, shape in json.loads(SHAPES_FILE.read_text()).items()
        if name.startswith("backbone.")
    }
    with torch.device("meta"):
        backbone = CLIPConvNeXtBackbone(model_name="convnext_large_d_320", pretrained="")
    ours = {f"backbone.{name}": list(t.shape) for name, t in backbone.state_dict().items()}
    assert ours == official
    specs = backbone.output_shape()
    assert [specs[f"res{i}"].channels for i in range(2, 6)] == [192, 384, 768, 1536]
    assert specs["clip_vis_dense"] == specs["res5"]
    assert backbone.embed_dim == 768
