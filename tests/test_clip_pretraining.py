"""Tiny CLIP pretraining on the synthetic world: the loss, a short run, loading, zero-shot eval."""

import copy
import importlib.util
import json
import math
import os

import pytest
import torch
import yaml

from uniovseg.data.synthetic import (
    SplitCounts,
    default_world_path,
    generate_synthetic_world,
    load_world,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "uniovseg_synthetic_clip"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    with open(default_world_path(), encoding="utf-8") as f:
        d = yaml.safe_load(f)
    d = copy.deepcopy(d)
    d["pretrain"]["crop_size"] = 32
    root = str(tmp_path_factory.mktemp("clip_world"))
    generate_synthetic_world(
        root,
        world=load_world(d),
        seed=0,
        counts=SplitCounts(sa1b=0, captions=0, eval=2, pretrain=12),
        image_size=64,
        progress=False,
    )
    return root


def test_contrastive_loss_known_answers():
    pretrain = _tool("pretrain_clip")
    eye = torch.eye(3)
    scale = torch.tensor(100.0)
    # Matched pairs, orthogonal otherwise: each row's logits are [100, 0, 0] -> loss ~ 2 e^-100.
    assert pretrain.contrastive_loss(eye, eye, scale).item() == pytest.approx(0.0, abs=1e-6)
    # Captions 0 and 1 swapped: rows 0 and 1 put all mass on the wrong pair -> loss ~ 2/3 * 100.
    swapped = eye[[1, 0, 2]]
    assert pretrain.contrastive_loss(eye, swapped, scale).item() == pytest.approx(200 / 3, rel=1e-4)
    # Uniform similarities: loss = log(batch size).
    ones = torch.nn.functional.normalize(torch.ones(4, 2), dim=-1)
    assert pretrain.contrastive_loss(ones, ones, scale).item() == pytest.approx(math.log(4))


def test_short_pretraining_writes_a_loadable_open_clip_checkpoint(tiny_world, tmp_path):
    import open_clip

    from uniovseg.model_zoo import register_open_clip_configs

    output = str(tmp_path / "clip.pt")
    _tool("pretrain_clip").main(
        [
            "--root",
            tiny_world,
            "--output",
            output,
            "--max-steps",
            "2",
            "--batch-size",
            "6",
            "--image-size",
            "32",
            "--threads",
            "1",
            "--log-every",
            "1",
            "--seed",
            "0",
        ]
    )
    with open(str(tmp_path / "clip.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["steps"] == 2 and summary["samples_seen"] == 12 and summary["pairs"] == 12

    saved = torch.load(output, weights_only=True)
    register_open_clip_configs()
    loaded = open_clip.create_model(MODEL, pretrained=output)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    assert saved.keys() == loaded.state_dict().keys()

    torch.manual_seed(0)
    fresh = open_clip.create_model(MODEL)
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, saved[k])]
    assert any(k.startswith("visual.") for k in changed)
    assert any(k.startswith("transformer.") for k in changed)

    loading = pytest.importorskip("uniovseg.modeling.open_clip_loading")
    model = loading.load_open_clip(MODEL, output)
    assert torch.equal(model.state_dict()["logit_scale"], saved["logit_scale"])


def test_zero_shot_evaluation_reports_both_accuracies(tiny_world, tmp_path):
    pytest.importorskip("uniovseg.modeling.clip_backbone")
    output = str(tmp_path / "clip.pt")
    _tool("pretrain_clip").main(
        [
            "--root",
            tiny_world,
            "--output",
            output,
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--threads",
            "1",
        ]
    )
    result_path = str(tmp_path / "zero_shot.json")
    _tool("eval_clip_zero_shot").main(
        [
            "--root",
            tiny_world,
            "--pretrained",
            output,
            "--crop-size",
            "32",
            "--threads",
            "1",
            "--output",
            result_path,
        ]
    )
    with open(result_path, encoding="utf-8") as f:
        result = json.load(f)
    assert result["num_classes"] == 18 and result["chance"] == pytest.approx(1 / 18, abs=1e-4)
    assert result["num_images"] == 2 and result["num_segments"] >= 4
    for key in ("crop_accuracy", "mask_pool_accuracy", "majority_baseline"):
        assert 0.0 <= result[key] <= 1.0


def test_mosaic_tiles_are_embedded_from_their_own_cells():
    import open_clip

    from uniovseg.model_zoo import register_open_clip_configs

    pretrain = _tool("pretrain_clip")
    register_open_clip_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL).eval()
    images = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        for name, p in model.visual.trunk.named_parameters():
            if name.endswith(".gamma"):  # as pretraining starts (timm's 1e-6: identity blocks)
                p.fill_(1.0)
        # One tile per mosaic: the whole-image embedding, as CLIP computes it.
        single = pretrain.mosaic_embeddings(model, images, grid=1)
        assert torch.allclose(single, model.encode_image(images), atol=1e-5)

        tiles = pretrain.mosaic_embeddings(model, images, grid=2)
        # Built by hand: images 0-3 are the top-left, top-right, bottom-left and bottom-right
        # tiles of the first mosaic; a tile is the mean of its quarter of the dense map.
        top = torch.cat([images[0], images[1]], dim=-1)
        bottom = torch.cat([images[2], images[3]], dim=-1)
        dense = model.visual.trunk.forward_features(torch.cat([top, bottom], dim=-2)[None])
        half = dense.shape[-1] // 2
        bottom_right = dense[..., half:, half:].mean(dim=(-2, -1), keepdim=True)
        expected = model.visual.head(model.visual.trunk.forward_head(bottom_right).flatten(1))
    assert tiles.shape == single.shape
    assert torch.allclose(tiles[3], expected[0], atol=1e-5)
    # The blocks' 7x7 convolutions see across tile borders: a tile is not its image alone.
    assert not torch.allclose(tiles[3], single[3], atol=1e-3)


def test_pretraining_with_mosaics_runs(tiny_world, tmp_path):
    output = str(tmp_path / "clip.pt")
    _tool("pretrain_clip").main(
        ["--root", tiny_world, "--output", output, "--max-steps", "1", "--batch-size", "8",
         "--image-size", "32", "--threads", "1", "--mosaic-grid", "2",
         "--mosaic-fraction", "1.0"]
    )  # fmt: skip
    with open(str(tmp_path / "clip.json"), encoding="utf-8") as f:
        assert json.load(f)["samples_seen"] == 8
