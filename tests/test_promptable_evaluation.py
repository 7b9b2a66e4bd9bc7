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
from uniovseg.evaluation.promptable_evaluator import EVALUATOR_TYPE, PromptableEvaluator

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
    return PromptableEvalMapper(input_size=64, pad_value=(1, 2, 3), **kwargs)


def test_mapper_resize_pad_masks_prompts(instance_dict):
    out = _mapper()(instance_dict)
    # Longest side 80 -> 64: scale 0.8, valid region 48 x 64, padded to 64 x 64 at the bottom.
    assert out["image_size"] == (48, 64)
    assert (out["height"], out["width"]) == (H, W)
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert (image[:, 48:] == torch.tensor([1, 2, 3], dtype=torch.uint8)[:, None, None]).all()
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
    assert mapper.pad_value == tuple(float(round(m)) for m in cfg.MODEL.PIXEL_MEAN)


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
