"""Point and box prompts: parsing from text, validation, and the original <-> input frame map.

Frames (as in segment-anything's predictor):

* original: the image given to ``set_image``, (H0, W0) pixels;
* input: the network input; the image is resized so that its longest side is the model's
  ``test_input_size`` S (the release's geometry), giving the *valid* region (h, w) in the
  top-left corner of an S x S canvas padded bottom/right.

Coordinates are continuous pixel coordinates: pixel (col, row) covers ``[col, col + 1) x
[row, row + 1)``, a point is ``(x, y)``, a box is ``(x1, y1, x2, y2)`` (XYXY). A point or box
edge may lie anywhere in ``[0, W] x [0, H]``; beyond that it is outside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ResizeLongestSide",
    "check_point_labels",
    "check_prompts_inside",
    "parse_boxes",
    "parse_points",
    "preprocess_shape",
    "prompt_rows",
    "reject_mask_input",
    "sam_prompt_arrays",
]

_PROMPT_SEPARATOR = ";"
_VALUE_SEPARATOR = ","


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of an image of (height, width) resized so that its longest side is ``long_side``:
    the model's test resize (:func:`uniovseg.modeling.image_frame.inference_frame`)."""
    # Imported here: this module stays importable without torch (image and prompt parsing).
    from uniovseg.modeling.image_frame import inference_frame

    return inference_frame((height, width), long_side).valid_size


class ResizeLongestSide:
    """Maps prompts from original-image pixels to the model's input frame (segment-anything's
    ``predictor.transform``, for :meth:`UniOVSegPredictor.predict_torch`).

    Example::

        coords = predictor.transform.apply_coords(points_xy, image.shape[:2])
        masks, ious, _ = predictor.predict_torch(torch.as_tensor(coords), ...)
    """

    def __init__(self, target_length: int) -> None:
        if target_length < 1:
            raise ValueError(f"target_length must be >= 1, got {target_length}")
        self.target_length = int(target_length)

    def input_size(self, original_size: Sequence[int]) -> tuple[int, int]:
        """(h, w) of the valid region for an image of ``original_size`` (H0, W0)."""
        return preprocess_shape(int(original_size[0]), int(original_size[1]), self.target_length)

    def scale_xy(self, original_size: Sequence[int]) -> tuple[float, float]:
        """(sx, sy): input-frame x = sx * original x, y = sy * original y."""
        height, width = self.input_size(original_size)
        return width / float(original_size[1]), height / float(original_size[0])

    def apply_coords(self, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """[..., 2] (x, y) original pixels -> float32 [..., 2] input-frame pixels."""
        coords = np.asarray(coords, dtype=np.float32)
        if coords.shape[-1:] != (2,):
            raise ValueError(f"coords must be [..., 2] (x, y), got shape {coords.shape}")
        sx, sy = self.scale_xy(original_size)
        return coords * np.asarray([sx, sy], dtype=np.float32)

    def apply_boxes(self, boxes: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """[..., 4] XYXY original pixels -> float32 [..., 4] input-frame pixels."""
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"boxes must be [..., 4] (x1, y1, x2, y2), got shape {boxes.shape}")
        sx, sy = self.scale_xy(original_size)
        return boxes * np.asarray([sx, sy, sx, sy], dtype=np.float32)

    def apply_coords_torch(self, coords, original_size: Sequence[int]):
        """Torch version of :meth:`apply_coords` (same device, float32)."""
        import torch

        if coords.shape[-1:] != (2,):
            raise ValueError(f"coords must be [..., 2] (x, y), got shape {tuple(coords.shape)}")
        sx, sy = self.scale_xy(original_size)
        return coords.to(torch.float32) * coords.new_tensor([sx, sy], dtype=torch.float32)

    def apply_boxes_torch(self, boxes, original_size: Sequence[int]):
        """Torch version of :meth:`apply_boxes` (same device, float32)."""
        import torch

        if boxes.shape[-1:] != (4,):
            raise ValueError(f"boxes must be [..., 4] XYXY, got shape {tuple(boxes.shape)}")
        sx, sy = self.scale_xy(original_size)
        return boxes.to(torch.float32) * boxes.new_tensor([sx, sy, sx, sy], dtype=torch.float32)


def parse_points(text: str) -> np.ndarray:
    """``"x,y;x,y"`` -> float32 [N, 2] (x, y) pixels.

    Raises:
        ValueError: a point without exactly two numbers, or a value that is not a finite number;
            the message quotes the offending item.
    """
    return _parse(text, 2, "point", "x,y;x,y (e.g. '120,80;40.5,200')")


def parse_boxes(text: str) -> np.ndarray:
    """``"x1,y1,x2,y2;..."`` -> float32 [N, 4] XYXY pixels, with x1 <= x2 and y1 <= y2.

    Raises:
        ValueError: wrong number of values, non-finite values or a reversed box.
    """
    boxes = _parse(text, 4, "box", "x1,y1,x2,y2;... (e.g. '10,20,200,180')")
    _check_box_order(boxes)
    return boxes


def _parse(text: str, width: int, what: str, syntax: str) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError(f"{what} prompts must be a string {syntax}, got {type(text).__name__}")
    items = [item.strip() for item in text.split(_PROMPT_SEPARATOR)]
    items = [item for item in items if item]
    if not items:
        raise ValueError(f"no {what} in {text!r}; expected {syntax}")
    rows = []
    for item in items:
        values = [v.strip() for v in item.split(_VALUE_SEPARATOR)]
        if len(values) != width:
            raise ValueError(
                f"{what} {item!r} has {len(values)} value(s), expected {width}: use {syntax}"
            )
        try:
            row = [float(v) for v in values]
        except ValueError as e:
            raise ValueError(f"{what} {item!r} holds a value that is not a number: {e}") from e
        if not all(math.isfinite(v) for v in row):
            raise ValueError(f"{what} {item!r} holds a non-finite value")
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def _check_box_order(boxes: np.ndarray) -> None:
    reversed_rows = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if reversed_rows.size:
        listed = ", ".join(str(boxes[i].tolist()) for i in reversed_rows[:5])
        raise ValueError(
            f"boxes must be XYXY with x1 <= x2 and y1 <= y2; reversed: {listed} (box indices "
            f"{reversed_rows[:5].tolist()})"
        )


def check_prompts_inside(
    image_size: Sequence[int],
    *,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    frame: str = "image",
    tolerance: float = 0.0,
) -> None:
    """Raises ValueError when a point or box lies outside ``[0, W] x [0, H]``.

    Args:
        image_size: (H, W) of the frame the prompts are in.
        points: float [N, 2] (x, y), or None.
        boxes: float [N, 4] XYXY, or None; also checked for x1 <= x2 and y1 <= y2.
        frame: Name of the frame for the message ("image", "input frame").
        tolerance: Slack in pixels (for coordinates that went through a float rescale).
    """
    height, width = float(image_size[0]), float(image_size[1])
    lows = -tolerance
    for name, values, xs, ys in (
        ("point", points, (0,), (1,)),
        ("box", boxes, (0, 2), (1, 3)),
    ):
        if values is None or len(values) == 0:
            continue
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} prompts hold NaN or infinite values")
        x, y = values[:, list(xs)], values[:, list(ys)]
        outside = (
            (x < lows).any(axis=1)
            | (x > width + tolerance).any(axis=1)
            | (y < lows).any(axis=1)
            | (y > height + tolerance).any(axis=1)
        )
        bad = np.nonzero(outside)[0]
        if bad.size:
            listed = ", ".join(str([round(v, 2) for v in values[i].tolist()]) for i in bad[:5])
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            raise ValueError(
                f"{bad.size} {name} prompt(s) lie outside the {frame} of {int(width)}x"
                f"{int(height)} (W x H; valid x in [0, {int(width)}], y in [0, {int(height)}]): "
                f"{listed}{more} (indices {bad[:5].tolist()})"
            )
        if name == "box":
            _check_box_order(values)


def sam_prompt_arrays(point_coords, point_labels, box, boxes) -> tuple[str, np.ndarray, bool]:
    """SamPredictor.predict's prompt arguments -> (prompt type, prompts, single).

    Args:
        point_coords: [N, 2], [N, 1, 2] or [2] (x, y) points (array-like or tensor), or None.
        point_labels: [N] or [N, 1] labels, all 1, or None (all positive).
        box: One XYXY box, [4] or [1, 4], or None.
        boxes: [N, 4] or [N, 1, 4] XYXY boxes, or None.

    Returns:
        ``("point" | "box", float32 [N, 2 | 4], single)`` where ``single`` says whether SAM
        would return the masks of this call without the leading N.

    Raises:
        ValueError: none or several prompt kinds, bad shapes, non-numeric or non-finite values,
            labels that are not all 1.
    """
    candidates = (("point_coords", point_coords), ("box", box), ("boxes", boxes))
    given = [name for name, value in candidates if value is not None]
    if not given:
        raise ValueError("give point_coords [N, 2], box [4] or boxes [N, 4]")
    if len(given) > 1:
        raise ValueError(
            f"got {' and '.join(given)}: each Uni-OVSeg prompt is one point or one box (SAM's "
            "combined point + box prompt does not exist); call predict once per prompt type"
        )
    if point_coords is not None:
        points = _as_float_array(point_coords, "point_coords")
        if points.shape == (2,):
            points = points[None]
        if points.ndim == 3 and points.shape[1] == 1:
            points = points[:, 0]
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(
                f"point_coords must be [N, 2] (x, y) in image pixels, got shape {points.shape}"
            )
        check_point_labels(point_labels, points.shape[0])
        return "point", points, points.shape[0] == 1
    if point_labels is not None:
        raise ValueError("point_labels were given without point_coords")
    if box is not None:
        single = _as_float_array(box, "box")
        if single.shape not in ((4,), (1, 4)):
            raise ValueError(
                f"box must be one XYXY box of shape [4] (or [1, 4]), got {single.shape}; pass "
                "several boxes as boxes=[N, 4]"
            )
        return "box", single.reshape(1, 4), True
    many = _as_float_array(boxes, "boxes")
    if many.ndim == 3 and many.shape[1] == 1:
        many = many[:, 0]
    if many.ndim != 2 or many.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] XYXY in image pixels, got shape {many.shape}")
    return "box", many, False


def _as_float_array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch is not imported here)
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got {value!r}") from e
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def check_point_labels(point_labels, num_points: int) -> None:
    """Point labels must be None or one 1 (positive) per point; else ValueError."""
    if point_labels is None:
        return
    if hasattr(point_labels, "detach"):
        point_labels = point_labels.detach().cpu().numpy()
    labels = np.asarray(point_labels)
    if labels.shape not in ((num_points,), (num_points, 1)):
        raise ValueError(
            f"point_labels must have one label per point ([{num_points}]), got shape {labels.shape}"
        )
    if labels.size and not np.all(labels == 1):
        raise ValueError(
            "only positive point prompts (label 1) are supported: Uni-OVSeg has no negative or "
            f"padding points; got labels {np.unique(labels).tolist()}"
        )


def prompt_rows(prompts, width: int, name: str) -> int:
    """N of a prompt tensor/array of shape [N, width] or [N, 1, width] (else ValueError)."""
    shape = tuple(prompts.shape)
    if len(shape) == 2 and shape[1] == width:
        return shape[0]
    if len(shape) == 3 and shape[1] == 1 and shape[2] == width:
        return shape[0]
    raise ValueError(f"{name} must be [N, {width}] or [N, 1, {width}], got shape {shape}")


def reject_mask_input(mask_input) -> None:
    """SAM's mask prompts do not exist here: anything but None raises ValueError."""
    if mask_input is not None:
        raise ValueError(
            "mask prompts (mask_input) are not supported: Uni-OVSeg takes points or boxes only"
        )
