"""The UniOVSeg meta-architecture built from the tiny config: training contract, gradients,
edge cases, automatic and promptable inference."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import uniovseg.modeling  # noqa: F401  (registers UniOVSeg)
from uniovseg.config import add_uniovseg_config
from uniovseg.model_check import _synthetic_training_example

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "stage1_tiny.yaml"


@pytest.fixture(scope="module")
def cfg():
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_training_step_reaches_every_trainable_parameter_and_no_frozen_one(model, cfg):
    model.train()
    model.zero_grad(set_to_none=True)
    example = _synthetic_training_example(cfg.INPUT.UNIOVSEG.CROP_SIZE)
    losses = model([example, example])
    assert {"loss_mask_bce_point", "loss_mask_dice_point", "loss_iou_point"} <= set(losses)
    assert {"loss_mask_bce_box", "loss_mask_dice_box", "loss_iou_box"} <= set(losses)
    # deep supervision: one set of terms per auxiliary prediction (1 initial + NUM_LAYERS - 1)
    assert "loss_mask_bce_point_0" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("backbone.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone."))
    assert not model.backbone.training  # the frozen CLIP stays in eval mode


def test_batch_without_any_mask_gives_a_finite_zero_loss(model, cfg):
    model.train()
    size = cfg.INPUT.UNIOVSEG.CROP_SIZE
    example = _synthetic_training_example(size)
    example["gt_masks"] = torch.zeros(0, size, size, dtype=torch.bool)
    example["box_prompts"] = torch.zeros(0, 4)
    losses = model([example])
    total = sum(losses.values())
    assert torch.isfinite(total) and float(total.detach()) == 0.0
    total.backward()


def test_automatic_masks_come_back_at_the_original_size(model):
    model.eval()
    image = torch.randint(0, 256, (3, 70, 110), dtype=torch.uint8)
    (output,) = model([{"image": image, "height": 140, "width": 220}])
    result = output["automatic_masks"]
    assert result.masks.shape[1:] == (140, 220)
    assert output["instances"].image_size == (140, 220)
    assert len(output["instances"]) == len(result)


def test_automatic_generation_keeps_masks_when_the_filters_allow_it(cfg):
    cfg = cfg.clone()
    cfg.MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH = 0.0
    cfg.MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    (output,) = model([{"image": image}])
    result = output["automatic_masks"]
    assert len(result) > 0
    assert result.masks.dtype == torch.bool and result.masks.shape[1:] == (96, 128)
    assert torch.all(result.iou_scores[:-1] >= result.iou_scores[1:])


def test_promptable_evaluation_output_contract(model, cfg):
    model.eval()
    size = cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE
    # The mapper passes the image at its original size; the model preprocesses it as any image.
    image = torch.zeros(3, size * 3 // 8, size // 2, dtype=torch.uint8)
    valid = (size * 3 // 4, size)
    example = {
        "image": image,
        "image_size": valid,
        "point_coords": torch.tensor([[10.0, 20.0], [60.0, 50.0], [100.0, 90.0]]),
        "box_prompts": torch.tensor([[0.0, 0.0, 50.0, 40.0]] * 3),
    }
    (output,) = model([example])
    evaluation = output["prompt_eval"]
    assert evaluation["point_masks"].shape == (3, 4, *valid)
    assert evaluation["point_masks"].dtype == torch.bool
    assert evaluation["point_iou"].shape == (3, 4)
    assert ((evaluation["point_iou"] >= 0) & (evaluation["point_iou"] <= 1)).all()
    assert evaluation["box_masks"].shape == (3, 1, *valid)
    # Ground truth resized by another geometry than the model's is refused, not mis-scored.
    with pytest.raises(ValueError, match="same config"):
        model([{**example, "image_size": (valid[0] - 1, valid[1])}])


def test_promptable_evaluation_ends_box_masks_at_the_box_when_asked(model, cfg):
    model.eval()
    size = cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE
    torch.manual_seed(1)
    # Original 60 x 72; the model resizes it to the valid frame (size * 5/6, size), rounded.
    image = torch.randint(0, 256, (3, 60, 72), dtype=torch.uint8)
    valid = (round(size * 5 / 6), size)
    box = [10.0, 20.0, 50.0, 40.0]
    x = {
        "image": image,
        "image_size": valid,
        "point_coords": torch.tensor([[30.0, 30.0]]),
        "box_prompts": torch.tensor([box]),
    }
    plain = model([x])[0]["prompt_eval"]["box_masks"][0, 0]
    model.box_masks_inside_box = True
    try:
        limited = model([x])[0]["prompt_eval"]["box_masks"][0, 0]
    finally:
        model.box_masks_inside_box = False
    in_box = torch.zeros(valid, dtype=torch.bool)
    in_box[20:40, 10:50] = True
    assert plain[~in_box].any()  # random weights spill over the box: the case is not trivial
    assert not limited[~in_box].any()
    assert torch.equal(limited[in_box], plain[in_box])


def test_invalid_settings_are_refused(cfg):
    bad = cfg.clone()
    bad.MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES = ["polygon"]
    with pytest.raises(ValueError, match="TRAIN_PROMPT_TYPES"):
        build_model(bad)
    bad = cfg.clone()
    bad.MODEL.UNIOVSEG.TEST.INPUT_SIZE = 100
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(bad)
    bad = cfg.clone()
    bad.MODEL.UNIOVSEG.TEST.AUTOCAST = "int8"
    with pytest.raises(ValueError, match="AUTOCAST"):
        build_model(bad)


def test_bf16_inference_gives_float32_outputs_close_to_float32_inference(cfg):
    """TEST.AUTOCAST bf16 runs the network in bf16; outputs stay float32 and the open-vocabulary
    maps agree with float32 inference on most pixels (random weights: a loose bound)."""
    outputs = {}
    for precision in ("", "bf16"):
        cfg_p = cfg.clone()
        cfg_p.MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH = 0.0
        cfg_p.MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH = 0.0
        cfg_p.MODEL.UNIOVSEG.TEST.AUTOCAST = precision
        torch.manual_seed(0)
        model = build_model(cfg_p).eval()
        model.set_vocabulary("cat; dog, puppy; sky", thing_classes=[0, 1])
        torch.manual_seed(1)
        image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
        (outputs[precision],) = model([{"image": image}])
    with model.inference_precision():  # the bf16 model (built last)
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    half = outputs["bf16"]
    assert len(half["automatic_masks"]) > 0
    assert half["automatic_masks"].mask_logits_lowres.dtype == torch.float32
    assert half["sem_seg"].dtype == torch.float32
    assert half["mask_class_probs"].dtype == torch.float32
    agree = (half["sem_seg"].argmax(0) == outputs[""]["sem_seg"].argmax(0)).float().mean()
    assert agree > 0.5


def test_open_vocabulary_outputs_at_the_original_size(cfg):
    cfg = cfg.clone()
    cfg.MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH = 0.0
    cfg.MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.set_vocabulary("cat; dog, puppy; sky", thing_classes=[0, 1])
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    (output,) = model([{"image": image, "height": 120, "width": 180}])
    num_masks = len(output["automatic_masks"])
    assert num_masks > 0
    assert output["sem_seg"].shape == (3, 120, 180)
    panoptic, segments = output["panoptic_seg"]
    assert panoptic.shape == (120, 180)
    assert {s["category_id"] for s in segments} <= {0, 1, 2}
    assert set(panoptic.unique().tolist()) <= {0} | {s["id"] for s in segments}
    assert output["mask_class_probs"].shape == (num_masks, 3)
    assert output["instances"].pred_classes.shape == (num_masks,)


def test_empty_vocabulary_is_refused(model):
    with pytest.raises(ValueError):
        model.set_vocabulary("")
    with pytest.raises(ValueError, match="outside"):
        model.set_vocabulary("cat; dog", thing_classes=[5])


def test_open_vocabulary_with_no_surviving_mask_gives_empty_outputs(cfg):
    cfg = cfg.clone()
    cfg.MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH = 1.1  # nothing can pass
    model = build_model(cfg).eval()
    model.set_vocabulary("cat; dog; sky", thing_classes=[0, 1])
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    (output,) = model([{"image": image}])
    assert len(output["automatic_masks"]) == 0
    assert output["sem_seg"].shape == (3, 64, 64) and float(output["sem_seg"].abs().sum()) == 0.0
    panoptic, segments = output["panoptic_seg"]
    assert segments == [] and int(panoptic.abs().sum()) == 0


def test_the_configured_test_resize_is_honoured(cfg):
    cfg = cfg.clone()
    size = cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE
    cfg.MODEL.UNIOVSEG.TEST.RESIZE_MODE = "shortest_edge"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size // 4, size // 2
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    padded, frame = model.preprocess_image(image)
    assert padded.shape[-2:] == (size, size)
    assert frame.valid_size == (size // 4, round(size // 4 * 1.5))
    (output,) = model([{"image": image}])
    assert output["automatic_masks"].masks.shape[1:] == (60, 90)


def test_inference_runs_as_named_stages(model):
    """The benchmarks time the model's own steps (no replay): each runs as a named stage."""
    from contextlib import contextmanager

    from uniovseg.modeling.inference_stages import observe_stages

    class Recorder:
        def __init__(self):
            self.names = []

        @contextmanager
        def stage(self, name):
            self.names.append(name)
            yield

    model.eval()
    recorder = Recorder()
    with observe_stages(recorder):
        model([{"image": torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)}])
    expected = ["preprocess", "backbone", "pixel_decoder", "mask_decoder", "mask_postprocess"]
    # With a vocabulary (set by an earlier test on this model), the open-vocabulary stages follow.
    assert list(dict.fromkeys(recorder.names))[: len(expected)] == expected
    seen = len(recorder.names)
    model([{"image": torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)}])
    assert len(recorder.names) == seen  # nothing is observed outside the block
