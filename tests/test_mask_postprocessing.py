"""Hand-made cases for stability score, boxes, containment-aware NMS, region clean-up and RLE."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from uniovseg.modeling import mask_postprocessing
from uniovseg.modeling.mask_postprocessing import (
    OUTSIDE_BOX_LOGIT,
    encode_masks_rle,
    mask_areas,
    mask_nms,
    masks_to_boxes,
    pairwise_mask_intersections,
    remove_small_regions,
    resize_and_crop,
    stability_score,
    suppress_outside_boxes,
)


def _box_mask(h, w, x0, y0, x1, y1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------- stability score


def test_stability_score_hand_made_logits():
    logits = torch.tensor(
        [
            [
                [2.0, 0.5, 0.05, -0.05],
                [-0.5, -2.0, -2.0, -2.0],
            ]
        ]
    )
    # offset 0.1 around 0: > 0.1 -> {2.0, 0.5} = 2 px; > -0.1 -> {2.0, 0.5, 0.05, -0.05} = 4 px.
    assert stability_score(logits, offset=0.1).tolist() == [0.5]
    # offset 1.0: > 1 -> 1 px; > -1 -> {2, .5, .05, -.05, -.5} = 5 px.
    assert stability_score(logits, offset=1.0).item() == pytest.approx(1 / 5)
    # Release's band (logits 0.4 .. 0.6) = center 0.5, offset 0.1: > 0.6 -> 1 px; > 0.4 -> 2 px.
    assert stability_score(logits, offset=0.1, center=0.5).item() == pytest.approx(0.5)


def test_stability_score_sharp_empty_and_batched():
    sharp = torch.full((3, 5, 5), -10.0)
    sharp[0, 1:4, 1:4] = 10.0  # sharp edge: unaffected by the threshold band
    sharp[2] = 0.0  # all inside the band: nothing above +offset
    scores = stability_score(sharp, offset=1.0)
    assert scores.shape == (3,)
    assert scores.tolist() == [1.0, 0.0, 0.0]  # an empty mask scores 0, not NaN
    with pytest.raises(ValueError, match="offset"):
        stability_score(sharp, offset=-1.0)


# ---------------------------------------------------------------- boxes


def test_masks_to_boxes_pixel_edges_and_empty():
    masks = torch.stack(
        [
            _box_mask(10, 12, 3, 2, 6, 9),
            torch.zeros(10, 12, dtype=torch.bool),
            _box_mask(10, 12, 0, 0, 12, 10),
        ]
    )
    masks[0, 5, 10] = True  # a stray pixel widens the box to column 10 (x2 = 11)
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 11, 9], [0, 0, 0, 0], [0, 0, 12, 10]]
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


# ---------------------------------------------------------------- NMS


@pytest.mark.parametrize("int8_kernel", [True, False], ids=["int8", "blocks"])
def test_mask_areas_count_pixels(int8_kernel, monkeypatch):
    if not int8_kernel:  # GPUs and builds without the int8 CPU kernel sum blocks of masks
        monkeypatch.setattr(mask_postprocessing, "_int8_intersections", lambda a, b: None)
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(7, 5, 6, generator=g) > 0.4
    expected = torch.tensor([int(m.sum()) for m in masks])
    for pixels in (1, 30, 95, 1 << 24):  # blocks of 1, 1, 3 and all masks
        assert torch.equal(mask_areas(masks, pixels_per_block=pixels), expected)
    assert mask_areas(masks[:0]).shape == (0,)


@pytest.mark.parametrize("int8_kernel", [True, False], ids=["int8", "float"])
def test_pairwise_intersections_match_bruteforce_and_chunking(int8_kernel, monkeypatch):
    if not int8_kernel:  # the float path (GPUs, builds without the int8 CPU kernel)
        monkeypatch.setattr(mask_postprocessing, "_int8_intersections", lambda a, b: None)
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 9, 11, generator=g) > 0.5
    others = torch.rand(4, 9, 11, generator=g) > 0.3
    expected_self = torch.tensor([[float((a & b).sum()) for b in masks] for a in masks])
    expected_cross = torch.tensor([[float((a & b).sum()) for b in others] for a in masks])
    for chunk in (1, 7, 10_000):
        assert torch.equal(pairwise_mask_intersections(masks, chunk_pixels=chunk), expected_self)
        cross = pairwise_mask_intersections(masks, others, chunk_pixels=chunk)
        assert torch.equal(cross, expected_cross)
        # Non-contiguous inputs (a strided crop) count the same.
        crop = pairwise_mask_intersections(masks[:, 1:, ::2], others[:, 1:, ::2], chunk)
        assert torch.equal(
            crop, (masks[:, 1:, ::2].flatten(1).float() @ others[:, 1:, ::2].flatten(1).float().T)
        )
    with pytest.raises(ValueError, match="same H, W"):
        pairwise_mask_intersections(masks, others[:, :5])


def _reference_greedy_nms(masks, scores, iou_thr, inside_thr):
    """Plain-Python greedy NMS, one pair at a time: the definition the fast version must match."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for j in order:
        area_j = int(masks[j].sum())
        suppressed = False
        for i in kept:
            inter = int((masks[i] & masks[j]).sum())
            union = int(masks[i].sum()) + area_j - inter
            if (union and inter / union >= iou_thr) or (area_j and inter / area_j >= inside_thr):
                suppressed = True
                break
        if not suppressed:
            kept.append(j)
    return kept


def test_nms_matches_reference_for_every_block_size():
    g = torch.Generator().manual_seed(7)
    num, size = 40, 24
    # Random rectangles, many overlapping or nested, with random scores.
    corners = torch.randint(0, size, (num, 4), generator=g)
    masks = torch.zeros(num, size, size, dtype=torch.bool)
    for k, (a, b, c, d) in enumerate(corners.tolist()):
        masks[k, min(a, b) : max(a, b) + 1, min(c, d) : max(c, d) + 1] = True
    scores = torch.rand(num, generator=g)
    expected = _reference_greedy_nms(masks, scores, 0.5, 0.7)
    assert 1 < len(expected) < num  # the case exercises suppression and survival
    for block in (1, 3, 16, 128):
        keep = mask_nms(masks, scores, 0.5, 0.7, block_size=block, chunk_pixels=100)
        assert keep.tolist() == expected


def test_nms_iou_suppression_keeps_higher_score():
    a = _box_mask(20, 20, 0, 0, 10, 10)
    b = _box_mask(20, 20, 1, 0, 11, 10)  # IoU 90/110 = 0.82 with a
    keep = mask_nms(torch.stack([a, b]), torch.tensor([0.7, 0.9]), 0.5, 0.7)
    assert keep.tolist() == [1]


def test_nms_containment_suppresses_small_inside_big_higher_scored():
    big = _box_mask(20, 20, 0, 0, 16, 16)  # 256 px
    small = _box_mask(20, 20, 2, 2, 6, 6)  # 16 px, fully inside, IoU 1/16
    masks = torch.stack([small, big])
    # The big mask is better: the small one is removed by containment although IoU is tiny.
    assert mask_nms(masks, torch.tensor([0.8, 0.9]), 0.5, 0.7).tolist() == [1]
    # Containment rule disabled: IoU alone keeps both.
    assert mask_nms(masks, torch.tensor([0.8, 0.9]), 0.5, 1.01).tolist() == [1, 0]
    # The small mask is better: only 1/16 of the big one lies inside it, so both stay.
    assert mask_nms(masks, torch.tensor([0.9, 0.8]), 0.5, 0.7).tolist() == [0, 1]


def test_nms_partial_containment_threshold():
    big = _box_mask(20, 20, 0, 0, 10, 20)  # 200 px
    part = _box_mask(20, 20, 7, 0, 11, 10)  # 40 px, 30 of them (75 %) inside big
    masks = torch.stack([big, part])
    assert mask_nms(masks, torch.tensor([0.9, 0.8]), 0.5, 0.7).tolist() == [0]
    assert mask_nms(masks, torch.tensor([0.9, 0.8]), 0.5, 0.8).tolist() == [0, 1]


def test_nms_disjoint_masks_all_kept_in_score_order():
    masks = torch.stack(
        [
            _box_mask(20, 20, 0, 0, 5, 5),
            _box_mask(20, 20, 10, 10, 15, 15),
            _box_mask(20, 20, 0, 10, 5, 15),
        ]
    )
    keep = mask_nms(masks, torch.tensor([0.2, 0.9, 0.5]), 0.5, 0.7)
    assert keep.tolist() == [1, 2, 0]
    assert keep.dtype == torch.long


def test_nms_is_greedy_not_fast_nms():
    # a suppresses b; b would suppress c, but b is gone, so c must survive (greedy NMS).
    a = _box_mask(20, 30, 0, 0, 10, 10)
    b = _box_mask(20, 30, 3, 0, 13, 10)  # IoU(a, b) = 70 / 130 = 0.54
    c = _box_mask(20, 30, 6, 0, 16, 10)  # IoU(a, c) = 40 / 160 = 0.25, IoU(b, c) = 0.54
    keep = mask_nms(torch.stack([a, b, c]), torch.tensor([0.9, 0.8, 0.7]), 0.5, 0.7)
    assert keep.tolist() == [0, 2]


def test_nms_ties_keep_input_order_and_empty_input():
    m = _box_mask(8, 8, 0, 0, 4, 4)
    assert mask_nms(torch.stack([m, m, m]), torch.ones(3), 0.5, 0.7).tolist() == [0]
    empty = mask_nms(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0), 0.5, 0.7)
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="scores"):
        mask_nms(torch.stack([m, m]), torch.ones(3), 0.5, 0.7)


# ---------------------------------------------------------------- small regions


def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # 100 px object
    mask[5:7, 5:7] = False  # 4 px hole
    mask[8:11, 8:11] = False  # 9 px hole
    mask[15:17, 15:17] = True  # 4 px island
    out, changed = remove_small_regions(mask, min_area=5)
    assert changed
    assert out[5:7, 5:7].all()  # small hole filled
    assert not out[8:11, 8:11].any()  # 9 px hole >= 5 kept
    assert not out[15:17, 15:17].any()  # small island removed
    assert out.sum() == 100 - 9
    same, changed = remove_small_regions(mask, min_area=0)
    assert not changed and np.array_equal(same, mask)


def test_remove_small_regions_keeps_largest_when_all_islands_small():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[6:9, 6:9] = True  # 9 px
    out, changed = remove_small_regions(mask, min_area=20)
    assert changed
    assert out.sum() == 9 and out[6:9, 6:9].all()


# ---------------------------------------------------------------- RLE


def test_rle_round_trip_with_pycocotools():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 13, 17, generator=g) > 0.6
    masks[1] = False
    rles = encode_masks_rle(masks)
    assert len(rles) == 3
    json.dumps(rles)  # counts are str: JSON-ready
    for rle, mask in zip(rles, masks, strict=True):
        assert rle["size"] == [13, 17]
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask.numpy())
        assert int(mask_util.area(rle)) == int(mask.sum())
    assert encode_masks_rle(np.zeros((0, 4, 4), dtype=bool)) == []


# ---------------------------------------------------------------- resizing


@pytest.mark.parametrize(
    ("maps_size", "frame_size"),
    [((8, 8), (32, 32)), ((16, 12), (64, 48)), ((7, 5), (20, 11)), ((64, 64), (128, 128))],
)
def test_resize_and_crop_is_resize_then_crop_to_the_bit(maps_size, frame_size):
    """Integer scales (the first, second and last cases) resize only the rows the crop reads;
    a fractional one (the third) resizes everything. Either way: the same floats."""
    torch.manual_seed(0)
    maps = torch.randn(3, *maps_size)
    full = torch.nn.functional.interpolate(
        maps[:, None], size=frame_size, mode="bilinear", align_corners=False
    )[:, 0]
    for crop_h in range(1, frame_size[0] + 1):
        for crop_w in sorted({1, frame_size[1] // 2, frame_size[1]}):
            out = resize_and_crop(maps, frame_size, (crop_h, crop_w))
            assert torch.equal(out, full[:, :crop_h, :crop_w]), (crop_h, crop_w)


def test_resize_and_crop_identity_empty_and_errors():
    maps = torch.randn(2, 6, 4)
    assert torch.equal(resize_and_crop(maps, (6, 4), (5, 3)), maps[:, :5, :3])
    assert resize_and_crop(maps[:0], (12, 8), (9, 8)).shape == (0, 9, 8)
    with pytest.raises(ValueError, match="does not fit"):
        resize_and_crop(maps, (12, 8), (13, 8))
    with pytest.raises(ValueError, match=r"\[K, h, w\]"):
        resize_and_crop(maps[0], (12, 8), (12, 8))


def test_suppress_outside_boxes_turns_off_pixels_outside_each_box():
    logits = torch.randn(2, 1, 6, 8)
    boxes = torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 8.0, 6.0]])
    out = suppress_outside_boxes(logits, boxes)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:4, 2:5] = True  # pixel centres 2.5..4.5 and 1.5..3.5
    assert torch.equal(out[0, 0][inside], logits[0, 0][inside])
    assert (out[0, 0][~inside] == OUTSIDE_BOX_LOGIT).all()
    assert torch.equal(out[1], logits[1])  # the whole frame: unchanged
    assert torch.equal(logits, logits.clone())  # the input is not modified
    with pytest.raises(ValueError, match="one XYXY box per mask row"):
        suppress_outside_boxes(logits, boxes[:1])
