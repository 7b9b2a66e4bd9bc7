"""Dataset mapper for image-mask pairs (SA-1B layout): image + masks + point/box prompts.

Each call reads one image and its SA-1B JSON, keeps the masks whose area ratio is in range, caps
their number, applies large-scale jitter + crop/pad + flip + SSD colour jitter
(:mod:`uniovseg.data.transforms`), and derives the training prompts: a regular point grid over
the valid (unpadded) region and the box of every kept mask.

Bad inputs never crash training. A missing, unreadable, corrupt or empty JSON, an unreadable image,
masks whose size disagrees with the image, or no mask left after filtering make the mapper return
``None``; the train loader (:func:`uniovseg.data.train_loader.build_resumable_train_loader`) then
maps a replacement image instead, drawn from a generator seeded with the loader seed, the refused
index and the attempt number, so a resumed run gets the same replacement. Skips are counted per
reason and logged as one warning at the first skip and then every ``skip_log_period`` skips (per
data-loader worker).

Images without masks: with ``skip_images_without_masks=True`` (default) an image whose masks are
all filtered out (or all cropped away) is skipped: it would only add zero loss and waste a batch
slot, since no point or box prompt can be matched. With ``False`` it is returned with ``G = 0``
(empty ``gt_masks``/``box_prompts``, the point grid unchanged); the criterion gives finite zero
losses for it. This is the switch for datasets where "no mask" is meaningful.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

import numpy as np
import torch
from detectron2.config import configurable
from pycocotools import mask as mask_util

from ..modeling.point_grid import build_point_grid
from .image_io import read_dataset_image
from .transforms import ColorAugSSD, sample_scale_jitter_crop

logger = logging.getLogger(__name__)

__all__ = ["SA1BDatasetMapper"]


class _Skip(Exception):
    """Internal: the current image cannot be used (reason is a short key for the counters)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _mask_extents(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty flags and XYXY pixel-extent boxes (x1 = last column + 1) of bool masks.

    Args:
        masks: bool [G, H, W].

    Returns:
        ``(nonempty, boxes)``: bool [G] and float32 [G, 4] (meaningless rows for empty masks).
    """
    if masks.shape[0] == 0:
        return np.zeros(0, dtype=bool), np.zeros((0, 4), dtype=np.float32)
    as_bytes = masks.view(np.uint8)  # max() over bytes is SIMD; any() over bools is not
    rows = as_bytes.max(axis=2).astype(bool)  # [G, H]
    cols = as_bytes.max(axis=1).astype(bool)  # [G, W]
    y0 = rows.argmax(axis=1)
    y1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return rows.any(axis=1), np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


class SA1BDatasetMapper:
    """Maps an SA-1B dataset dict to a training sample for the promptable mask generator.

    Input dict (from :func:`uniovseg.data.datasets.sa1b.load_sa1b_dicts`): ``file_name``,
    ``annotation_file``, ``image_id``; or, from tar shards
    (:func:`uniovseg.data.datasets.shards.sa1b_sample_to_dict`), ``image_bytes`` and
    ``annotation_bytes`` (the encoded image and the JSON) with a ``file_name`` naming the sample.

    Output dict:
        - ``image``: uint8 tensor [3, S, S], RGB, valid region top-left, rest = ``pad_value``.
        - ``image_size``: (h, w) of the valid (unpadded) region.
        - ``height``, ``width``: original image size.
        - ``gt_masks``: bool tensor [G, S, S] (every mask non-empty).
        - ``point_coords``: float tensor [P, 2], (x, y) pixels of the padded frame, P = grid**2,
          a grid at cell centres over the valid region.
        - ``box_prompts``: float tensor [G, 4], XYXY pixel extents (x1 = last column + 1) of
          ``gt_masks[g]`` in row g.
        - ``file_name``, ``image_id``: copied from the input.

    Randomness uses a per-process ``numpy.random.Generator``, created at the first call in each
    process: seeded from numpy's global RNG (which detectron2 reseeds per data-loader worker) when
    ``seed`` is None, else from ``seed`` + rank and worker id, so workers never share a stream.
    """

    @configurable
    def __init__(
        self,
        *,
        crop_size: int = 1024,
        min_scale: float = 0.8,
        max_scale: float = 1.2,
        flip_prob: float = 0.5,
        color_aug: bool = True,
        mask_area_range: tuple[float, float] = (0.0001, 0.8),
        max_masks: int = 40,
        point_grid_size: int = 10,
        pad_value: float = 128.0,
        skip_images_without_masks: bool = True,
        seed: int | None = None,
        skip_log_period: int = 100,
    ) -> None:
        """
        Args:
            crop_size: Side S of the square training input (release: 1024).
            min_scale: Lower bound of the scale jitter, relative to ``crop_size`` (release 0.8).
            max_scale: Upper bound of the scale jitter (release: 1.2).
            flip_prob: Probability of a horizontal flip (0 disables it).
            color_aug: Whether to apply SSD colour jitter.
            mask_area_range: Keep masks with ``area / (H * W)`` in this closed range, measured
                on the original image (release: 0.0001-0.8).
            max_masks: At most this many masks per image, a random subset (release: 40;
                0 = no cap).
            point_grid_size: Point prompts per side of the training grid (release: 10).
            pad_value: Value (0-255) of padded image pixels. 128 is detectron2's
                ``FixedSizeCrop`` default, which the release's large-scale-jitter recipe uses.
            skip_images_without_masks: Skip (return None) images with no mask left; else
                return them with G = 0.
            seed: Optional base seed for reproducible augmentation (tests, debugging).
            skip_log_period: Log a summary warning every this many skipped images.
        """
        lo, hi = (float(v) for v in mask_area_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mask_area_range must satisfy 0 <= min <= max <= 1, got {lo}, {hi}")
        if crop_size <= 0 or point_grid_size <= 0 or max_masks < 0:
            raise ValueError(
                "crop_size and point_grid_size must be positive and max_masks >= 0, got "
                f"{crop_size}, {point_grid_size}, {max_masks}"
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.crop_size = int(crop_size)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.flip_prob = float(flip_prob)
        self.color_aug = ColorAugSSD() if color_aug else None
        self.mask_area_range = (lo, hi)
        self.max_masks = int(max_masks)
        self.point_grid_size = int(point_grid_size)
        self.pad_value = float(pad_value)
        self.skip_images_without_masks = bool(skip_images_without_masks)
        self.seed = seed
        self.skip_log_period = max(1, int(skip_log_period))
        self.skip_counts: Counter[str] = Counter()
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    @classmethod
    def from_config(cls, cfg) -> dict:
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("horizontal", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP={flip!r} is not supported by SA1BDatasetMapper; "
                "use 'horizontal' or 'none'"
            )
        c = cfg.INPUT.UNIOVSEG
        return {
            "crop_size": c.CROP_SIZE,
            "min_scale": c.MIN_SCALE,
            "max_scale": c.MAX_SCALE,
            "flip_prob": 0.5 if flip == "horizontal" else 0.0,
            "color_aug": c.COLOR_AUG_SSD,
            "mask_area_range": tuple(c.MASK_AREA_RANGE),
            "max_masks": c.MAX_MASKS_PER_IMAGE,
            "point_grid_size": c.POINT_GRID_SIZE,
            "pad_value": c.PAD_VALUE,
            "skip_images_without_masks": c.SKIP_IMAGES_WITHOUT_MASKS,
            "seed": c.MAPPER_SEED if c.MAPPER_SEED >= 0 else None,
        }

    # ------------------------------------------------------------------ randomness / skips
    def _generator(self) -> np.random.Generator:
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            if self.seed is None:
                entropy = int(np.random.randint(0, 2**31 - 1))
            else:
                from detectron2.utils import comm

                info = torch.utils.data.get_worker_info()
                worker = info.id if info is not None else 0
                entropy = (self.seed, comm.get_rank(), worker)
            self._rng = np.random.default_rng(entropy)
            self._rng_pid = pid
        return self._rng

    def _record_skip(self, skip: _Skip, file_name: str) -> None:
        self.skip_counts[skip.reason] += 1
        total = sum(self.skip_counts.values())
        if total == 1 or total % self.skip_log_period == 0:
            logger.warning(
                "SA1BDatasetMapper skipped %d image(s) so far in this process %s; latest: %s "
                "(%s%s)",
                total,
                dict(self.skip_counts),
                file_name,
                skip.reason,
                f": {skip.detail}" if skip.detail else "",
            )

    # ------------------------------------------------------------------ mapping
    def __call__(self, dataset_dict: dict) -> dict | None:
        """Maps one dataset dict; returns None (and counts the reason) for an unusable image."""
        try:
            return self._map(dataset_dict)
        except _Skip as skip:
            self._record_skip(skip, dataset_dict.get("file_name", "?"))
            return None

    def _read_annotations(self, dataset_dict: dict) -> list[dict]:
        path = dataset_dict.get("annotation_file", dataset_dict.get("file_name", "?"))
        try:
            if "annotation_bytes" in dataset_dict:  # a shard sample's JSON
                record = json.loads(dataset_dict["annotation_bytes"])
            else:
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
        except FileNotFoundError as e:
            raise _Skip("missing_json", path) from e
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise _Skip("corrupt_json", f"{path}: {e}") from e
        except OSError as e:
            raise _Skip("unreadable_json", f"{path}: {e}") from e
        anns = record.get("annotations") if isinstance(record, dict) else None
        if not isinstance(anns, list):
            raise _Skip("corrupt_json", f"{path}: no 'annotations' list")
        if not anns:
            raise _Skip("empty_json", path)
        return anns

    def _map(self, dataset_dict: dict) -> dict:
        rng = self._generator()
        anns = self._read_annotations(dataset_dict)
        try:
            image = read_dataset_image(dataset_dict, format="RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise _Skip("unreadable_image", f"{dataset_dict['file_name']}: {e}") from e
        height, width = image.shape[:2]

        try:
            rles = [
                {
                    "size": [int(s) for s in a["segmentation"]["size"]],
                    "counts": a["segmentation"]["counts"],
                }
                for a in anns
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise _Skip("corrupt_json", f"bad segmentation entry: {e!r}") from e
        if any(r["size"] != [height, width] for r in rles):
            raise _Skip("size_mismatch", f"masks are not {height}x{width}")

        # Filter on the RLE areas (no decoding), then decode only the kept subset.
        try:
            areas = mask_util.area(rles).astype(np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise _Skip("corrupt_json", f"RLE area failed: {e!r}") from e
        ratio = areas / float(height * width)
        lo, hi = self.mask_area_range
        keep = np.flatnonzero((ratio >= lo) & (ratio <= hi))
        if self.max_masks and keep.size > self.max_masks:
            keep = np.sort(rng.choice(keep, size=self.max_masks, replace=False))
        if keep.size == 0 and self.skip_images_without_masks:
            raise _Skip("no_masks_in_area_range")

        geometry = sample_scale_jitter_crop(
            height,
            width,
            crop_size=self.crop_size,
            min_scale=self.min_scale,
            max_scale=self.max_scale,
            flip_prob=self.flip_prob,
            rng=rng,
        )
        image_out = geometry.apply_image(image, self.pad_value)
        if self.color_aug is not None:
            valid = image_out[: geometry.crop_h, : geometry.crop_w]
            image_out[: geometry.crop_h, : geometry.crop_w] = self.color_aug(valid, rng)
        # Decode one mask at a time straight into the output canvas: a [H, W, 40] stack of
        # SA-1B masks is 135 MB, and decoding it at once was ~2x slower than streaming.
        masks = np.zeros((keep.size, self.crop_size, self.crop_size), dtype=bool)
        for canvas, i in zip(masks, keep, strict=True):
            # decode() gives a Fortran-ordered [H, W] mask, so .T is a C-contiguous [W, H] view.
            geometry.apply_mask_into(mask_util.decode(rles[i]).T, canvas)
        nonempty, boxes = _mask_extents(masks)
        if not nonempty.all():
            masks, boxes = masks[nonempty], boxes[nonempty]
        if masks.shape[0] == 0 and self.skip_images_without_masks:
            raise _Skip("no_masks_after_crop")

        return {
            "image": torch.from_numpy(np.ascontiguousarray(image_out.transpose(2, 0, 1))),
            "image_size": (geometry.crop_h, geometry.crop_w),
            "height": height,
            "width": width,
            "gt_masks": torch.from_numpy(masks),
            "point_coords": build_point_grid(
                self.point_grid_size, (geometry.crop_h, geometry.crop_w)
            ),
            "box_prompts": torch.from_numpy(boxes),
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
        }
