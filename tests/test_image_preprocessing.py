"""Preprocessing matches the release's documented transforms, and every path shares it.

The reference is built here from detectron2's own transforms, as the release's demo calls them:
``ResizeShortestEdge(S, S)`` (``ResizeTransform``: PIL bilinear on the uint8 image) and
``FixedSizeCrop((S, S))`` (bottom/right padding with grey 128), then CLIP normalisation. Real
photos come from ../shared/data (skipped when absent); odd shapes are generated.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import uniovseg.modeling  # noqa: F401  (registers UniOVSeg)
from uniovseg.config import load_config
from uniovseg.data.caption_mapper import CaptionDatasetMapper
from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper
from uniovseg.data.test_image_mapper import TestImageMapper
from uniovseg.data.transforms import ScaleJitterCrop
from uniovseg.inference.prompts import ResizeLongestSide
from uniovseg.modeling.clip_backbone import CLIPConvNeXtBackbone
from uniovseg.modeling.image_frame import inference_frame, resize_shortest_edge_shape

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
# A downscaled SA-1B photo (2250 x 1500) and an ADE20K one whose short side rounds at .507.
REAL_PHOTOS = ("sa_1272468.jpg", "ADE_val_00001433.jpg")
# (H, W): portrait, very wide, 1 pixel high, 1 pixel high that detectron2 would round to 0 rows,
# smaller than the input, a side at exactly .5 (detectron2 rounds half up, Python to even), and
# an image that needs no resize.
ODD_SHAPES = [(300, 41), (7, 2000), (1, 500), (1, 5000), (3, 2), (5, 2048), (1024, 700)]


def _photo(name: str) -> np.ndarray:
    path = PHOTOS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return detection_utils.read_image(str(path), format="RGB")


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: resampling differences cannot hide in flat regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 255 / max(1, width - 1), yy * 255 / max(1, height - 1), 0 * xx], -1)
    return np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)


def release_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """The release demo's uint8 input [S, S, 3], from detectron2's transforms."""
    height, width = image.shape[:2]
    if min(T.ResizeShortestEdge.get_output_shape(height, width, size, size)) >= 1:
        augmentations = [T.ResizeShortestEdge(size, size), T.FixedSizeCrop((size, size))]
        out, _ = T.apply_transform_gens(augmentations, image)
        return out
    # detectron2 rounds a 1 x 5000 image to 0 rows, which PIL refuses (the release would fail);
    # ours keeps 1 row: the same transforms with that size.
    new_w = T.ResizeShortestEdge.get_output_shape(height, width, size, size)[1]
    resized = T.ResizeTransform(height, width, 1, new_w).apply_image(image)
    return T.FixedSizeCrop((size, size)).get_transform(resized).apply_image(resized)


def release_input(image: np.ndarray, size: int, model) -> torch.Tensor:
    """``release_pixels`` normalised with CLIP's mean/std: [1, 3, S, S] float32."""
    pixels = torch.from_numpy(np.ascontiguousarray(release_pixels(image, size).transpose(2, 0, 1)))
    return ((pixels.float() - model.pixel_mean) / model.pixel_std)[None]


def _model(input_size: int, opts: tuple[str, ...] = ()):
    cfg = load_config(
        TINY_CONFIG,
        ["MODEL.UNIOVSEG.TEST.INPUT_SIZE", str(input_size), "MODEL.DEVICE", "cpu", *opts],
    )
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


@pytest.fixture(scope="module")
def model_1024():
    return _model(1024)[0]


def _preprocessed(model, image: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    images, frame = model.preprocess_image(tensor)
    assert frame.padded_size == (model.test_input_size,) * 2
    return images


# ----------------------------------------------------------------- geometry and pixels


def test_the_valid_size_is_detectron2s_resize_shortest_edge():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(2000)]
    sizes += [(h, w) for h, w in ODD_SHAPES if min(h, w) > 1] + [(865, 1500), (1500, 2250)]
    for height, width in sizes:
        for short, cap in [(1024, 1024), (800, 1333), (640, 2560), (128, 128)]:
            expected = T.ResizeShortestEdge.get_output_shape(height, width, short, cap)
            got = resize_shortest_edge_shape(height, width, short_side=short, max_size=cap)
            assert got == expected, (height, width, short, cap)
        if min(T.ResizeShortestEdge.get_output_shape(height, width, 1024, 1024)) >= 1:
            frame = inference_frame((height, width), 1024)
            assert frame.valid_size == T.ResizeShortestEdge.get_output_shape(
                height, width, 1024, 1024
            )
    # Half up at .5, as detectron2 (Python's round() would give 2 rows here).
    assert inference_frame((5, 2048), 1024).valid_size == (3, 1024)
    assert inference_frame((1, 5000), 1024).valid_size == (1, 1024)  # never 0 rows


def test_no_config_sets_test_sizes_that_its_resize_mode_ignores():
    """INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST are read only under RESIZE_MODE "shortest_edge": a
    config that sets them otherwise says a resolution that the model never uses."""
    import yaml

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if {"MIN_SIZE_TEST", "MAX_SIZE_TEST"} & set(raw.get("INPUT") or {}):
            mode = load_config(str(path)).MODEL.UNIOVSEG.TEST.RESIZE_MODE
            assert mode == "shortest_edge", path


@pytest.mark.parametrize("name", REAL_PHOTOS)
def test_real_photo_input_equals_the_releases_transforms(model_1024, name):
    image = _photo(name)
    expected = release_input(image, 1024, model_1024)
    assert torch.equal(_preprocessed(model_1024, image), expected)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_odd_shapes_equal_the_releases_transforms(model_1024, shape):
    image = _random_image(*shape)
    got = _preprocessed(model_1024, image)
    assert torch.equal(got, release_input(image, 1024, model_1024))
    # The padding is grey 128 in pixel space: normalised, it is not 0 (the mean colour).
    height, width = inference_frame(shape, 1024).valid_size
    grey = (128.0 - model_1024.pixel_mean) / model_1024.pixel_std
    if height < 1024:
        assert torch.equal(got[0, :, height:], grey.expand(3, 1024 - height, 1024))
    if width < 1024:
        assert torch.equal(got[0, :, :, width:], grey.expand(3, 1024, 1024 - width))


def test_prompts_map_as_detectron2s_resize_transform():
    for height, width in [(1500, 2250), (865, 1500), (300, 41), (5, 2048)]:
        new_h, new_w = inference_frame((height, width), 1024).valid_size
        coords = np.array([[0.0, 0.0], [width / 3, height / 7], [width, height]], np.float32)
        expected = T.ResizeTransform(height, width, new_h, new_w).apply_coords(coords.copy())
        got = ResizeLongestSide(1024).apply_coords(coords, (height, width))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


# ----------------------------------------------------------------- training mappers


def test_stage1_training_image_is_detectron2s_resize_crop_flip_pad():
    """ResizeScale + FixedSizeCrop + flip of the release's recipe, on the uint8 image."""
    image = _random_image(150, 225, seed=3)
    for geometry in [
        ScaleJitterCrop(150, 225, 120, 180, 0, 0, 120, 180, 256, False),  # shrink, pad
        ScaleJitterCrop(150, 225, 171, 256, 5, 0, 128, 128, 128, True),  # grow, crop, flip
    ]:
        resized = T.ResizeTransform(150, 225, geometry.resized_h, geometry.resized_w).apply_image(
            image
        )
        window = T.CropTransform(
            geometry.x0, geometry.y0, geometry.crop_w, geometry.crop_h
        ).apply_image(resized)
        if geometry.flip:
            window = T.HFlipTransform(window.shape[1]).apply_image(window)
        pad = T.PadTransform(
            0, 0, geometry.size - geometry.crop_w, geometry.size - geometry.crop_h, pad_value=128
        )
        np.testing.assert_array_equal(geometry.apply_image(image, 128.0), pad.apply_image(window))


def test_caption_training_image_is_the_test_preprocessing(tmp_path):
    from PIL import Image

    image = _random_image(90, 61, seed=4)
    Image.fromarray(image).save(tmp_path / "a.png")
    mapper = CaptionDatasetMapper(crop_size=128, entity_source="manifest")
    out = mapper({"file_name": str(tmp_path / "a.png"), "caption": "x", "entities": ["cat"]})
    expected = release_pixels(image, 128).transpose(2, 0, 1)
    assert np.array_equal(out["image"].numpy(), expected)
    assert out["image_size"] == inference_frame((90, 61), 128).valid_size


# ----------------------------------------------------------------- one path for every caller


def test_predictor_generator_demo_and_evaluators_feed_the_network_the_same_input(
    tmp_path, monkeypatch
):
    """The backbone sees one tensor for one photo, whichever entry point it came through, and
    that tensor is the release's."""
    from uniovseg.inference import AutomaticMaskGenerator, UniOVSegPredictor
    from uniovseg.inference.demo_cli import main as demo_main

    source = PHOTOS / "ADE_val_00001632.jpg"  # 400 x 222, real
    path = tmp_path / "photo.png"
    from PIL import Image

    if source.is_file():
        Image.open(source).convert("RGB").save(path)
    else:
        Image.fromarray(_random_image(222, 400, seed=5)).save(path)
    image = detection_utils.read_image(str(path), format="RGB")

    seen = {}
    forward = CLIPConvNeXtBackbone.forward

    def spy(self, images):
        seen.setdefault(caller, []).append(images.detach().clone())
        return forward(self, images)

    monkeypatch.setattr(CLIPConvNeXtBackbone, "forward", spy)
    # Random weights: open the filters so that the demo has masks to draw; a 2 x 2 grid.
    opts = ["MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "2"]
    opts += ["MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH", "0.0"]
    opts += ["MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH", "0.0"]
    model, cfg = _model(128, tuple(opts))

    caller = "predictor"
    predictor = UniOVSegPredictor.from_config(TINY_CONFIG, opts=opts, device="cpu")
    predictor.set_image(image)
    caller = "automatic mask generator"
    AutomaticMaskGenerator(predictor).generate(image)
    caller = "demo"
    argv = ["--config-file", TINY_CONFIG, "--input", str(path), "--output", str(tmp_path / "o")]
    assert demo_main([*argv, "--task", "automatic", "--device", "cpu", "--opts", *opts]) == 0
    caller = "semantic/panoptic evaluation"
    model([TestImageMapper()({"file_name": str(path)})])
    caller = "promptable evaluation"
    box = [[20, 20, 120, 20, 120, 90, 20, 90]]
    record = {"file_name": str(path), "annotations": [{"segmentation": box, "iscrowd": 0}]}
    model([PromptableEvalMapper(cfg)(record)])

    expected = release_input(image, 128, model)
    assert set(seen) == {
        "predictor",
        "automatic mask generator",
        "demo",
        "semantic/panoptic evaluation",
        "promptable evaluation",
    }
    for name, inputs in seen.items():
        for images in inputs:
            assert torch.equal(images, expected), name
