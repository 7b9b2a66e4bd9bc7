"""Inputs of the benchmarks: photos (or a synthetic stand-in), synthetic training examples and
synthetic mask logits for models with random weights.

Random weights make the prompt decoder predict masks that the automatic generator's filters and
NMS reduce to almost nothing (often a single mask), so every stage after the decoder would be
timed on an empty workload. :class:`SyntheticMaskLogits` replaces the decoder's point-prompt
outputs (after the real decoder has run, so its cost is measured) with plausible
multi-granularity blobs centred on the prompts: the filters, NMS, region embedding and assembly
then see a realistic number of masks (about 60 after NMS at the paper's 20 x 20 grid on a
1024 x 768 image). Every candidate passes the IoU and stability filters: an upper bound of the
filtering and NMS work (a trained model's filters drop some).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniovseg.modeling.automatic_mask_engine import AutomaticMaskGenerationEngine
from uniovseg.modeling.inference_stages import stage
from uniovseg.modeling.point_grid import build_point_grid

__all__ = [
    "BenchmarkImage",
    "SyntheticLogitsEngine",
    "SyntheticMaskLogits",
    "caption_training_example",
    "load_benchmark_images",
    "sa1b_training_example",
    "synthetic_photo",
    "use_synthetic_masks",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class BenchmarkImage:
    """One benchmark input.

    Attributes:
        name: File name, or ``"synthetic"``.
        image: uint8 [3, H, W] RGB (after the optional resize).
        source_size: (H, W) of the file before resizing.
    """

    name: str
    image: torch.Tensor
    source_size: tuple[int, int]


def synthetic_photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A deterministic photo-like uint8 [3, H, W] RGB image: smooth gradients, a few flat
    ellipses and rectangles (objects with edges) and mild noise."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys /= max(height - 1, 1)
    xs /= max(width - 1, 1)
    image = np.stack([80 + 100 * ys, 120 + 60 * xs, 160 - 80 * ys], axis=0)
    for _ in range(12):
        colour = rng.uniform(0, 255, size=(3, 1, 1)).astype(np.float32)
        cy, cx = rng.uniform(0, 1, size=2)
        ry, rx = rng.uniform(0.05, 0.3, size=2)
        if rng.random() < 0.5:
            inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
        image = np.where(inside[None], colour, image)
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    return torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8))


def _resize_longest(image, longest_side: int):
    """PIL image -> PIL image whose longest side is ``longest_side`` (aspect kept)."""
    from PIL import Image

    width, height = image.size
    scale = longest_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.BILINEAR)  # PIL's bilinear is antialiased when shrinking


def load_benchmark_images(
    sources: Sequence[str | Path],
    *,
    num_images: int,
    longest_side: int = 0,
    pattern: str = "*",
) -> list[BenchmarkImage]:
    """Reads up to ``num_images`` photos (sorted by path) from files and folders.

    Args:
        sources: Image files and/or folders (searched non-recursively with ``pattern``). Missing
            paths are skipped.
        num_images: How many images to return (>= 1).
        longest_side: Resize each image so its longest side is this (0: keep the file's size).
        pattern: Glob for folders, e.g. ``"ADE_*.jpg"``.

    Returns:
        ``num_images`` images; when no photo is found, one synthetic image (see
        :func:`synthetic_photo`, 768 x 1024 or ``longest_side`` wide) repeated with different
        seeds, named ``synthetic-<seed>``.
    """
    from PIL import Image

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files.extend(
                p for p in sorted(path.glob(pattern)) if p.suffix.lower() in _IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
    images = []
    for path in files[:num_images]:
        with Image.open(path) as pil:
            pil = pil.convert("RGB")
            source_size = (pil.size[1], pil.size[0])
            if longest_side > 0:
                pil = _resize_longest(pil, longest_side)
            array = np.asarray(pil, dtype=np.uint8).copy()
        images.append(
            BenchmarkImage(path.name, torch.from_numpy(array).permute(2, 0, 1), source_size)
        )
    if not images:
        width = longest_side or 1024
        height = width * 3 // 4
        logger.warning("no photo found in %s: using synthetic %dx%d images", sources, height, width)
        images = [
            BenchmarkImage(
                f"synthetic-{seed}", synthetic_photo(height, width, seed), (height, width)
            )
            for seed in range(num_images)
        ]
    return images


def sa1b_training_example(
    size: int, *, num_masks: int, point_grid_size: int, seed: int = 0
) -> dict:
    """An ``SA1BDatasetMapper``-shaped training example with a full valid region.

    Args:
        size: Side S of the square (padded) training image (``INPUT.UNIOVSEG.CROP_SIZE``).
        num_masks: G ground-truth masks (``INPUT.UNIOVSEG.MAX_MASKS_PER_IMAGE``): ellipses and
            rectangles of 0.5%-30% of the image, some nested, all non-empty.
        point_grid_size: The point prompts form this square grid (``POINT_GRID_SIZE``).

    Returns:
        ``image`` uint8 [3, S, S], ``image_size`` (S, S), ``height``/``width``, ``gt_masks``
        bool [G, S, S], ``point_coords`` float [P, 2] (x, y), ``box_prompts`` float [G, 4] XYXY
        pixel extents.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    masks = np.zeros((num_masks, size, size), dtype=bool)
    for g in range(num_masks):
        area = rng.uniform(0.005, 0.3)
        aspect = rng.uniform(0.5, 2.0)
        ry, rx = math.sqrt(area / math.pi * aspect), math.sqrt(area / math.pi / aspect)
        cy, cx = rng.uniform(0.1, 0.9, size=2)
        if g % 2:
            masks[g] = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        else:
            masks[g] = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
        if not masks[g].any():  # never for these sizes, but the mapper's contract says non-empty
            masks[g, size // 2, size // 2] = True
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            size - cols[:, ::-1].argmax(axis=1),
            size - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    return {
        "image": synthetic_photo(size, size, seed),
        "image_size": (size, size),
        "height": size,
        "width": size,
        "gt_masks": torch.from_numpy(masks),
        "point_coords": build_point_grid(point_grid_size, (size, size)),
        "box_prompts": torch.from_numpy(boxes),
    }


def caption_training_example(size: int, *, num_entities: int, seed: int = 0) -> dict:
    """A ``CaptionDatasetMapper``-shaped stage-2 example: ``image`` uint8 [3, S, S],
    ``image_size`` (valid region: the full square), ``caption`` and ``num_entities``
    ``entities``."""
    pool = [
        "red car", "dog", "wooden table", "tree", "sky", "person", "building", "grass",
        "street lamp", "window", "bicycle", "cloud", "road", "chair", "mountain", "boat",
    ]  # fmt: skip
    entities = [pool[i % len(pool)] for i in range(num_entities)]
    return {
        "image": synthetic_photo(size, size, seed),
        "image_size": (size, size),
        "caption": "a photo with " + ", ".join(entities),
        "entities": entities,
    }


class SyntheticMaskLogits:
    """Multi-granularity elliptical blobs as point-prompt decoder outputs.

    For a point at (x, y) and granularity m the mask logit at a low-res pixel is
    ``sharpness x (1 - d)``, where ``d`` is the elliptical distance to the point scaled by radii
    ``radii[m] x min(h, w)`` (times a per-point factor in [0.7, 1.3) for variety). With the
    default sharpness the stability score is about 0.95; the IoU logit is ``iou_logit`` plus a
    per-mask offset in [-0.5, 0.5) (every mask passes the release's IoU filter). Everything is
    a deterministic function of the prompt coordinates.
    """

    def __init__(
        self,
        *,
        radii: Sequence[float] = (0.02, 0.05, 0.1, 0.2),
        sharpness: float = 8.0,
        iou_logit: float = 2.0,
    ) -> None:
        if not radii or min(radii) <= 0:
            raise ValueError(f"radii must be positive fractions of the image side, got {radii}")
        self.radii = tuple(float(r) for r in radii)
        self.sharpness = float(sharpness)
        self.iou_logit = float(iou_logit)

    @staticmethod
    def _hash01(x: torch.Tensor, y: torch.Tensor, salt: float) -> torch.Tensor:
        """Deterministic pseudo-random values in [0, 1) from coordinates."""
        return torch.frac(torch.sin(x * 12.9898 + y * 78.233 + salt) * 43758.5453).abs()

    def __call__(
        self,
        point_coords: torch.Tensor,
        *,
        num_outputs: int,
        lowres_size: tuple[int, int],
        input_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            point_coords: float [B, P, 2] (x, y) in input pixels.
            num_outputs: M masks per point.
            lowres_size: (h, w) of the logits (input / 4).
            input_size: (S_h, S_w) of the padded input frame.

        Returns:
            ``mask_logits`` [B, P, M, h, w] and ``iou_logits`` [B, P, M] in ``dtype``.
        """
        h, w = lowres_size
        device = point_coords.device
        x = point_coords[..., 0].float() * (w / input_size[1])  # [B, P] low-res pixels
        y = point_coords[..., 1].float() * (h / input_size[0])
        granularity = torch.arange(num_outputs, device=device, dtype=torch.float32)
        radii = torch.tensor(
            [self.radii[min(m, len(self.radii) - 1)] for m in range(num_outputs)], device=device
        )
        base = radii * min(h, w)  # [M]
        jitter_y = 0.7 + 0.6 * self._hash01(x[..., None], y[..., None], granularity)
        jitter_x = 0.7 + 0.6 * self._hash01(y[..., None], x[..., None], granularity + 0.5)
        ry, rx = base * jitter_y, base * jitter_x  # [B, P, M]
        cols = torch.arange(w, device=device, dtype=torch.float32) + 0.5
        rows = torch.arange(h, device=device, dtype=torch.float32) + 0.5
        dx2 = ((cols - x[..., None, None]) / rx[..., None]) ** 2  # [B, P, M, w]
        dy2 = ((rows - y[..., None, None]) / ry[..., None]) ** 2  # [B, P, M, h]
        distance = (dy2[..., :, None] + dx2[..., None, :]).sqrt_()
        mask_logits = distance.mul_(-self.sharpness).add_(self.sharpness).to(dtype)
        offset = self._hash01(x[..., None], y[..., None], granularity + 0.25) - 0.5
        iou_logits = (self.iou_logit + offset).to(dtype)
        return mask_logits, iou_logits


class SyntheticLogitsEngine(AutomaticMaskGenerationEngine):
    """An automatic mask engine with the settings of another whose point-prompt predictions
    are replaced by :class:`SyntheticMaskLogits` after the real decoder has run (so the
    decoder's cost is still measured); the replacement is the stage
    ``"synthetic_mask_logits"``."""

    def __init__(self, engine: AutomaticMaskGenerationEngine, synthetic: SyntheticMaskLogits):
        # The settings only: every attribute of the engine, validated when it was built.
        vars(self).update(vars(engine))
        self.synthetic = synthetic

    def generate(self, predict_fn, frame, **kwargs):
        def predict(point_coords: torch.Tensor):
            mask_logits, _ = predict_fn(point_coords)
            with stage("synthetic_mask_logits"):
                return self.synthetic(
                    point_coords,
                    num_outputs=mask_logits.shape[2],
                    lowres_size=tuple(mask_logits.shape[-2:]),
                    input_size=tuple(frame.padded_size),
                    dtype=mask_logits.dtype,
                )

        return super().generate(predict, frame, **kwargs)


@contextmanager
def use_synthetic_masks(model, synthetic: SyntheticMaskLogits) -> Iterator[None]:
    """Within the block, the model's automatic mask engines (inference and stage-2 alignment)
    are :class:`SyntheticLogitsEngine` copies of themselves."""
    names = [n for n in ("mask_generator", "alignment_mask_generator") if getattr(model, n, None)]
    engines = {name: getattr(model, name) for name in names}
    try:
        for name, engine in engines.items():
            setattr(model, name, SyntheticLogitsEngine(engine, synthetic))
        yield
    finally:
        for name, engine in engines.items():
            setattr(model, name, engine)
