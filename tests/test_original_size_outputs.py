"""Outputs of a downscaled image in the original image's pixels: OutputUpscaler on hand-made
logits and label maps, and the demo end to end on a 3000 x 1000 image read with --max-side 512
(tiny config, random weights)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.inference import demo_cli
from uniovseg.inference.predictions import MaskLabels, PromptPrediction
from uniovseg.inference.upscaling import OutputUpscaler
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult
from uniovseg.modeling.mask_postprocessing import masks_to_boxes

# A processed image of 100 x 300 (original 1000 x 3000) resized to 32 x 96 in a 96 x 96 input
# whose low-res logits are 24 x 24 (stride 4).
UPSCALER = OutputUpscaler(
    processed_size=(100, 300),
    original_size=(1000, 3000),
    valid_size=(32, 96),
    padded_size=(96, 96),
)


def _left_half_logits(num: int) -> torch.Tensor:
    """[num, 24, 24] logits: positive on the left half of the valid rows 0..7 (input 0..31)."""
    logits = torch.full((num, 24, 24), -10.0)
    logits[:, :8, :12] = 10.0
    return logits


def test_label_maps_take_the_nearest_processed_pixel():
    upscaler = OutputUpscaler((2, 3), (4, 9), (2, 3), (3, 3))
    labels = np.array([[0, 1, 2], [3, 4, 5]])
    up = upscaler.label_map(labels)
    assert up.shape == (4, 9)
    np.testing.assert_array_equal(up[:, ::3], np.repeat(labels, 2, axis=0))
    np.testing.assert_array_equal(up[0], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    identity = OutputUpscaler((2, 3), (2, 3), (2, 3), (3, 3))
    assert identity.label_map(labels) is labels
    with pytest.raises(ValueError, match="processed size"):
        upscaler.label_map(np.zeros((4, 9)))


def test_coordinates_scale_per_axis():
    np.testing.assert_allclose(UPSCALER.points([[150.0, 50.0]]), [[1500.0, 500.0]])
    np.testing.assert_allclose(UPSCALER.boxes([[0, 0, 300, 100]]), [[0, 0, 3000, 1000]])


def test_prompted_masks_are_rendered_from_logits_at_the_original_size():
    lowres = _left_half_logits(2).reshape(1, 2, 24, 24)
    prediction = PromptPrediction(
        masks=np.zeros((1, 2, 100, 300), bool),
        iou_predictions=np.array([[0.9, 0.8]], np.float32),
        low_res_logits=lowres.numpy(),
        stability_scores=np.ones((1, 2), np.float32),
    )
    full = UPSCALER.prompt_prediction(prediction)
    assert full.masks.shape == (1, 2, 1000, 3000) and full.masks.dtype == bool
    # left half of the image (the valid region's left half), every row
    assert full.masks[0, 0, :, :1400].all() and not full.masks[0, 0, :, 1600:].any()
    assert full.iou_predictions is prediction.iou_predictions


def test_automatic_records_are_in_original_pixels():
    num = 3
    processed = torch.zeros((num, 100, 300), dtype=torch.bool)
    processed[:, :, :150] = True
    result = AutomaticMaskResult(
        masks=processed,
        iou_scores=torch.tensor([0.9, 0.8, 0.7]),
        stability_scores=torch.ones(num),
        point_coords=torch.tensor([[10.0, 20.0]] * num),
        boxes=masks_to_boxes(processed),
        mask_logits_lowres=_left_half_logits(num),
        point_indices=torch.arange(num),
        granularity_indices=torch.zeros(num, dtype=torch.long),
        original_size=(100, 300),
    )
    labels = MaskLabels(np.array([0, 1, 0]), np.array([0.5, 0.6, 0.7]), ["cat", "dog"])
    records = UPSCALER.automatic_records(result, labels)
    assert [r["category"] for r in records] == ["cat", "dog", "cat"]
    for record in records:
        decoded = mask_util.decode(record["segmentation"])
        assert record["segmentation"]["size"] == [1000, 3000]
        assert record["area"] == int(decoded.sum())
        assert record["bbox"] == [0, 0, 1500, 1000]
        assert record["point_coords"] == [[100.0, 200.0]]
        assert record["crop_box"] == [0, 0, 3000, 1000]


# --------------------------------------------------------------------- demo end to end
WIDE = (1000, 3000)  # H, W: read downscaled to 171 x 512 with --max-side 512
OPTS = [
    "--opts",
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE",
    "4",
]


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    height, width = WIDE
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255 * xx // width
    image[..., 1] = 255 * yy // height
    image[(xx - 2200) ** 2 + (yy - 500) ** 2 < 300**2] = (200, 40, 40)
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    Image.fromarray(image).save(path)
    return path


def _run(image, out, *extra):
    argv = ["--config-file", "tiny/stage2_tiny.yaml", "--input", image, "--output", out]
    argv += ["--max-side", "512", "--device", "cpu", "--vocab", "cat; dog; sky", *extra]
    assert demo_cli.main([str(a) for a in argv]) == 0
    info = json.loads((out / "wide.json").read_text())
    assert (info["height"], info["width"]) == WIDE
    assert (info["processed_height"], info["processed_width"]) == (171, 512)
    assert info["records"]
    for record in info["records"]:
        assert record["segmentation"]["size"] == list(WIDE)
        decoded = mask_util.decode(record["segmentation"])
        assert record["area"] == int(decoded.sum())
        if record["area"]:
            rows, cols = np.nonzero(decoded)
            x, y, w, h = record["bbox"]
            assert [x, y, x + w, y + h] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert record["crop_box"] == [0, 0, WIDE[1], WIDE[0]]
    return info


def test_demo_writes_records_and_label_maps_of_a_downscaled_image_at_its_original_size(
    wide_image, tmp_path
):
    out = tmp_path / "out"
    info = _run(wide_image, out, "--task", "panoptic", "--thing-classes", "dog", *OPTS)
    points = np.array([r["point_coords"][0] for r in info["records"]])
    assert points[:, 0].max() > 512 and points[:, 1].max() > 171  # original pixels
    assert (
        (points >= 0).all() and (points[:, 0] <= WIDE[1]).all() and (points[:, 1] <= WIDE[0]).all()
    )
    for key in ("semantic_file", "semantic_color_file", "panoptic_file"):
        with Image.open(out / info[key]) as im:
            assert im.size == WIDE[::-1], key
    with Image.open(out / "wide_overlay.png") as im:
        assert im.size[0] == 512  # the picture stays at the processed size (+ legend)


def test_demo_prompts_and_their_masks_stay_in_original_pixels(wide_image, tmp_path):
    out = tmp_path / "out"
    info = _run(
        wide_image,
        out,
        "--task",
        "prompted",
        "--points",
        "2200,500;100,900",
        "--boxes",
        "1800,150,2700,850",
    )
    points = [r for r in info["records"] if "point_coords" in r]
    boxes = [r for r in info["records"] if "box" in r]
    assert [r["point_coords"] for r in points] == [[[2200.0, 500.0]], [[100.0, 900.0]]]
    assert [r["prompt_index"] for r in points + boxes] == [0, 1, 2]  # numbered across kinds
    assert boxes[0]["box"] == [1800.0, 150.0, 2700.0, 850.0]
