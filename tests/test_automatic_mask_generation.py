"""Point grid and the automatic mask generation engine, driven by a fake promptable network."""

import re

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from uniovseg.inference.sam_records import to_sam_records, uncompressed_rle
from uniovseg.modeling import automatic_mask_engine
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskGenerationEngine
from uniovseg.modeling.image_frame import ImageFrame, inference_frame
from uniovseg.modeling.open_vocab_inference import soft_masks
from uniovseg.modeling.open_vocab_postprocessing import resize_mask_logits
from uniovseg.modeling.point_grid import build_point_grid, inference_point_grid

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


def _release_grid(points_per_side: int, height: int, width: int, side: int) -> torch.Tensor:
    """The release's automatic grid, from its documented steps (``prepare_points`` with the
    ``scaled_sizes`` of ``preprosses_image``), in its float32 operations and order."""
    sizes = torch.tensor([[width - 1, height - 1]])
    ratio = ((side - 1.0) / sizes.amax(dim=-1)).unsqueeze(1)
    offset = 1 / (2 * points_per_side)
    side_fractions = torch.linspace(offset, 1 - offset, points_per_side)
    xs, ys = torch.meshgrid(side_fractions, side_fractions, indexing="xy")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) * (sizes * ratio)


@pytest.mark.parametrize(
    "size", [(683, 1024), (1024, 683), (480, 640), (3, 1000), (1000, 3), (2, 2), (4000, 2999)]
)
@pytest.mark.parametrize("side", [1024, 256])
def test_inference_grid_is_the_releases_to_the_bit(size, side):
    frame = inference_frame(size, side)
    grid = inference_point_grid(20, frame)
    assert torch.equal(grid, _release_grid(20, *size, side))
    valid_h, valid_w = frame.valid_size
    assert (grid >= 0).all() and (grid[:, 0] < valid_w).all() and (grid[:, 1] < valid_h).all()


def test_inference_grid_of_a_one_pixel_image_is_finite():
    grid = inference_point_grid(3, inference_frame((1, 1), 64))
    assert grid.shape == (9, 2) and torch.equal(grid, torch.zeros(9, 2))
    with pytest.raises(ValueError, match="points_per_side"):
        inference_point_grid(0, inference_frame((5, 5), 64))


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
    return engine.generate(net, ImageFrame(ORIGINAL, VALID, INPUT))


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
    grid = inference_point_grid(8, ImageFrame(ORIGINAL, VALID, INPUT))
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
    result = engine.generate(net, ImageFrame(ORIGINAL, VALID, INPUT), return_mask_probs=True)
    assert torch.equal(result.masks, plain.masks)
    # What open-vocabulary inference would otherwise compute from the low-res logits.
    expected = resize_mask_logits(
        result.mask_logits_lowres, valid_size=VALID, output_size=ORIGINAL, padded_size=INPUT
    ).sigmoid()
    assert torch.equal(result.mask_probs, expected)
    # Open-vocabulary inference takes them as they are, or resizes the logits itself.
    frame = ImageFrame(ORIGINAL, VALID, INPUT)
    assert soft_masks(result, frame) is result.mask_probs
    assert torch.equal(soft_masks(plain, frame), expected)
    empty = engine.generate(
        FakeNetwork(iou_offset=-20.0), ImageFrame(ORIGINAL, VALID, INPUT), return_mask_probs=True
    )
    assert empty.mask_probs.shape == (0, *ORIGINAL)


def test_gathering_rows_from_selected_and_plain_pieces():
    """Kept low-res logits live in per-chunk pieces, some of them row selections of the chunk's
    tensor; gathering the NMS survivors equals indexing their concatenation."""
    plain = torch.arange(12.0).reshape(3, 2, 2)
    chunk = 100 + torch.arange(20.0).reshape(5, 2, 2)
    rows = torch.tensor([0, 2, 3, 4])
    selection = automatic_mask_engine._select_rows(chunk, torch.isin(torch.arange(5), rows))
    assert isinstance(selection, automatic_mask_engine._RowSelection)  # most rows kept
    indices = torch.tensor([6, 0, 3, 2, 4])
    gathered = automatic_mask_engine._gather_rows([plain, selection], indices)
    assert torch.equal(gathered, torch.cat([plain, chunk[rows]])[indices])
    # Few rows kept: copied out at once.
    few = automatic_mask_engine._select_rows(chunk, torch.arange(5) == 1)
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
        engine.generate(FakeNetwork(), ImageFrame((5, 5), (130, 10), INPUT))

    def bad(point_coords):
        return torch.zeros(1, point_coords.shape[1], 4, 8), torch.zeros(1, point_coords.shape[1], 4)

    with pytest.raises(ValueError, match="predict_fn"):
        engine.generate(bad, ImageFrame(ORIGINAL, VALID, INPUT))


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


# ---------------------------------------------------------------- uncompressed RLE


@pytest.mark.parametrize(
    "mask, counts",
    [
        ([[0, 1], [1, 1]], [1, 3]),  # column-major: 0, 1, 1, 1
        ([[1, 0], [0, 0]], [0, 1, 3]),  # first pixel set: a first run of zero 0s
        ([[0, 0, 0]], [3]),
        ([[1, 1], [0, 1]], [0, 1, 1, 2]),  # columns (1, 0) then (1, 1)
    ],
)
def test_uncompressed_rle_by_hand_and_through_pycocotools(mask, counts):
    mask = np.array(mask, dtype=bool)
    rle = uncompressed_rle(mask)
    assert rle == {"size": list(mask.shape), "counts": counts}
    assert all(type(c) is int for c in rle["counts"])
    compressed = mask_util.frPyObjects(rle, *rle["size"])
    assert np.array_equal(mask_util.decode(compressed).astype(bool), mask)


def test_sam_records_uncompressed_rle_decode_to_the_binary_masks():
    import json

    result = _generate(_engine(nms_containment_thresh=1.01), FakeNetwork())
    binary = to_sam_records(result, "binary_mask")
    records = to_sam_records(result, "uncompressed_rle")
    json.dumps(records)  # JSON-ready, like coco_rle
    for record, plain in zip(records, binary, strict=True):
        rle = record["segmentation"]
        assert rle["size"] == list(ORIGINAL) and sum(rle["counts"]) == ORIGINAL[0] * ORIGINAL[1]
        decoded = mask_util.decode(mask_util.frPyObjects(rle, *rle["size"])).astype(bool)
        assert np.array_equal(decoded, plain["segmentation"])
        assert {k: v for k, v in record.items() if k != "segmentation"} == {
            k: v for k, v in plain.items() if k != "segmentation"
        }


# ---------------------------------------------------------------- image crops

from uniovseg.inference import image_crops  # noqa: E402
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult  # noqa: E402
from uniovseg.modeling.point_grid import layer_points_per_side  # noqa: E402


def test_crop_boxes_of_a_non_square_image_by_hand():
    crops = image_crops.build_image_crops((96, 160), 1, 512 / 1500)
    # overlap = int(512 / 1500 * 96) = 32; width ceil((32 + 160) / 2) = 96, height
    # ceil((32 + 96) / 2) = 64; starts x 0, 96 - 32 = 64 and y 0, 64 - 32 = 32; x outer.
    assert crops == [
        ((0, 0, 160, 96), 0),
        ((0, 0, 96, 64), 1),
        ((0, 32, 96, 96), 1),
        ((64, 0, 160, 64), 1),
        ((64, 32, 160, 96), 1),
    ]
    # Layer 2: overlap int(16.38) = 16, width ceil((48 + 160) / 4) = 52, height
    # ceil((48 + 96) / 4) = 36, steps 36 and 20.
    layer_2 = [c.box for c in image_crops.build_image_crops((96, 160), 2, 512 / 1500)[5:]]
    assert len(layer_2) == 16
    assert layer_2[:5] == [(0, 0, 52, 36), (0, 20, 52, 56), (0, 40, 52, 76), (0, 60, 52, 96)] + [
        (36, 0, 88, 36)
    ]
    assert layer_2[-1] == (108, 60, 160, 96)
    # No overlap: the crops tile the image.
    assert [c.box for c in image_crops.build_image_crops((96, 160), 1, 0.0)[1:]] == [
        (0, 0, 80, 48),
        (0, 48, 80, 96),
        (80, 0, 160, 48),
        (80, 48, 160, 96),
    ]
    # A tiny image: empty crops are left out, never produced.
    tiny = image_crops.build_image_crops((1, 3), 2, 0.5)
    assert all(x0 < x1 and y0 < y1 for (x0, y0, x1, y1), _ in tiny)


def test_points_per_side_per_crop_layer():
    assert [layer_points_per_side(32, i, 2) for i in range(4)] == [32, 16, 8, 4]
    assert [layer_points_per_side(20, i, 3) for i in range(3)] == [20, 6, 2]
    assert layer_points_per_side(20, 5, 1) == 20


def test_masks_near_a_cut_are_dropped_not_near_image_edges():
    crop, size = (64, 0, 160, 64), (96, 160)  # right/top are image edges; left/bottom are cuts
    boxes = torch.tensor(  # in the crop's pixels
        [
            [30.0, 10.0, 60.0, 30.0],  # well inside
            [5.0, 10.0, 40.0, 30.0],  # 5 px from the left cut
            [30.0, 10.0, 60.0, 50.0],  # 14 px from the bottom cut
            [60.0, 0.0, 96.0, 30.0],  # on the top and right image edges: kept
            [30.0, 10.0, 60.0, 43.0],  # 21 px from the bottom cut
        ]
    )
    near = image_crops.masks_near_crop_edge(boxes, crop, size, margin=20.0)
    assert near.tolist() == [False, True, True, False, False]
    assert image_crops.masks_near_crop_edge(boxes, crop, size, 0.0).tolist() == [False] * 5
    whole = image_crops.masks_near_crop_edge(boxes, (0, 0, 160, 96), size, 20.0)
    assert not whole.any()


def _rectangles(boxes, ious, size, crop_boxes=None):
    """An AutomaticMaskResult of filled rectangles (XYXY, exclusive ends) in a frame of size."""
    masks = torch.zeros((len(boxes), *size), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = True
    k = len(boxes)
    return AutomaticMaskResult(
        masks=masks,
        iou_scores=torch.tensor(ious, dtype=torch.float32),
        stability_scores=torch.ones(k),
        point_coords=torch.tensor([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes]),
        boxes=torch.tensor(boxes, dtype=torch.float32),
        mask_logits_lowres=torch.arange(k, dtype=torch.float32)[:, None, None].expand(k, 4, 4),
        point_indices=torch.arange(k),
        granularity_indices=torch.zeros(k, dtype=torch.long),
        original_size=size,
        crop_boxes=crop_boxes,
    )


def test_uncrop_puts_a_crops_masks_in_the_image_frame():
    size, crop = (96, 160), (64, 32, 160, 96)
    local = _rectangles([(10, 5, 30, 20)], [0.9], (64, 96))
    full = image_crops.uncrop_result(local, crop, size)
    assert full.masks.shape == (1, *size) and full.original_size == size
    assert full.masks[0, 37:52, 74:94].all() and int(full.masks.sum()) == 20 * 15
    assert full.boxes.tolist() == [[74.0, 37.0, 94.0, 52.0]]
    assert full.point_coords.tolist() == [[84.0, 44.5]]
    assert full.crop_boxes.tolist() == [list(crop)]
    # The crop's low-res logits and grid indices are the crop's own.
    assert torch.equal(full.mask_logits_lowres, local.mask_logits_lowres)
    whole = _rectangles([(0, 0, 5, 5)], [0.5], size)
    assert image_crops.uncrop_result(whole, (0, 0, 160, 96), size) is whole
    records = to_sam_records(full)
    assert records[0]["crop_box"] == [64, 32, 96, 64]  # XYWH
    assert records[0]["bbox"] == [74, 37, 20, 15]


def test_crop_nms_prefers_masks_from_smaller_crops():
    size = (96, 160)
    whole = _rectangles([(10, 10, 50, 50), (100, 10, 150, 40)], [0.9, 0.8], size)
    crop = image_crops.uncrop_result(
        _rectangles([(11, 10, 51, 50), (5, 50, 25, 60)], [0.7, 0.95], (64, 96)),
        (0, 0, 96, 64),
        size,
    )
    merged = image_crops.cat_results([whole, crop])
    assert merged.crop_boxes.tolist() == [[0, 0, 160, 96]] * 2 + [[0, 0, 96, 64]] * 2
    keep = image_crops.crop_nms(merged, 0.7)
    # The crop's copy of the first rectangle (box IoU 39/41) wins over the whole image's
    # despite its lower predicted IoU; records come by decreasing predicted IoU.
    assert keep.tolist() == [3, 1, 2]
    assert merged.select(keep).iou_scores.tolist() == pytest.approx([0.95, 0.8, 0.7])
    assert image_crops.crop_nms(merged, 1.01).tolist() == [3, 0, 1, 2]  # rule off
    assert image_crops.crop_nms(merged.select(torch.zeros(4, dtype=torch.bool)), 0.7).numel() == 0


# ---------------------------------------------------------------- SAM generator on the tiny model

TINY_CONFIG = "configs/tiny/stage1_tiny.yaml"
IMAGE_SIZE = (96, 160)
LAYER_1 = [(0, 0, 96, 64), (0, 32, 96, 96), (64, 0, 160, 64), (64, 32, 160, 96)]
# SamAutomaticMaskGenerator's arguments after the model, in order (segment-anything v1.0).
SAM_ARGUMENTS = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "point_grids": None,
    "min_mask_region_area": 0,
    "output_mode": "binary_mask",
}
OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _tiny_predictor():
    from pathlib import Path

    from uniovseg.inference import UniOVSegPredictor

    torch.manual_seed(0)
    config = str(Path(__file__).resolve().parents[1] / TINY_CONFIG)
    return UniOVSegPredictor.from_config(config, device="cpu")


@pytest.fixture(scope="module")
def tiny_predictor():
    return _tiny_predictor()


@pytest.fixture(scope="module")
def tiny_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : IMAGE_SIZE[0], 0 : IMAGE_SIZE[1]]
    picture = np.stack([xx * 255 // IMAGE_SIZE[1], yy * 255 // IMAGE_SIZE[0], 90 + 0 * xx], -1)
    picture[(yy - 40) ** 2 + (xx - 50) ** 2 < 20**2] = rng.integers(0, 255, 3)
    picture[60:90, 100:150] = rng.integers(0, 255, 3)
    return picture.astype(np.uint8)


def _square_decoder(half_size=10.0):
    """decode_prompts predicting, per point, squares of half size 2 / 6 / ``half_size`` / 14
    input pixels centred on it (output 2 the most confident), on the stride-4 grid."""
    from uniovseg.modeling.mask_decoder import MaskDecoderOutput

    def decode(encoding, prompts, *, prompt_type, **_):
        assert prompt_type == "point"
        size = encoding.padded_size[0] // STRIDE
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) * STRIDE
        ys, xs = centres[:, None], centres[None, :]
        px, py = prompts[0, :, 0, None, None, None], prompts[0, :, 1, None, None, None]
        half = torch.tensor([2.0, 6.0, half_size, 14.0])[None, :, None, None]
        inside = ((xs - px).abs() <= half) & ((ys - py).abs() <= half)
        iou = torch.full((1, prompts.shape[1], 4), -2.0)
        iou[..., 2] = 3.0
        return MaskDecoderOutput(torch.where(inside, 8.0, -8.0)[None], iou, [])

    return decode


def _same_records(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key])
            else:
                assert x[key] == y[key], key


def test_every_sam_argument_is_accepted_by_name_and_position(tiny_predictor):
    import inspect

    from uniovseg.inference import AutomaticMaskGenerator

    parameters = list(inspect.signature(AutomaticMaskGenerator).parameters.values())
    positional = [p.name for p in parameters[1:] if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(SAM_ARGUMENTS)
    generator = AutomaticMaskGenerator(tiny_predictor, **SAM_ARGUMENTS)
    assert generator.engine.points_per_side == 32 and generator.crop_n_layers == 0
    by_position = AutomaticMaskGenerator(tiny_predictor, *SAM_ARGUMENTS.values())
    assert vars(by_position.engine) == vars(generator.engine)
    crops = {**SAM_ARGUMENTS, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2}
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        assert AutomaticMaskGenerator(tiny_predictor, **{**crops, "output_mode": mode})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_n_layers": -1}, "crop_n_layers must be an integer >= 0"),
        ({"crop_n_layers": 1.5}, "crop_n_layers must be an integer >= 0"),
        ({"crop_nms_thresh": NAN}, r"crop_nms_thresh must be a finite number >= 0 .*got nan"),
        ({"crop_nms_thresh": -0.1}, "crop_nms_thresh must be"),
        ({"crop_overlap_ratio": 1.0}, r"crop_overlap_ratio must be a number in \[0, 1\)"),
        ({"crop_overlap_ratio": -0.1}, r"crop_overlap_ratio must be a number in \[0, 1\]"),
        ({"crop_overlap_ratio": INF}, "crop_overlap_ratio must be"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor must be an"),
        ({"crop_n_points_downscale_factor": NAN}, "crop_n_points_downscale_factor must be an"),
        ({"crop_edge_margin": -1.0}, "crop_edge_margin must be a finite number >= 0"),
        (
            {"points_per_side": 4, "crop_n_layers": 3, "crop_n_points_downscale_factor": 2},
            "crop_n_points_downscale_factor=2 leaves no point in the crops of layer 3",
        ),
        ({"output_mode": "polygons"}, "output_mode must be one of"),
        ({"point_grids": [np.zeros((4, 2))]}, "point_grids"),
    ],
)
def test_sam_generator_refuses_bad_crop_arguments_before_touching_the_model(kwargs, message):
    from uniovseg.inference.automatic_mask_generator_api import AutomaticMaskGenerator

    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(object(), **kwargs)


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle", "uncompressed_rle"])
def test_without_crops_the_records_are_the_engines(tiny_predictor, tiny_image, output_mode):
    """crop_n_layers=0 (with SAM's crop arguments set anyhow) is exactly the single-image path:
    the engine's masks on the whole image, unchanged."""
    from uniovseg.inference import AutomaticMaskGenerator
    from uniovseg.inference.automatic_mask_generator_api import automatic_records

    settings = dict(points_per_side=8, box_nms_thresh=1.01, nms_containment_thresh=1.01, **OPEN)
    generator = AutomaticMaskGenerator(
        tiny_predictor,
        crop_nms_thresh=0.1,
        crop_overlap_ratio=0.9,
        crop_n_points_downscale_factor=8,
        output_mode=output_mode,
        **settings,
    )
    records = generator.generate(tiny_image)
    assert not tiny_predictor.is_image_set
    with tiny_predictor.session(tiny_image):
        engine = AutomaticMaskGenerator(tiny_predictor, **settings).engine
        expected = to_sam_records(tiny_predictor.generate_automatic_masks(engine), output_mode)
        result, labels = generator.result_for_current_image()
    current = automatic_records(result, output_mode, labels)
    assert len(expected) > 100  # filters off: many masks compared
    _same_records(records, expected)
    _same_records(current, expected)


# Fake-decoder runs keep only each point's most confident square (IoU logit 3 vs -2).
SQUARES = {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.0}


def _cuts(crop):
    """The sides (x0, y0, x1, y1) of a crop of the test image that are not image sides."""
    x0, y0, x1, y1 = crop
    return [x0 > 0, y0 > 0, x1 < IMAGE_SIZE[1], y1 < IMAGE_SIZE[0]]


def test_crops_run_as_images_and_records_land_in_the_whole_image(
    tiny_predictor, tiny_image, monkeypatch
):
    from uniovseg.inference import AutomaticMaskGenerator

    monkeypatch.setattr(tiny_predictor.model, "decode_prompts", _square_decoder())
    seen = []
    session = type(tiny_predictor).session

    def spy(self, image, *args, **kwargs):
        seen.append(np.array(image))
        return session(self, image, *args, **kwargs)

    monkeypatch.setattr(type(tiny_predictor), "session", spy)
    tiny_predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    generator = AutomaticMaskGenerator(
        tiny_predictor, points_per_side=4, crop_n_layers=1, crop_nms_thresh=1.01, **SQUARES
    )
    records = generator.generate(tiny_image)
    # Each crop was set as an image of its own, the whole image first; the thread's image is
    # the one it had before.
    boxes = [(0, 0, 160, 96), *LAYER_1]
    assert len(seen) == 5
    for crop_image, (x0, y0, x1, y1) in zip(seen, boxes, strict=True):
        assert np.array_equal(crop_image, tiny_image[y0:y1, x0:x1])
    assert tiny_predictor.original_size == (20, 30)
    with pytest.raises(ValueError, match="crop_n_layers=1"):
        generator.result_for_current_image()
    tiny_predictor.reset_image()

    by_crop = {}
    for record in records:
        x, y, w, h = record["crop_box"]
        by_crop.setdefault((x, y, x + w, y + h), []).append(record)
        mask = record["segmentation"]
        assert mask.shape == IMAGE_SIZE and record["area"] == int(mask.sum()) > 0
        assert not mask[:y].any() and not mask[y + h :].any()
        assert not mask[:, :x].any() and not mask[:, x + w :].any()
        # The square is centred on its prompt, in the whole image's pixels (up to the stride-4
        # quantisation of its sides).
        (px, py), (bx, by, bw, bh) = record["point_coords"][0], record["bbox"]
        assert x <= px < x + w and y <= py < y + h
        if bx > 0 and by > 0 and bx + bw < IMAGE_SIZE[1] and by + bh < IMAGE_SIZE[0]:
            assert abs(bx + bw / 2 - px) <= 2.5 and abs(by + bh / 2 - py) <= 2.5
    assert set(by_crop) == set(boxes)
    # The whole image: one 25 px square (half 10 input px x 160 / 128) per grid point, give or
    # take a stride-4 cell (5 px).
    assert len(by_crop[boxes[0]]) == 16
    for record in by_crop[boxes[0]]:
        assert abs(record["bbox"][2] - 25) <= 5 and abs(record["bbox"][3] - 25) <= 5
    # Crops (96 x 64 -> 128 x 85 input) have 15 px squares (cells of 3 px), only those more
    # than 20 px away from the cuts.
    for crop in LAYER_1:
        assert 0 < len(by_crop[crop]) < 16
        for record in by_crop[crop]:
            bx, by, bw, bh = record["bbox"]
            assert abs(bw - 15) <= 3 and abs(bh - 15) <= 3
            sides = (bx, by, bx + bw, by + bh)
            for side, edge, cut in zip(sides, crop, _cuts(crop), strict=True):
                assert not cut or abs(side - edge) > 20
    # Crop (0, 0, 96, 64): grid x 12, 36, 60, 84 and y 8, 24, 40, 56 (cell centres; the
    # release's placement is a fraction of a pixel up/left of them); the squares at x = 84 or
    # y >= 40 end within 20 px of the cuts at x = 96 and y = 64.
    top_left = sorted(tuple(r["point_coords"][0]) for r in by_crop[LAYER_1[0]])
    expected = [(x, y) for x in (12.0, 36.0, 60.0) for y in (8.0, 24.0)]
    np.testing.assert_allclose(top_left, expected, rtol=0, atol=0.5)
    ious = [r["predicted_iou"] for r in records]
    assert ious == sorted(ious, reverse=True)


def test_crop_labels_and_rle_follow_their_masks(tiny_image, monkeypatch):
    """Each crop's masks and labels are those of the crop segmented as an image, moved into the
    whole image; the NMS across crops keeps labels with their masks."""
    from uniovseg.inference import AutomaticMaskGenerator

    predictor = _tiny_predictor()
    monkeypatch.setattr(predictor.model, "decode_prompts", _square_decoder())
    predictor.set_vocabulary("cat; dog, puppy; sky")
    settings = dict(points_per_side=4, crop_edge_margin=0.0, **SQUARES)
    generator = AutomaticMaskGenerator(
        predictor, crop_n_layers=1, output_mode="uncompressed_rle", **settings
    )
    records = generator.generate(tiny_image)
    single = AutomaticMaskGenerator(predictor, **settings)
    alone = {}
    for x0, y0, x1, y1 in [(0, 0, 160, 96), *LAYER_1]:
        alone[(x0, y0, x1, y1)] = single.generate(tiny_image[y0:y1, x0:x1])
    from_crops = 0
    for record in records:
        x, y, w, h = record["crop_box"]
        rle = record["segmentation"]
        mask = mask_util.decode(mask_util.frPyObjects(rle, *rle["size"])).astype(bool)
        assert int(mask.sum()) == record["area"]
        (match,) = [
            r
            for r in alone[(x, y, x + w, y + h)]
            if np.array_equal(r["segmentation"], mask[y : y + h, x : x + w])
        ]
        assert record["category"] == match["category"]
        assert record["score"] == pytest.approx(match["score"], rel=1e-5)
        assert record["predicted_iou"] == match["predicted_iou"]
        from_crops += (w, h) != (160, 96)
    assert from_crops > 0
    # Crops (0, 0, 96, 64) and (0, 32, 96, 96) share the grid rows y = 40 and 56: their squares
    # there are duplicates, and the box NMS across crops (0.7) keeps one of each.
    everything = AutomaticMaskGenerator(
        predictor, crop_n_layers=1, crop_nms_thresh=1.01, **settings
    ).generate(tiny_image)
    assert len(everything) - len(records) >= 8
