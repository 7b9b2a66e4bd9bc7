"""Overlay pictures of predictions, drawn with detectron2's ``Visualizer``.

Every function takes the RGB uint8 image [H, W, 3] the prediction was made on and returns a new
RGB uint8 picture of the same size. Colours are deterministic: automatic and prompted masks
cycle through detectron2's palette by mask index (or by class when labelled), semantic and
panoptic classes by class index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_masks", "draw_panoptic", "draw_semantic"]

_PALETTE = colormap(rgb=True, maximum=1)  # [74, 3] floats in [0, 1]
_PROMPT_COLOR = (1.0, 1.0, 0.0)  # prompts in yellow, above the masks


def _color(index: int) -> tuple[float, float, float]:
    return tuple(float(c) for c in _PALETTE[int(index) % len(_PALETTE)])


def _shade(color: tuple[float, float, float], index: int) -> tuple[float, float, float]:
    """A brighter or darker version of ``color``, deterministic per instance index, so that
    instances of one class share a hue but stay distinguishable."""
    factor = 0.7 + 0.6 * ((index * 0.618034) % 1.0)
    return tuple(float(min(1.0, c * factor)) for c in color)


def _metadata(class_names: Sequence[str]) -> Metadata:
    names = list(class_names)
    colors = [[int(round(255 * c)) for c in _color(i)] for i in range(len(names))]
    return Metadata(
        name="uniovseg_inference",
        thing_classes=names,
        stuff_classes=names,
        thing_colors=colors,
        stuff_colors=colors,
    )


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {image.shape}")
    return image


def draw_masks(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    class_ids: Sequence[int] | None = None,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Binary masks (automatic or prompted) over the image, optionally with prompts.

    Args:
        image: uint8 [H, W, 3] RGB.
        masks: bool [K, H, W].
        labels: Optional K texts (e.g. ``"dog 87%"``), drawn on each mask.
        class_ids: Optional K class indices: masks of the same class share a colour (slightly
            jittered); default: one colour per mask.
        points: Optional float [P, 2] (x, y) point prompts, drawn as dots.
        boxes: Optional float [B, 4] XYXY box prompts, drawn as outlines.
        alpha: Mask opacity.

    Returns:
        uint8 [H, W, 3] RGB picture.
    """
    image = _check_image(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"masks must be [K, H, W] with (H, W) = {image.shape[:2]}, got {masks.shape}"
        )
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"got {len(labels)} labels for {len(masks)} masks")
    visualizer = Visualizer(image, instance_mode=ColorMode.IMAGE)
    if len(masks):
        if class_ids is not None:
            colors = [_shade(_color(c), i) for i, c in enumerate(class_ids)]
        else:
            colors = [_color(i) for i in range(len(masks))]
        visualizer.overlay_instances(
            masks=list(masks),
            labels=list(labels) if labels is not None else None,
            assigned_colors=colors,
            alpha=alpha,
        )
    radius = max(2.0, 0.006 * max(image.shape[:2]))
    for x, y in np.asarray(points if points is not None else np.zeros((0, 2))).reshape(-1, 2):
        visualizer.draw_circle((float(x), float(y)), color=_PROMPT_COLOR, radius=radius)
    for box in np.asarray(boxes if boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
        visualizer.draw_box(tuple(float(v) for v in box), alpha=1.0, edge_color=_PROMPT_COLOR)
    return visualizer.output.get_image()


def draw_semantic(
    image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, alpha: float = 0.6
) -> np.ndarray:
    """A semantic label map over the image, each class region named.

    Args:
        image: uint8 [H, W, 3] RGB.
        labels: int [H, W] class indices; values outside ``[0, len(class_names))`` (e.g. -1 for
            unlabelled pixels) are left undrawn.
        class_names: Display names by class index.

    Returns:
        uint8 [H, W, 3] RGB picture.
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be [H, W] = {image.shape[:2]}, got {labels.shape}")
    # The Visualizer draws every value below len(stuff_classes), negative ones included.
    void = len(class_names)
    labels = np.where((labels >= 0) & (labels < void), labels, void).astype(np.int64)
    visualizer = Visualizer(image, _metadata(class_names), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_sem_seg(labels, alpha=alpha).get_image()


def draw_panoptic(
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments_info: list[dict],
    class_names: Sequence[str],
    *,
    alpha: float = 0.6,
) -> np.ndarray:
    """A panoptic segmentation over the image: stuff named per class, things per instance
    with their score.

    Args:
        image: uint8 [H, W, 3] RGB.
        panoptic_seg: int [H, W] segment ids (0 = none).
        segments_info: Dicts with ``id``, ``category_id`` (index into ``class_names``),
            ``isthing`` and optionally ``score``.
        class_names: Display names by class index.

    Returns:
        uint8 [H, W, 3] RGB picture.
    """
    import torch

    image = _check_image(image)
    panoptic_seg = np.asarray(panoptic_seg)
    if panoptic_seg.shape != image.shape[:2]:
        raise ValueError(
            f"panoptic_seg must be [H, W] = {image.shape[:2]}, got {panoptic_seg.shape}"
        )
    visualizer = Visualizer(image, _metadata(class_names), instance_mode=ColorMode.IMAGE)
    if not segments_info:
        return visualizer.output.get_image()
    # Copies: detectron2 adds an "area" to each segment dict it is given.
    segments = [dict(segment) for segment in segments_info]
    return visualizer.draw_panoptic_seg(
        torch.as_tensor(panoptic_seg.astype(np.int64)), segments, alpha=alpha
    ).get_image()
