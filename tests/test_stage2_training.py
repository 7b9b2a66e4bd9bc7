"""Stage 2 on the tiny model: what trains, the identity start, zero-loss edge cases, stage-1
weights, and end-to-end training steps through the Trainer (alignment only, and joined with the
mask losses) on generated images."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

import uniovseg.modeling  # noqa: F401  (registers UniOVSeg)
from uniovseg.config import add_uniovseg_config
from uniovseg.data.datasets.captions import register_caption_dataset
from uniovseg.engine.optimizer import build_optimizer
from uniovseg.model_check import _synthetic_training_example
from uniovseg.modeling.image_frame import ImageFrame

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
_names = itertools.count()


def _cfg(**alignment):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "tiny" / "stage2_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    # Random weights: let every grid mask through so that there is something to match.
    cfg.MODEL.UNIOVSEG.ALIGNMENT.MASKS.PRED_IOU_THRESH = 0.0
    cfg.MODEL.UNIOVSEG.ALIGNMENT.MASKS.STABILITY_SCORE_THRESH = 0.0
    for key, value in alignment.items():
        setattr(cfg.MODEL.UNIOVSEG.ALIGNMENT, key, value)
    return cfg


@pytest.fixture(scope="module")
def cfg():
    return _cfg()


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).train()


def _caption_example(size=128, valid=(128, 96), entities=("red car", "dog")):
    return {
        "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8),
        "image_size": valid,
        "entities": list(entities),
    }


def _adapter_grads(model):
    return {n: p.grad for n, p in model.feature_adapter.named_parameters()}


def test_default_stage2_trains_only_the_adapter(model, cfg):
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("feature_adapter.") for n in trainable)
    model.zero_grad(set_to_none=True)
    losses = model([_caption_example(), _caption_example(valid=(100, 128), entities=["house"])])
    assert set(losses) == {"loss_align"}
    loss = losses["loss_align"]
    assert torch.isfinite(loss) and 0.0 < float(loss.detach()) <= 2.0
    loss.backward()
    grads = _adapter_grads(model)
    assert all(g is not None for g in grads.values())
    # LoRA: with B = 0 only B gets a gradient at the first step; A follows once B moves.
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if ".up." in n)
    frozen = [n for n, p in model.named_parameters() if not n.startswith("feature_adapter.")]
    assert all(dict(model.named_parameters())[n].grad is None for n in frozen)

    optimizer = build_optimizer(cfg, model)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    model([_caption_example()])["loss_align"].backward()
    assert all(float(g.abs().sum()) > 0 for g in _adapter_grads(model).values())
    with torch.no_grad():
        for lora in model.feature_adapter.adapters.values():
            lora.up.weight.zero_()  # back to the identity for the other tests


def test_region_embeddings_start_exactly_at_the_baseline(model):
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    frame = ImageFrame((128, 128), (128, 128), (128, 128))
    encoding = model.encode(model.normalize(image)[None], [frame])
    masks = torch.rand(7, 32, 32)
    masks[3] = 0.0
    adapted = model.region_embeddings(encoding, masks)
    baseline = model.region_embeddings(encoding, masks, use_adapter=False)
    assert adapted.shape == (7, model.backbone.embed_dim)
    assert torch.equal(adapted, baseline)
    torch.testing.assert_close(adapted.norm(dim=-1), torch.ones(7))


@pytest.mark.parametrize("case", ["no_entities", "no_masks", "no_pairs"])
def test_nothing_to_align_gives_an_exact_zero_that_reaches_the_adapter(model, case):
    aligner, engine = model.aligner, model.alignment_mask_generator
    saved = (engine.pred_iou_thresh, aligner.matcher.min_similarity)
    batch = [_caption_example(), _caption_example()]
    if case == "no_entities":
        for x in batch:
            x["entities"] = []
    elif case == "no_masks":
        engine.pred_iou_thresh = 1.5  # a sigmoid never reaches it
    else:
        aligner.matcher.min_similarity = 1.0  # random embeddings never reach cosine 1
    try:
        model.zero_grad(set_to_none=True)
        loss = model(batch)["loss_align"]
        assert torch.isfinite(loss) and float(loss.detach()) == 0.0
        loss.backward()
        grads = _adapter_grads(model)
        assert all(g is not None and torch.all(g == 0) for g in grads.values())
    finally:
        engine.pred_iou_thresh, aligner.matcher.min_similarity = saved


def test_baseline_and_frozen_branch_refuse_the_wrong_batches(model):
    baseline = build_model(_cfg(ENABLED=False)).train()
    assert baseline.feature_adapter is None and baseline.aligner is None
    with pytest.raises(ValueError, match="ALIGNMENT.ENABLED"):
        baseline([_caption_example()])
    with pytest.raises(ValueError, match="TRAIN_MASK_BRANCH"):
        model([_synthetic_training_example(128)])


def test_stage1_weights_load_into_stage2_with_only_the_adapter_missing(model):
    stage1_cfg = get_cfg()
    add_uniovseg_config(stage1_cfg)
    stage1_cfg.merge_from_file(str(CONFIGS / "tiny" / "stage1_tiny.yaml"))
    stage1_cfg.MODEL.DEVICE = "cpu"
    stage1 = build_model(stage1_cfg)
    result = model.load_state_dict(stage1.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        k.startswith("feature_adapter.") for k in result.missing_keys
    )
    torch.testing.assert_close(
        model.sem_seg_head.state_dict(), stage1.sem_seg_head.state_dict(), atol=0, rtol=0
    )


def test_release_stage2_config_builds(tmp_path):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "stage2" / "uniovseg_convnext_large_stage2.yaml"))
    a = cfg.MODEL.UNIOVSEG.ALIGNMENT
    assert a.ENABLED and not a.TRAIN_MASK_BRANCH and a.ADAPTER.RANK == 8
    assert list(a.ENSEMBLE_SIZES) == [896, 1024] and a.LOSS_WEIGHT == 1.0
    assert cfg.INPUT.DATASET_MAPPER_NAME == "caption"
    cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME = "uniovseg_tiny_convnext"  # no ConvNeXt-L on CPU tests
    cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED = ""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    adapters = model.feature_adapter.adapters
    assert list(adapters) == ["multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features"]
    assert all(a.down.out_channels == 8 and a.down.in_channels == 256 for a in adapters.values())
    assert all(a.up.out_features == 320 for a in adapters.values())  # tiny CLIP's dense width


# ---------------------------------------------------------------- end to end through the Trainer
def _scene(rng, size=96):
    """A generated scene: two coloured rectangles on a textured background, and their masks."""
    image = (rng.random((size, size, 3)) * 60 + 60).astype(np.uint8)
    masks = []
    for color in ((220, 30, 30), (30, 30, 220)):
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 4, size // 2, 2)
        image[y0 : y0 + h, x0 : x0 + w] = color
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y0 : y0 + h, x0 : x0 + w] = 1
        masks.append(mask)
    return image, masks


def _write_world(root: Path) -> tuple[str, str]:
    """Registers a tiny caption set and a tiny SA-1B-style set; returns their names."""
    rng = np.random.default_rng(0)
    rows, sa1b = [], []
    for i in range(4):
        image, masks = _scene(rng)
        Image.fromarray(image).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": "a red box and a blue box on a gray wall."})
        annotations = []
        for mask in masks:
            rle = mask_util.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"segmentation": rle})
        (root / f"{i}.json").write_text(json.dumps({"annotations": annotations}))
        sa1b.append(
            {
                "file_name": str(root / f"{i}.png"),
                "annotation_file": str(root / f"{i}.json"),
                "image_id": i,
            }
        )
    rows.append({"image": "missing.png", "caption": "a dog"})  # skipped by the loader
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    n = next(_names)
    captions, masks = f"test_stage2_captions_{n}", f"test_stage2_masks_{n}"
    register_caption_dataset(captions, str(root / "captions.jsonl"))
    DatasetCatalog.register(masks, lambda: list(sa1b))
    return captions, masks


def _train(cfg):
    from uniovseg.engine.trainer import Trainer

    trainer = Trainer(cfg)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return trainer, changed


def _trainer_cfg(tmp_path, captions, **alignment):
    cfg = _cfg(**alignment)
    cfg.DATASETS.TRAIN = (captions,)
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.MODEL.UNIOVSEG.ALIGNMENT.ENSEMBLE_SIZES = [96, 128]
    return cfg


def test_trainer_runs_stage2_alignment_only(tmp_path):
    captions, _ = _write_world(tmp_path)
    trainer, changed = _train(_trainer_cfg(tmp_path, captions))
    assert changed and all(k.startswith("feature_adapter.") for k in changed)
    assert any(".up." in k for k in changed)
    # detectron2 logs a single loss as total_loss only
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(np.isfinite(v) for v, _ in history)
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_trainer_joins_caption_and_mask_batches(tmp_path):
    captions, masks = _write_world(tmp_path)
    cfg = _trainer_cfg(
        tmp_path,
        captions,
        TRAIN_MASK_BRANCH=True,
        MASK_TRAIN_DATASETS=[masks],
        MASK_IMS_PER_BATCH=1,
    )
    trainer, changed = _train(cfg)
    assert any(k.startswith("feature_adapter.") for k in changed)
    assert any(k.startswith("sem_seg_head.") for k in changed)
    assert not any(k.startswith("backbone.") for k in changed)
    latest = trainer.storage.latest()
    assert "loss_align" in latest and "loss_mask_dice_point" in latest

    cfg.MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH = False
    from uniovseg.engine.trainer import build_train_loader

    with pytest.raises(ValueError, match="TRAIN_MASK_BRANCH"):
        build_train_loader(cfg)
