"""Point grid and the automatic mask generation engine, driven by a fake promptable network."""

import re

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from uniovseg.inference import automatic_mask_generator
from uniovseg.inference.automatic_mask_generator import (
    AutomaticMaskGenerationEngine,
    to_sam_records,
)
from uniovseg.inference.point_grid import build_point_grid
from uniovseg.modeling.open_vocab_inference import soft_masks
from uniovseg.modeling.open_vocab_postprocessing import resize_mask_logits

# ---------------------------------------------------------------- point grid


def test_point_grid_cell_centres_square():
    grid = build_point_grid(2, (10, 10))
    assert grid.dtype == torch.float32
    assert grid.tolist() == [[2.5, 2.5], [7.5, 2.5], [2.5, 7.5], [7.5, 7.5]]


def test_point_grid_non_square_inside_valid_region():
    grid = build_point_grid(4, (30, 80))  # (h, w)
    assert grid.shape == (16, 2)
    xs, ys = grid[:, 0].unique(), grid[:, 1].unique()
    assert torch.allclose(xs, torch.tensor([10.0, 30.0, 50.0, 70.0]))
    assert torch.allclose(ys, torch.tensor([3.75, 11.25, 18.75, 26.25]))
    assert (grid[:, 0] > 0).all() and (grid[:, 0] < 80).all()
    assert (grid[:, 1] > 0).all() and (grid[:, 1] < 30).all()
    # Row-major: y outer, x inner.
    assert grid[1].tolist() == [30.0, 3.75] and grid[4].tolist() == [10.0, 11.25]


def test_point_grid_single_point_and_errors():
    assert build_point_grid(1, (7, 9)).tolist() == [[4.5, 3.5]]
    with pytest.raises(ValueError, match="points_per_side"):
        build_point_grid(0, (7, 9))
    with pytest.raises(ValueError, match="image_size"):
        build_point_grid(3, (0, 9))


# ---------------------------------------------------------------- fake network

INPUT = (128, 128)  # padded input frame
VALID = (96, 128)  # resized image inside it (bottom 32 rows are padding)
ORIGINAL = (192, 256)  # original image: 2x the valid region
STRIDE = 4
# Three objects (x0, y0, x1, y1) in input pixels; their edges fall between low-res pixel centres.
OBJECTS = [(8, 8, 40, 40), (56, 16, 104, 48), (16, 56, 72, 88)]
OBJECT_IOU, WHOLE_IOU, DISC_IOU, JUNK_IOU = 4.0, 2.0, 1.0, -3.0


class FakeNetwork:
    """Per point: mask 0 = the object under the point (empty logits if none), mask 1 = the whole
    frame (padding included), mask 2 = a 6 px disc around the point, mask 3 = junk with a low
    IoU logit. Logits live at stride 4 of the padded input."""

    def __init__(self, iou_offset: float = 0.0):
        self.iou_offset = iou_offset
        self.calls = []
        h, w = INPUT[0] // STRIDE, INPUT[1] // STRIDE
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * STRIDE
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * STRIDE
        self.cy, self.cx = torch.meshgrid(ys, xs, indexing="ij")

    def __call__(self, point_coords):
        assert point_coords.dim() == 3 and point_coords.shape[0] == 1
        self.calls.append(point_coords.shape[1])
        masks, ious = [], []
        for x, y in point_coords[0].tolist():
            obj = torch.full(self.cx.shape, -10.0)
            for x0, y0, x1, y1 in OBJECTS:
                if x0 <= x < x1 and y0 <= y < y1:
                    inside = (self.cx > x0) & (self.cx < x1) & (self.cy > y0) & (self.cy < y1)
                    obj = torch.where(inside, 10.0, -10.0)
            whole = torch.full(self.cx.shape, 10.0)
            disc = (6.0 - torch.hypot(self.cx - x, self.cy - y)) * 50.0  # sharp: stable
            junk = torch.sin(self.cx) * 5.0
            masks.append(torch.stack([obj, whole, disc, junk]))
            ious.append(torch.tensor([OBJECT_IOU, WHOLE_IOU, DISC_IOU, JUNK_IOU]) + self.iou_offset)
        return torch.stack(masks)[None], torch.stack(ious)[None]


def _engine(**kwargs):
    defaults = dict(points_per_side=8, points_per_batch=100, stability_score_thresh=0.92)
    defaults.update(kwargs)
    return AutomaticMaskGenerationEngine(**defaults)


def _generate(engine, net):
    return engine.generate(net, valid_size=VALID, input_size=INPUT, original_size=ORIGINAL)


def test_engine_keeps_objects_and_whole_image_at_original_size():
    result = _generate(_engine(), FakeNetwork())
    # Duplicates of each object and of the whole image go by IoU; every disc lies inside the
    # better-scored whole-image mask, so containment removes it; junk fails the IoU threshold;
    # background points' empty object masks are dropped.
    assert len(result) == 4
    assert result.masks.shape == (4, *ORIGINAL) and result.masks.dtype == torch.bool
    assert result.iou_scores.tolist() == pytest.approx(
        [torch.sigmoid(torch.tensor(v)).item() for v in (OBJECT_IOU,) * 3 + (WHOLE_IOU,)]
    )
    assert (result.stability_scores >= 0.92).all()
    # Masks at the original size, padding cropped: each object is its input box x 2.
    expected_boxes = sorted([[2 * v for v in obj] for obj in OBJECTS]) + [[0, 0, 256, 192]]
    assert sorted(result.boxes[:3].tolist()) == expected_boxes[:3]
    assert result.boxes[3].tolist() == expected_boxes[3]
    for mask, box in zip(result.masks, result.boxes.long().tolist(), strict=True):
        x0, y0, x1, y1 = box
        # Bilinear upsampling rounds the rectangle's corners off a little, nothing more.
        assert mask.sum() >= 0.98 * (x1 - x0) * (y1 - y0)
        assert mask[(y0 + y1) // 2, x0:x1].all() and mask[y0:y1, (x0 + x1) // 2].all()
    # The whole-frame mask covers the padding too; cropped, it is exactly the whole image.
    assert result.masks[3].all()
    # Prompts in original pixels: the grid point x 2, inside the object it produced.
    grid = build_point_grid(8, VALID)
    assert torch.allclose(result.point_coords, grid[result.point_indices] * 2)
    for (x, y), box in zip(
        result.point_coords[:3].tolist(), result.boxes[:3].tolist(), strict=True
    ):
        assert box[0] <= x < box[2] and box[1] <= y < box[3]
    assert result.granularity_indices.tolist() == [0, 0, 0, 1]
    assert result.mask_logits_lowres.shape == (4, INPUT[0] // STRIDE, INPUT[1] // STRIDE)


def test_engine_containment_off_keeps_discs_outside_objects():
    # Containment disabled: discs (IoU < 0.5 with every other mask) all survive next to the 3
    # objects and the whole-image mask. Discs of neighbouring grid points (16 x 12 px apart,
    # radius 6) barely touch, so no disc suppresses another.
    result = _generate(_engine(nms_containment_thresh=1.01), FakeNetwork())
    num_discs = int((result.granularity_indices == 2).sum())
    assert num_discs == 64
    assert len(result) == 3 + 1 + 64


def test_chunking_gives_the_same_result():
    full_net, chunked_net = FakeNetwork(), FakeNetwork()
    full = _generate(_engine(points_per_batch=1000), full_net)
    chunked = _generate(_engine(points_per_batch=7), chunked_net)
    assert full_net.calls == [64]
    assert chunked_net.calls == [7] * 9 + [1]
    assert torch.equal(full.masks, chunked.masks)
    assert torch.equal(full.iou_scores, chunked.iou_scores)
    assert torch.equal(full.point_indices, chunked.point_indices)
    assert torch.equal(full.mask_logits_lowres, chunked.mask_logits_lowres)


def test_zero_surviving_masks_is_a_normal_result():
    result = _generate(_engine(), FakeNetwork(iou_offset=-20.0))
    assert len(result) == 0
    assert result.masks.shape == (0, *ORIGINAL)
    assert result.boxes.shape == (0, 4) and result.point_coords.shape == (0, 2)
    assert result.mask_logits_lowres.shape == (0, 32, 32)
    assert to_sam_records(result, "coco_rle") == []


def test_unstable_masks_are_filtered():
    class Soft(FakeNetwork):
        def __call__(self, point_coords):
            masks, ious = super().__call__(point_coords)
            # Every logit within the +/-0.1 band: stability 0.
            return torch.tanh(masks) * 0.05, ious

    assert len(_generate(_engine(), Soft())) == 0
    assert len(_generate(_engine(stability_score_thresh=0.0), Soft())) > 0


def test_mask_probs_are_the_soft_masks_of_the_kept_masks():
    engine, net = _engine(), FakeNetwork()
    plain = _generate(engine, net)
    assert plain.mask_probs is None
    result = engine.generate(
        net, valid_size=VALID, input_size=INPUT, original_size=ORIGINAL, return_mask_probs=True
    )
    assert torch.equal(result.masks, plain.masks)
    # What open-vocabulary inference would otherwise compute from the low-res logits.
    expected = resize_mask_logits(
        result.mask_logits_lowres, input_size=VALID, output_size=ORIGINAL, padded_size=INPUT
    ).sigmoid()
    assert torch.equal(result.mask_probs, expected)
    # Open-vocabulary inference takes them as they are, or resizes the logits itself.
    sizes = {"valid_size": VALID, "input_size": INPUT}
    assert soft_masks(result, **sizes) is result.mask_probs
    assert torch.equal(soft_masks(plain, **sizes), expected)
    empty = engine.generate(
        FakeNetwork(iou_offset=-20.0),
        valid_size=VALID,
        input_size=INPUT,
        original_size=ORIGINAL,
        return_mask_probs=True,
    )
    assert empty.mask_probs.shape == (0, *ORIGINAL)


def test_gathering_rows_from_selected_and_plain_pieces():
    """Kept low-res logits live in per-chunk pieces, some of them row selections of the chunk's
    tensor; gathering the NMS survivors equals indexing their concatenation."""
    plain = torch.arange(12.0).reshape(3, 2, 2)
    chunk = 100 + torch.arange(20.0).reshape(5, 2, 2)
    rows = torch.tensor([0, 2, 3, 4])
    selection = automatic_mask_generator._select_rows(chunk, torch.isin(torch.arange(5), rows))
    assert isinstance(selection, automatic_mask_generator._RowSelection)  # most rows kept
    indices = torch.tensor([6, 0, 3, 2, 4])
    gathered = automatic_mask_generator._gather_rows([plain, selection], indices)
    assert torch.equal(gathered, torch.cat([plain, chunk[rows]])[indices])
    # Few rows kept: copied out at once.
    few = automatic_mask_generator._select_rows(chunk, torch.arange(5) == 1)
    assert torch.equal(few, chunk[1:2])


def test_small_region_removal_option_runs_and_keeps_clean_masks():
    plain = _generate(_engine(), FakeNetwork())
    cleaned = _generate(_engine(min_region_area=15), FakeNetwork())
    assert torch.equal(plain.masks, cleaned.masks)  # rectangles have no small holes/islands


def test_sam_records_binary_and_rle():
    result = _generate(_engine(), FakeNetwork())
    binary = to_sam_records(result, "binary_mask")
    rle = to_sam_records(result, "coco_rle")
    assert len(binary) == len(rle) == len(result)
    keys = {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
    }
    for b, r, mask, box in zip(binary, rle, result.masks, result.boxes.tolist(), strict=True):
        assert set(b) == set(r) == keys
        assert isinstance(b["segmentation"], np.ndarray) and b["segmentation"].shape == ORIGINAL
        assert np.array_equal(mask_util.decode(r["segmentation"]).astype(bool), mask.numpy())
        assert b["area"] == int(mask.sum()) == int(mask_util.area(r["segmentation"]))
        assert b["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        assert b["bbox"] == mask_util.toBbox(r["segmentation"]).tolist()
        assert b["crop_box"] == [0, 0, ORIGINAL[1], ORIGINAL[0]]
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2
    with pytest.raises(ValueError, match="output_mode"):
        to_sam_records(result, "polygons")


def test_engine_rejects_bad_inputs():
    engine = _engine()
    with pytest.raises(ValueError, match="fit inside"):
        engine.generate(FakeNetwork(), valid_size=(130, 10), input_size=INPUT, original_size=(5, 5))

    def bad(point_coords):
        return torch.zeros(1, point_coords.shape[1], 4, 8), torch.zeros(1, point_coords.shape[1], 4)

    with pytest.raises(ValueError, match="predict_fn"):
        engine.generate(bad, valid_size=VALID, input_size=INPUT, original_size=ORIGINAL)


def test_engine_from_config():
    from detectron2.config import get_cfg

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE = 8
    engine = AutomaticMaskGenerationEngine(cfg)
    assert engine.points_per_side == 8
    assert engine.pred_iou_thresh == pytest.approx(np.log(0.65 / 0.35), abs=1e-3)
    assert len(_generate(engine, FakeNetwork())) == 4


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("points_per_side", 0, "an integer >= 1"),
        ("points_per_side", 2.5, "an integer >= 1"),
        ("points_per_side", NAN, "an integer >= 1"),
        ("points_per_batch", True, "an integer >= 1"),
        ("pred_iou_thresh", NAN, "a finite number >= 0 .*above 1 keeps no mask"),
        ("pred_iou_thresh", -INF, "a finite number >= 0"),
        ("stability_score_thresh", -0.1, "a finite number >= 0"),
        ("stability_score_offset", -1.0, "a finite number >= 0"),
        ("stability_score_center", INF, "a finite number"),
        ("nms_iou_thresh", NAN, "a finite number >= 0 .*above 1 turns the rule off"),
        ("nms_containment_thresh", "0.7", "a finite number >= 0"),
        ("nms_scale", 0.0, r"a number in \(0, 1\]"),
        ("min_region_area", -5, "an integer >= 0"),
    ],
)
def test_engine_refuses_numbers_outside_their_range(name, value, accepted):
    with pytest.raises(
        ValueError, match=f"{name} must be {accepted}.*, got {re.escape(repr(value))}"
    ):
        _engine(**{name: value})


def test_engine_accepts_whole_floats_numpy_numbers_and_rules_turned_off():
    engine = _engine(points_per_side=np.int64(4), min_region_area=15.0, nms_iou_thresh=1.01)
    assert engine.points_per_side == 4 and isinstance(engine.points_per_side, int)
    assert engine.min_region_area == 15 and engine.nms_iou_thresh == 1.01
    assert _engine(pred_iou_thresh=1.01).pred_iou_thresh == 1.01  # keeps no mask
    assert _engine(pred_iou_thresh=np.float32(0.0)).pred_iou_thresh == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"box_nms_thresh": NAN}, r"box_nms_thresh must be a finite number >= 0 .*got nan"),
        ({"box_nms_thresh": -0.5}, "box_nms_thresh must be"),
        ({"min_mask_region_area": 2.5}, "min_mask_region_area must be an integer >= 0"),
        ({"points_per_side": 0}, "points_per_side must be an integer >= 1"),
        ({"pred_iou_thresh": INF}, r"pred_iou_thresh must be a finite number >= 0 .*got inf"),
        ({"stability_score_thresh": NAN}, "stability_score_thresh must be"),
        ({"nms_scale": 2.0}, r"nms_scale must be a number in \(0, 1\]"),
    ],
)
def test_sam_generator_refuses_bad_numbers_before_touching_the_model(kwargs, message):
    from uniovseg.inference.automatic_mask_generator_api import AutomaticMaskGenerator

    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(object(), **kwargs)  # not a model: the numbers fail first
