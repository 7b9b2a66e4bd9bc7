"""The promptable-evaluation mapper on a tiny hand-made dataset, and the evaluator's IoUs."""

import math

import cv2
import numpy as np
import pytest
import torch
from panopticapi.utils import id2rgb
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper, mask_centre_points
from uniovseg.evaluation.promptable_evaluator import (
    EVALUATOR_TYPE,
    PromptableEvaluator,
    best_mask_iou,
)
from uniovseg.modeling.image_frame import inference_frame
from uniovseg.modeling.image_preprocessing import RELEASE_PAD_VALUE, resize_and_pad

H, W = 60, 80  # original image
RECT = (10, 10, 50, 30)  # x0, y0, x1, y1 of a red rectangle
DISC = (60, 40, 12)  # cx, cy, r of a green disc


def _write_image(path):
    image = np.full((H, W, 3), 100, dtype=np.uint8)
    x0, y0, x1, y1 = RECT
    image[y0:y1, x0:x1] = (255, 0, 0)
    disc = np.zeros((H, W), dtype=np.uint8)
    cv2.circle(disc, DISC[:2], DISC[2], 1, -1)
    image[disc > 0] = (0, 255, 0)
    Image.fromarray(image).save(path)
    return disc.astype(bool)


@pytest.fixture
def instance_dict(tmp_path):
    disc = _write_image(tmp_path / "img.png")
    x0, y0, x1, y1 = RECT
    rle = mask_util.encode(np.asfortranarray(disc.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "file_name": str(tmp_path / "img.png"),
        "image_id": 7,
        "height": H,
        "width": W,
        "annotations": [
            {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0},
            {"segmentation": rle, "iscrowd": 0},
            {"segmentation": [[0, 50, 5, 50, 5, 55, 0, 55]], "iscrowd": 1},  # crowd: skipped
        ],
    }


def _mapper(**kwargs):
    return PromptableEvalMapper(input_size=64, **kwargs)


def test_mapper_resize_pad_masks_prompts(instance_dict):
    out = _mapper()(instance_dict)
    # Longest side 80 -> 64: scale 0.8, valid region 48 x 64 of the model's 64 x 64 input.
    assert out["image_size"] == (48, 64)
    assert (out["height"], out["width"]) == (H, W)
    # The image stays at its original size: the model preprocesses it as any test image.
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, H, W)
    frame = inference_frame((H, W), 64)
    image = resize_and_pad(out["image"], frame, pad_value=RELEASE_PAD_VALUE)
    gt = out["gt_masks"]
    assert gt.dtype == torch.bool and gt.shape == (2, 48, 64)
    assert out["file_name"] == instance_dict["file_name"] and out["image_id"] == 7

    # The resized masks are the scaled shapes, and the resized image shows them in place.
    rect = torch.zeros(48, 64, dtype=torch.bool)
    rect[8:24, 8:40] = True
    iou = (gt[0] & rect).sum() / (gt[0] | rect).sum()
    assert iou > 0.9
    assert (image[0, :48][gt[0]] > 200).float().mean() > 0.9  # red under the rectangle mask
    assert (image[1, :48][gt[1]] > 200).float().mean() > 0.9  # green under the disc mask

    points, boxes = out["point_coords"], out["box_prompts"]
    assert points.shape == (2, 2) and boxes.shape == (2, 4)
    for g in range(2):
        x, y = points[g].tolist()
        assert gt[g, int(y), int(x)]  # the point lies inside its mask
        ys, xs = torch.nonzero(gt[g], as_tuple=True)
        assert boxes[g].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # Disc centre (60, 40) x 0.8 = (48, 32): the distance-transform maximum sits there.
    assert math.dist(points[1].tolist(), (48.0, 32.0)) <= 1.5
    # Rectangle rows 8..23: the deepest points are on its middle rows.
    assert 14.5 <= points[0, 1].item() <= 17.5


def test_mapper_includes_crowd_on_request(instance_dict):
    assert _mapper(include_crowd=True)(instance_dict)["gt_masks"].shape[0] == 3


def test_mapper_panoptic_dict(tmp_path):
    _write_image(tmp_path / "img.png")
    ids = np.zeros((H, W), dtype=np.int64)
    ids[0:30, 0:40] = 5
    ids[30:60, 0:40] = 9
    ids[:, 40:] = 11  # crowd
    Image.fromarray(id2rgb(ids)).save(tmp_path / "pan.png")
    dataset_dict = {
        "file_name": str(tmp_path / "img.png"),
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "height": H,
        "width": W,
        "segments_info": [
            {"id": 5, "category_id": 1, "iscrowd": 0},
            {"id": 9, "category_id": 2, "iscrowd": 0},
            {"id": 11, "category_id": 3, "iscrowd": 1},
        ],
    }
    out = _mapper()(dataset_dict)
    gt = out["gt_masks"]
    assert gt.shape == (2, 48, 64)
    assert gt[0, :24, :32].all() and gt[0].sum() == 24 * 32
    assert gt[1, 24:, :32].all() and gt[1].sum() == 24 * 32
    assert out["box_prompts"].tolist() == [[0, 0, 32, 24], [0, 24, 32, 48]]


def test_mapper_shortest_edge_and_errors(instance_dict):
    mapper = _mapper(resize_mode="shortest_edge", min_size_test=32, max_size_test=64)
    out = mapper(instance_dict)
    assert out["image_size"] == (32, 43)
    assert out["gt_masks"].shape[1:] == (32, 43)
    with pytest.raises(ValueError, match="MAX_SIZE_TEST"):
        _mapper(resize_mode="shortest_edge", max_size_test=100)
    with pytest.raises(ValueError, match="resize_mode"):
        _mapper(resize_mode="crop")
    with pytest.raises(ValueError, match="neither"):
        _mapper()({k: v for k, v in instance_dict.items() if k != "annotations"})


def test_mapper_from_config():
    from detectron2.config import get_cfg

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    mapper = PromptableEvalMapper(cfg, include_crowd=False)
    assert mapper.input_size == 1024 and mapper.resize_mode == "longest_side"


def test_mask_centre_point_touching_border():
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, :, :3] = True  # a 3-px strip along the left edge: the border counts as edge
    ((x, y),) = mask_centre_points(mask).tolist()
    assert x == 1.5 and mask[0, int(y), int(x)]


# ---------------------------------------------------------------- evaluator


def _square(x0, y0, x1, y1, size=(20, 20)):
    m = torch.zeros(size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_evaluator_perfect_predictions_give_100():
    gt = torch.stack([_square(0, 0, 10, 10), _square(5, 5, 20, 12)])
    evaluator = PromptableEvaluator("toy", distributed=False)
    evaluator.reset()
    outputs = {
        "prompt_eval": {
            "point_masks": gt[:, None].repeat(1, 4, 1, 1),
            "point_iou": torch.rand(2, 4),
            "box_masks": gt[:, None].clone(),
        }
    }
    evaluator.process([{"gt_masks": gt}], [outputs])
    res = evaluator.evaluate()["promptable"]
    assert res == {
        "1pt_oracle_iou": 100.0,
        "1pt_top_iou": 100.0,
        "1box_iou": 100.0,
        "num_instances": 2,
    }


def test_evaluator_hand_computed_ious():
    a = _square(0, 0, 10, 10)  # 100 px
    half = _square(5, 0, 15, 10)  # 50 px overlap with a: IoU 50 / 150 = 1/3
    empty = torch.zeros(20, 20, dtype=torch.bool)
    b = _square(0, 10, 20, 20)  # 200 px
    quarter = _square(0, 10, 5, 20)  # 50 px, inside b: IoU 50 / 200 = 1/4
    evaluator = PromptableEvaluator(distributed=False)
    evaluator.reset()
    # Image 1, instance a: oracle picks the exact mask (1); the top-predicted mask is `half`.
    out1 = {
        "prompt_eval": {
            "point_masks": torch.stack([empty, half, a, empty])[None],
            "point_iou": torch.tensor([[0.1, 0.9, 0.5, 0.2]]),
            "box_masks": a[None, None],
        }
    }
    # Image 2 has no instance (skipped); image 3, instance b: all point masks are `quarter`
    # or empty, top-predicted is `quarter`; the box mask is `half` (no overlap with b: IoU 0).
    out3 = {
        "prompt_eval": {
            "point_masks": torch.stack([quarter, empty, empty, empty])[None],
            "point_iou": torch.tensor([[2.0, -1.0, 0.0, 1.0]]),
            "box_masks": half[None, None],
        }
    }
    evaluator.process(
        [{"gt_masks": a[None]}, {"gt_masks": torch.zeros(0, 20, 20, dtype=torch.bool)}],
        [out1, {}],
    )
    evaluator.process([{"gt_masks": b[None]}], [out3])
    res = evaluator.evaluate()["promptable"]
    assert res["num_instances"] == 2
    assert res["1pt_oracle_iou"] == pytest.approx(100 * (1 + 1 / 4) / 2)
    assert res["1pt_top_iou"] == pytest.approx(100 * (1 / 3 + 1 / 4) / 2)
    assert res["1box_iou"] == pytest.approx(100 * (1 + 0) / 2)


def test_evaluator_distributed_path_in_one_process_and_reset():
    gt = _square(0, 0, 4, 4)[None]
    half = _square(2, 0, 6, 4)[None]  # IoU 8 / 24 = 1/3
    out = {
        "prompt_eval": {
            "point_masks": half[:, None],
            "point_iou": torch.zeros(1, 1),
            "box_masks": half[:, None],
        }
    }
    evaluator = PromptableEvaluator("toy")  # distributed=True, world size 1
    evaluator.reset()
    evaluator.process([{"gt_masks": gt}], [out])
    res = evaluator.evaluate()["promptable"]
    assert res["1pt_oracle_iou"] == pytest.approx(100 / 3) and res["num_instances"] == 1
    evaluator.reset()
    empty = evaluator.evaluate()["promptable"]
    assert empty["num_instances"] == 0 and math.isnan(empty["1pt_oracle_iou"])


def test_evaluator_rejects_bad_outputs():
    gt = _square(0, 0, 4, 4)[None]
    evaluator = PromptableEvaluator(distributed=False)
    with pytest.raises(ValueError, match="prompt_eval"):
        evaluator.process([{"gt_masks": gt}], [{"proposals": None}])
    wrong = {
        "prompt_eval": {
            "point_masks": torch.zeros(1, 4, 10, 10, dtype=torch.bool),
            "point_iou": torch.zeros(1, 4),
            "box_masks": torch.zeros(1, 1, 10, 10, dtype=torch.bool),
        }
    }
    with pytest.raises(ValueError, match="resized, unpadded frame"):
        evaluator.process([{"gt_masks": gt}], [wrong])
    assert EVALUATOR_TYPE == "promptable"


def test_mapper_to_evaluator_round_trip(instance_dict):
    inp = _mapper()(instance_dict)
    gt = inp["gt_masks"]
    whole = torch.ones_like(gt)
    out = {
        "prompt_eval": {
            # Mask 2 is exact; the top-predicted mask is the whole image.
            "point_masks": torch.stack([whole, whole, gt, whole], dim=1),
            "point_iou": torch.tensor([[0.0, 3.0, 1.0, 0.0]] * 2),
            "box_masks": gt[:, None],
        }
    }
    evaluator = PromptableEvaluator(distributed=False)
    evaluator.process([inp], [out])
    res = evaluator.evaluate()["promptable"]
    areas = gt.flatten(1).sum(1).double() / (48 * 64)
    assert res["1pt_oracle_iou"] == pytest.approx(100.0)
    assert res["1box_iou"] == pytest.approx(100.0)
    assert res["1pt_top_iou"] == pytest.approx(100 * areas.mean().item())


# ---------------------------------------------------------------- the paper's grid protocol


def test_mapper_grid_protocol_gives_a_uniform_grid_over_the_valid_region(instance_dict):
    out = _mapper(point_prompts="grid", grid_size=4)(instance_dict)
    assert out["point_protocol"] == "grid" and out["point_grid_size"] == 4
    assert out["image_size"] == (48, 64)
    # The release's placement over the 48 x 64 valid region of the 60 x 80 image, row-major:
    # fractions (i + 0.5) / 4 of the pixel-index span (79, 59) x 63 / 79 = (63, 47.05).
    fractions = np.array([0.125, 0.375, 0.625, 0.875])
    xs, ys = fractions * 63.0, fractions * 59.0 * 63.0 / 79.0
    expected = [[x, y] for y in ys for x in xs]
    np.testing.assert_allclose(out["point_coords"].numpy(), expected, rtol=0, atol=1e-5)
    # The masks and the box prompts (ground-truth boxes) do not depend on the point protocol.
    centre = _mapper()(instance_dict)
    assert centre["point_protocol"] == "centre" and centre["point_coords"].shape == (2, 2)
    assert torch.equal(out["gt_masks"], centre["gt_masks"])
    assert torch.equal(out["box_prompts"], centre["box_prompts"])
    with pytest.raises(ValueError, match="PROMPTABLE_POINTS"):
        _mapper(point_prompts="random")
    with pytest.raises(ValueError, match="PROMPTABLE_GRID_SIZE"):
        _mapper(point_prompts="grid", grid_size=0)


def test_mapper_grid_protocol_from_config():
    from uniovseg.config import load_config

    cfg = load_config("", ["MODEL.UNIOVSEG.TEST.PROMPTABLE_POINTS", "grid"])
    mapper = PromptableEvalMapper(cfg)
    assert (mapper.point_prompts, mapper.grid_size) == ("grid", 20)  # the paper's 20 x 20
    assert PromptableEvalMapper(load_config("")).point_prompts == "centre"


def test_best_mask_iou_hand_computed():
    a = _square(0, 0, 10, 10)  # 100 px
    b = _square(0, 10, 20, 20)  # 200 px
    half = _square(5, 0, 15, 10)  # a: 50 / 150 = 1/3; b: 0
    quarter = _square(0, 10, 5, 20)  # a: 0; b: 50 / 200 = 1/4
    lower = _square(0, 5, 20, 20)  # a: 50 / 350 = 1/7; b: 200 / 300 = 2/3
    candidates = torch.stack([half, quarter, lower])
    best = best_mask_iou(candidates, torch.stack([a, b]), chunk_size=2)  # chunks of 2 and 1
    assert best.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert best_mask_iou(candidates[:0], a[None]).tolist() == [0.0]
    assert best_mask_iou(candidates, a[None, :, :][:0]).shape == (0,)


def test_evaluator_grid_protocol_takes_the_best_of_all_grid_masks():
    a = _square(0, 0, 10, 10)
    b = _square(0, 10, 20, 20)
    half = _square(5, 0, 15, 10)
    quarter = _square(0, 10, 5, 20)
    empty = torch.zeros(20, 20, dtype=torch.bool)
    # A 2 x 2 grid, 2 masks per point. Mask a sits under the last point, with a low predicted
    # IoU: the oracle still finds it. Nothing matches b better than `quarter` (1/4).
    point_masks = torch.stack(
        [
            torch.stack([half, empty]),
            torch.stack([quarter, empty]),
            torch.stack([empty, empty]),
            torch.stack([half, a]),
        ]
    )
    out = {
        "prompt_eval": {
            "point_masks": point_masks,
            "point_iou": torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.7, 0.0]]),
            "box_masks": torch.stack([a, half])[:, None],  # box IoUs 1 and 0
        }
    }
    evaluator = PromptableEvaluator("toy", distributed=False)
    evaluator.process([{"gt_masks": torch.stack([a, b]), "point_protocol": "grid"}], [out])
    res = evaluator.evaluate()["promptable"]
    assert res == {
        "1pt_oracle_iou": pytest.approx(100 * (1 + 1 / 4) / 2),
        "1box_iou": pytest.approx(50.0),
        "point_grid_size": 2,
        "num_instances": 2,
    }
    # Box masks must still be one per ground-truth mask.
    bad = {"prompt_eval": {**out["prompt_eval"], "box_masks": a[None, None]}}
    with pytest.raises(ValueError, match=r"point_masks \[P, M, h, w\]"):
        evaluator.process([{"gt_masks": torch.stack([a, b]), "point_protocol": "grid"}], [bad])


def test_evaluator_refuses_to_average_two_protocols():
    gt = _square(0, 0, 4, 4)[None]
    out = {
        "prompt_eval": {
            "point_masks": gt[:, None],
            "point_iou": torch.zeros(1, 1),
            "box_masks": gt[:, None],
        }
    }
    evaluator = PromptableEvaluator(distributed=False)
    evaluator.process([{"gt_masks": gt}], [out])
    evaluator.process([{"gt_masks": gt, "point_protocol": "grid"}], [out])
    with pytest.raises(ValueError, match="different point protocols"):
        evaluator.evaluate()


def test_grid_protocol_through_a_tiny_model(instance_dict):
    """The model decodes a grid whose size differs from the number of masks; the evaluator
    scores every ground-truth mask against all of the grid's masks."""
    from uniovseg.config import load_config
    from uniovseg.engine.trainer import Trainer
    from uniovseg.model_zoo import get_config_file

    torch.manual_seed(0)
    cfg = load_config(
        get_config_file("tiny/stage1_tiny.yaml"),
        [
            "MODEL.UNIOVSEG.TEST.PROMPTABLE_POINTS",
            "grid",
            "MODEL.UNIOVSEG.TEST.PROMPTABLE_GRID_SIZE",
            "3",
        ],
    )
    model = Trainer.build_model(cfg).eval()
    inp = PromptableEvalMapper(cfg)(instance_dict)
    assert inp["point_coords"].shape == (9, 2) and inp["gt_masks"].shape[0] == 2
    out = model([inp])[0]
    point_masks = out["prompt_eval"]["point_masks"]
    assert point_masks.shape == (9, 4, *inp["image_size"])
    evaluator = PromptableEvaluator(distributed=False)
    evaluator.process([inp], [out])
    res = evaluator.evaluate()["promptable"]
    assert res["point_grid_size"] == 3 and res["num_instances"] == 2
    expected = best_mask_iou(point_masks.flatten(0, 1), inp["gt_masks"]).mean().item()
    assert res["1pt_oracle_iou"] == pytest.approx(100 * expected)
