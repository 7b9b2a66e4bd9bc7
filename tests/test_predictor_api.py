"""UniOVSegPredictor and AutomaticMaskGenerator on the tiny config (random weights): SAM-shaped
outputs, prompt geometry on a model with known masks, labels, semantic/panoptic outputs that
match the meta-architecture's, errors before any work, cheap imports."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from uniovseg.inference import AutomaticMaskGenerator, UniOVSegPredictor
from uniovseg.inference.image_io import to_rgb_uint8
from uniovseg.inference.prompts import ResizeLongestSide, parse_boxes, parse_points
from uniovseg.modeling.mask_decoder import MaskDecoderOutput

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
OPEN_FILTERS = [
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH",
    "0.0",
]
SAM_KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}
H, W = 50, 90  # not square, not a multiple of anything: exercises resize + padding


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPEN_FILTERS, device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    picture = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1)
    picture[(yy - 25) ** 2 + (xx - 30) ** 2 < 15**2] = rng.integers(0, 255, 3)
    return picture.astype(np.uint8)


@pytest.fixture(scope="module")
def labelled_predictor():
    torch.manual_seed(0)  # the same weights as `predictor`
    labelled = UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPEN_FILTERS, device="cpu")
    labelled.set_vocabulary("cat; dog, puppy; sky", thing_classes=["puppy", 0])
    return labelled


@pytest.fixture()
def ready(predictor, image):
    """The predictor without a vocabulary, with the test image set."""
    assert not predictor.has_vocabulary
    predictor.set_image(image)
    return predictor


@pytest.fixture()
def labelled(labelled_predictor, image):
    """A predictor with the vocabulary cat; dog, puppy; sky (things: dog, cat), image set."""
    labelled_predictor.set_vocabulary("cat; dog, puppy; sky", thing_classes=["puppy", 0])
    labelled_predictor.set_image(image)
    return labelled_predictor


def test_predict_single_point_is_squeezed_like_sam(ready):
    masks, ious, low_res = ready.predict(np.array([[20.0, 30.0]]), np.array([1]))
    size = ready.padded_size[0] // 4
    assert masks.shape == (4, H, W) and masks.dtype == np.bool_
    assert ious.shape == (4,) and ious.dtype == np.float32 and ((ious >= 0) & (ious <= 1)).all()
    assert low_res.shape == (4, size, size) and low_res.dtype == np.float32
    masks_1d, _, _ = ready.predict(np.array([20.0, 30.0]))  # one point as a [2] vector
    np.testing.assert_array_equal(masks_1d, masks)


def test_predict_batches_points_and_single_mask_output_is_the_best_iou(ready):
    points = np.array([[5.0, 5.0], [60.0, 20.0], [89.0, 49.0]])
    masks, ious, _ = ready.predict(points)
    assert masks.shape == (3, 4, H, W) and ious.shape == (3, 4)
    best_masks, best_ious, best_low = ready.predict(points, multimask_output=False)
    assert best_masks.shape == (3, 1, H, W) and best_low.shape[:2] == (3, 1)
    rows = np.arange(3)
    np.testing.assert_array_equal(best_masks[:, 0], masks[rows, ious.argmax(1)])
    np.testing.assert_allclose(best_ious[:, 0], ious.max(1))


def test_predict_boxes_single_and_batched(ready):
    masks, ious, _ = ready.predict(box=np.array([10, 5, 60, 40]))
    assert masks.shape == (1, H, W) and ious.shape == (1,)
    batched, batched_ious, _ = ready.predict(boxes=np.array([[10, 5, 60, 40], [0, 0, 90, 50]]))
    assert batched.shape == (2, 1, H, W) and batched_ious.shape == (2, 1)
    np.testing.assert_array_equal(batched[0], masks)  # one box alone or in a batch: the same
    one, _, _ = ready.predict(boxes=np.array([[10, 5, 60, 40]]))
    assert one.shape == (1, 1, H, W)  # boxes= is never squeezed


def test_box_masks_inside_box_ends_box_masks_at_the_box(predictor, image):
    """TEST.BOX_MASKS_INSIDE_BOX turns box-prompt masks off outside the box (original frame);
    inside the box and for point prompts nothing changes."""
    torch.manual_seed(0)  # the same weights as `predictor`
    inside = UniOVSegPredictor.from_config(
        TINY_CONFIG,
        opts=[*OPEN_FILTERS, "MODEL.UNIOVSEG.TEST.BOX_MASKS_INSIDE_BOX", True],
        device="cpu",
    )
    predictor.set_image(image)
    inside.set_image(image)
    box = np.array([10, 5, 60, 40])
    plain, _, _ = predictor.predict(box=box)
    limited, _, _ = inside.predict(box=box)
    in_box = np.zeros((H, W), dtype=bool)
    in_box[5:40, 10:60] = True
    assert plain[0][~in_box].any()  # random weights spill over the box: the case is not trivial
    assert not limited[0][~in_box].any()
    np.testing.assert_array_equal(limited[0][in_box], plain[0][in_box])
    point = np.array([[30.0, 20.0]])
    np.testing.assert_array_equal(inside.predict(point)[0], predictor.predict(point)[0])


def test_return_logits_thresholds_to_the_masks(ready):
    points = np.array([[20.0, 30.0], [70.0, 10.0]])
    masks, _, _ = ready.predict(points)
    logits, _, _ = ready.predict(points, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == masks.shape
    np.testing.assert_array_equal(logits > 0, masks)


def test_predict_torch_matches_predict_through_the_transform(ready):
    points = np.array([[20.0, 30.0], [70.0, 10.0]], dtype=np.float32)
    masks, ious, low_res = ready.predict(points)
    coords = ready.transform.apply_coords_torch(torch.from_numpy(points), ready.original_size)
    t_masks, t_ious, t_low = ready.predict_torch(coords[:, None], torch.ones(2, 1))
    assert isinstance(t_masks, torch.Tensor) and t_masks.shape == (2, 4, H, W)
    np.testing.assert_array_equal(t_masks.numpy(), masks)
    np.testing.assert_allclose(t_ious.numpy(), ious)
    np.testing.assert_allclose(t_low.numpy(), low_res)
    boxes = ready.transform.apply_boxes_torch(torch.tensor([[10.0, 5, 60, 40]]), (H, W))
    b_masks, _, _ = ready.predict_torch(boxes=boxes)
    np.testing.assert_array_equal(b_masks.numpy()[0], ready.predict(box=[10, 5, 60, 40])[0])


def test_transform_matches_the_model_resize(ready):
    transform = ResizeLongestSide(ready.model.test_input_size)
    assert transform.input_size((H, W)) == ready.input_size
    sx, sy = transform.scale_xy((H, W))
    assert sx == pytest.approx(ready.input_size[1] / W) and sy == pytest.approx(
        ready.input_size[0] / H
    )
    np.testing.assert_allclose(transform.apply_boxes([[0, 0, W, H]], (H, W)), [[0, 0, 128, 71]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"point_coords": np.array([[95.0, 10.0]])}, "outside the image"),
        ({"point_coords": np.array([[-1.0, 10.0]])}, "outside the image"),
        ({"boxes": np.array([[0, 0, 91, 10]])}, "outside the image"),
        ({"box": np.array([40, 5, 10, 40])}, "x1 <= x2"),
        ({"point_coords": np.array([[1.0, 2.0, 3.0]])}, "[N, 2]"),
        ({"point_coords": np.array([[1.0, np.nan]])}, "NaN"),
        ({"point_coords": [["a", "b"]]}, "numeric"),
        ({"box": np.array([[1, 2, 3, 4], [1, 2, 3, 4]])}, "boxes=[N, 4]"),
        ({"boxes": np.array([1, 2, 3, 4])}, "[N, 4]"),
        ({"point_coords": np.array([[1.0, 2.0]]), "point_labels": np.array([0])}, "positive"),
        ({"point_coords": np.array([[1.0, 2.0]]), "point_labels": np.array([1, 1])}, "one label"),
        ({"point_coords": np.array([[1.0, 2.0]]), "box": np.array([1, 2, 3, 4])}, "one box"),
        ({"point_coords": np.array([[1.0, 2.0]]), "mask_input": np.zeros((1, 32, 32))}, "mask"),
        ({}, "give point_coords"),
    ],
)
def test_bad_prompts_raise_before_any_decoding(ready, kwargs, message):
    calls = []
    hook = ready.model.sem_seg_head.predictor.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=None) as error:
            ready.predict(**kwargs)
    finally:
        hook.remove()
    assert message in str(error.value)
    assert calls == []


def test_predict_torch_rejects_prompts_outside_the_input_frame(ready):
    with pytest.raises(ValueError, match="outside the input frame"):
        ready.predict_torch(torch.tensor([[127.0, 100.0]]))  # in the padding, below the image
    with pytest.raises(ValueError, match="either point_coords or boxes"):
        ready.predict_torch()


def test_set_image_validates_and_calls_need_an_image(predictor):
    fresh = UniOVSegPredictor(predictor.model)
    with pytest.raises(ValueError, match="set_image"):
        fresh.predict(np.array([[1.0, 1.0]]))
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3))):
        with pytest.raises(ValueError, match="to_rgb_uint8"):
            fresh.set_image(bad)
    # the hint works: any of them converts to what set_image takes
    fresh.set_image(to_rgb_uint8(np.zeros((8, 8, 4), np.uint8)))
    assert fresh.original_size == (8, 8)


def test_bgr_input_equals_rgb_input(predictor, image):
    predictor.set_image(image)
    rgb = predictor.predict(np.array([[20.0, 30.0]]))[0]
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(predictor.predict(np.array([[20.0, 30.0]]))[0], rgb)


def test_backbone_runs_once_per_image(labelled):
    calls = []
    hook = labelled.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        labelled.set_image(np.full((40, 60, 3), 120, np.uint8))
        labelled.predict(np.array([[10.0, 10.0]]))
        labelled.predict_with_labels(boxes=np.array([[0, 0, 30, 30]]))
        labelled.generate_automatic_masks()
        labelled.predict_semantic()
        labelled.predict_panoptic()
        AutomaticMaskGenerator(labelled).result_for_current_image()
    finally:
        hook.remove()
    assert calls == [1] and labelled.original_size == (40, 60)


# --------------------------------------------------------------------- known geometry
def _fake_decoder(model, half_sizes=(2.0, 6.0, 10.0, 14.0), best=2):
    """decode_prompts that predicts, on the stride-4 grid of the padded input, squares of the
    given half sizes (input pixels) around each point, or the box itself; IoU logits make
    output `best` the most confident."""
    prompt_encoder = model.sem_seg_head.predictor.prompt_encoder

    def decode(encoding, prompts, *, prompt_type, **_):
        size = encoding.decoder_memory.mask_features.shape[-1]
        stride = encoding.padded_size[0] / size
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
        ys, xs = centres[:, None], centres[None, :]
        if prompt_type == "point":
            px, py = prompts[0, :, 0, None, None, None], prompts[0, :, 1, None, None, None]
            half = torch.tensor(half_sizes)[None, :, None, None]
            inside = ((xs - px).abs() <= half) & ((ys - py).abs() <= half)
        else:
            b = prompts[0, :, None, None, None, :]
            inside = (xs >= b[..., 0]) & (xs <= b[..., 2]) & (ys >= b[..., 1]) & (ys <= b[..., 3])
        logits = torch.where(inside, 8.0, -8.0)[None]
        num_outputs = logits.shape[2]
        iou = torch.full((1, prompts.shape[1], num_outputs), -2.0)
        iou[..., min(best, num_outputs - 1)] = 3.0
        return MaskDecoderOutput(logits, iou, [])

    assert prompt_encoder is not None
    return decode


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


@pytest.mark.parametrize("size", [(60, 150), (150, 60)])
def test_masks_land_where_the_prompts_are_in_the_original_image(predictor, monkeypatch, size):
    monkeypatch.setattr(predictor.model, "decode_prompts", _fake_decoder(predictor.model))
    predictor.set_image(np.zeros((*size, 3), np.uint8))
    scale = max(size) / predictor.model.test_input_size  # input pixels -> original pixels
    # The fake masks are quantised on the stride-4 grid: edges move by up to half a cell
    # (2 input px) either way.
    tolerance = 2.0 * scale + 1.0
    box = np.array([30.0, 12.0, 50.0, 48.0]) if size[0] < size[1] else np.array([12, 30, 48, 110])
    (mask,), _, _ = predictor.predict(box=box)
    np.testing.assert_allclose(_bbox(mask), box, atol=tolerance)
    point = np.array([size[1] * 0.7, size[0] * 0.4])
    masks, ious, _ = predictor.predict(point[None])
    for k, half in enumerate((2.0, 6.0, 10.0, 14.0)):
        half = half * scale
        expected = np.concatenate([point - half, point + half])
        np.testing.assert_allclose(_bbox(masks[k]), expected, atol=tolerance)
    assert ious.argmax() == 2
    (best,), _, _ = predictor.predict(point[None], multimask_output=False)
    np.testing.assert_array_equal(best, masks[2])


# --------------------------------------------------------------------- vocabulary
def test_labels_are_the_most_similar_class_of_each_mask(labelled):
    ready = labelled
    assert ready.class_names == ["cat", "dog", "sky"]
    out = ready.predict_with_labels(np.array([[20.0, 30.0], [70.0, 10.0]]))
    assert out.labels.shape == (2, 4) and out.labels.dtype == np.int64
    assert out.scores.shape == (2, 4) and out.scores.dtype == np.float32
    assert out.stability_scores.shape == (2, 4) and out.class_names == ["cat", "dog", "sky"]
    # independent recomputation: region embeddings of the same low-res masks vs text embeddings
    model = ready.model
    low_res = torch.from_numpy(out.low_res_logits).flatten(0, 1)
    embeds = model.region_embeddings(ready.encoding, low_res.sigmoid())
    text, synonym_class = model.open_vocab.text_classifier.class_embeddings()
    similarity = embeds @ text.T  # [K, synonyms]
    per_class = torch.stack([similarity[:, synonym_class == c].max(1).values for c in range(3)], 1)
    np.testing.assert_array_equal(out.labels.reshape(-1), per_class.argmax(1).numpy())


def test_without_vocabulary_labels_are_none_and_open_vocab_calls_explain(ready):
    out = ready.predict_with_labels(np.array([[20.0, 30.0]]))
    assert out.labels is None and out.scores is None and out.masks.shape == (4, H, W)
    for call in (ready.predict_semantic, ready.predict_panoptic):
        with pytest.raises(ValueError, match="set_vocabulary"):
            call()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ready.set_vocabulary(["cat", "dog"], thing_classes=["horse"])
    assert not ready.has_vocabulary


def test_semantic_and_panoptic_match_the_meta_architecture(labelled, image):
    ready = labelled
    model = ready.model
    assert model.open_vocab.thing_classes == {0, 1}
    with torch.no_grad():
        (expected,) = model([{"image": torch.from_numpy(image).permute(2, 0, 1)}])
    result = ready.generate_automatic_masks()
    assert len(result) > 0
    torch.testing.assert_close(result.masks, expected["automatic_masks"].masks)
    semantic = ready.predict_semantic()
    assert semantic.labels.shape == (H, W) and semantic.labels.dtype == np.int64
    np.testing.assert_array_equal(semantic.labels, expected["sem_seg"].argmax(0).numpy())
    panoptic_seg, segments_info = ready.predict_panoptic()
    np.testing.assert_array_equal(panoptic_seg, expected["panoptic_seg"][0].numpy())
    assert [{k: v for k, v in s.items() if k != "category"} for s in segments_info] == expected[
        "panoptic_seg"
    ][1]
    assert all(s["category"] == ready.class_names[s["category_id"]] for s in segments_info)


# --------------------------------------------------------------------- automatic generator
def test_automatic_generator_returns_sam_records(ready, labelled, image):
    generator = AutomaticMaskGenerator(
        ready, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = generator.generate(image)
    assert records, "open filters must keep masks"
    ious = [r["predicted_iou"] for r in records]
    assert ious == sorted(ious, reverse=True)
    for record in records:
        assert set(record) == SAM_KEYS
        mask = record["segmentation"]
        assert mask.dtype == np.bool_ and mask.shape == (H, W)
        assert record["area"] == int(mask.sum()) and record["crop_box"] == [0, 0, W, H]
        x, y, w, h = record["bbox"]
        assert mask[y : y + h, x : x + w].sum() == record["area"]
    labelled.set_vocabulary(["cat", "dog, puppy"])
    rle_generator = AutomaticMaskGenerator(
        labelled,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode="coco_rle",
    )
    rle_records = rle_generator.generate(image)
    assert len(rle_records) == len(records)  # same weights: the same masks
    for record, plain in zip(rle_records, records, strict=True):
        assert set(record) == SAM_KEYS | {"category", "category_id", "score"}
        np.testing.assert_array_equal(
            mask_util.decode(record["segmentation"]).astype(bool), plain["segmentation"]
        )
        assert record["category"] in ("cat", "dog") and 0.0 <= record["score"] <= 1.0


def test_automatic_generator_thresholds_and_unsupported_sam_options(ready, image):
    strict = AutomaticMaskGenerator(ready, points_per_side=4, pred_iou_thresh=1.01)
    assert strict.generate(image) == []
    with pytest.raises(ValueError, match="point_grids"):
        AutomaticMaskGenerator(ready, point_grids=[np.zeros((4, 2))])
    with pytest.raises(ValueError, match="output_mode"):
        AutomaticMaskGenerator(ready, output_mode="polygons")


# --------------------------------------------------------------------- building, imports
def test_from_config_errors():
    with pytest.raises(ValueError, match="KEY VALUE"):
        UniOVSegPredictor.from_config(TINY_CONFIG, opts=["MODEL.WEIGHTS"])
    with pytest.raises(ValueError, match="cannot load weights"):
        UniOVSegPredictor.from_config(TINY_CONFIG, weights="/nonexistent/model.pth", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            UniOVSegPredictor.from_config(TINY_CONFIG, device="cuda")


def test_prompt_strings_parse():
    np.testing.assert_array_equal(parse_points(" 1,2 ; 3.5,4;"), [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(parse_boxes("1,2,3,4"), [[1, 2, 3, 4]])
    for bad in ("", "1,2,3", "1,x", "inf,1"):
        with pytest.raises(ValueError):
            parse_points(bad)


def test_package_import_is_light_and_has_no_cycle():
    code = (
        "import sys, uniovseg.inference as inf; assert 'torch' not in sys.modules, 'torch'; "
        "from uniovseg.inference.predictor import UniOVSegPredictor; "
        "assert inf.UniOVSegPredictor is UniOVSegPredictor; "
        "from uniovseg.inference import AutomaticMaskGenerator, read_image"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_automatic_mask_gives_empty_labelled_outputs(labelled, image):
    from uniovseg.modeling.automatic_mask_engine import AutomaticMaskGenerationEngine

    nothing = AutomaticMaskGenerationEngine(points_per_side=2, pred_iou_thresh=1.01)
    assert len(labelled.generate_automatic_masks(nothing)) == 0
    semantic = labelled.predict_semantic(nothing)
    assert semantic.labels.shape == (H, W) and (semantic.labels == -1).all()
    panoptic_seg, segments_info = labelled.predict_panoptic(nothing)
    assert segments_info == [] and not panoptic_seg.any()
    strict = AutomaticMaskGenerator(labelled, points_per_side=2, pred_iou_thresh=1.01)
    assert strict.generate(image) == []


@pytest.mark.cuda
def test_cuda_predictor_matches_cpu(predictor, image):
    torch.manual_seed(0)
    gpu = UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPEN_FILTERS, device="cuda")
    assert gpu.device.type == "cuda"
    points = np.array([[20.0, 30.0], [70.0, 10.0]])
    predictor.set_image(image)
    gpu.set_image(image)
    cpu_masks, cpu_ious, _ = predictor.predict(points)
    gpu_masks, gpu_ious, _ = gpu.predict(points)
    assert isinstance(gpu_masks, np.ndarray) and gpu_masks.dtype == np.bool_
    assert (gpu_masks == cpu_masks).mean() > 0.99
    np.testing.assert_allclose(gpu_ious, cpu_ious, atol=1e-2)
    records = AutomaticMaskGenerator(gpu, points_per_side=4, pred_iou_thresh=0.0).generate(image)
    assert all(isinstance(r["segmentation"], np.ndarray) for r in records)


def test_bf16_predictor_returns_float32_outputs(image):
    """MODEL.UNIOVSEG.TEST.AUTOCAST bf16 also applies to the predictor's network calls."""
    torch.manual_seed(0)
    half = UniOVSegPredictor.from_config(
        TINY_CONFIG, opts=[*OPEN_FILTERS, "MODEL.UNIOVSEG.TEST.AUTOCAST", "bf16"], device="cpu"
    )
    half.set_vocabulary("cat; dog, puppy; sky")
    half.set_image(image)
    masks, ious, logits = half.predict(point_coords=np.array([[30, 25]]), return_logits=True)
    assert masks.shape == (4, H, W) and ious.dtype == np.float32 and logits.dtype == np.float32
    labelled = half.predict_with_labels(boxes=np.array([[10, 10, 50, 40]]))
    assert labelled.labels.shape == (1, 1) and labelled.scores.dtype == np.float32
    result = half.generate_automatic_masks()
    assert result.mask_logits_lowres.dtype == torch.float32
    assert half.predict_semantic().labels.shape == (H, W)
