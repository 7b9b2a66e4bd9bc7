"""Files written for one processed image: JSON records, label maps and panoptic PNGs.

Formats:

* records: SAM / SA-1B style dicts with a compressed COCO RLE ``segmentation`` (``{"size":
  [H, W], "counts": str}``, decodable with ``pycocotools.mask.decode``), ``bbox`` XYWH,
  ``area``, ``predicted_iou``, ``stability_score``, ``point_coords`` ([[x, y]]) and/or ``box``
  (XYXY), ``crop_box``, plus ``category_id``/``category``/``score`` when labelled;
* semantic label map: single-channel PNG of class indices, uint8 with 255 for unlabelled
  pixels when there are fewer than 255 classes, else uint16 with 65535;
* panoptic PNG: COCO panoptic RGB encoding (``id = R + 256 G + 256^2 B``, 0 = no segment).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from uniovseg.modeling.mask_postprocessing import encode_masks_rle, masks_to_boxes

__all__ = [
    "label_map_ignore_value",
    "panoptic_to_semantic",
    "prompt_records",
    "write_json",
    "write_label_map",
    "write_panoptic_png",
    "write_rgb_png",
]

_UINT8_IGNORE = 255
_UINT16_IGNORE = 65535


def label_map_ignore_value(num_classes: int) -> int:
    """The value of unlabelled pixels in a label map PNG for ``num_classes`` classes."""
    if num_classes >= _UINT16_IGNORE:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label map")
    return _UINT8_IGNORE if num_classes < _UINT8_IGNORE else _UINT16_IGNORE


def write_label_map(path: str, labels: np.ndarray, num_classes: int) -> int:
    """Writes int class indices [H, W] as a PNG; values outside ``[0, num_classes)`` become the
    ignore value. Returns the ignore value (255 or 65535)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    ignore = label_map_ignore_value(num_classes)
    dtype = np.uint8 if ignore == _UINT8_IGNORE else np.uint16
    valid = (labels >= 0) & (labels < num_classes)
    Image.fromarray(np.where(valid, labels, ignore).astype(dtype)).save(path)
    return ignore


def write_panoptic_png(path: str, panoptic_seg: np.ndarray) -> None:
    """Writes segment ids [H, W] in COCO panoptic's RGB encoding."""
    from panopticapi.utils import id2rgb

    Image.fromarray(id2rgb(np.asarray(panoptic_seg, dtype=np.int64)).astype(np.uint8)).save(path)


def write_rgb_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] RGB picture."""
    # Fast compression: overlays of large photos take seconds at the default level.
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, compress_level=1)


def panoptic_to_semantic(panoptic_seg: np.ndarray, segments_info: list[dict]) -> np.ndarray:
    """Segment ids [H, W] -> class indices int64 [H, W], -1 where there is no segment."""
    labels = np.full(np.shape(panoptic_seg), -1, dtype=np.int64)
    for segment in segments_info:
        labels[panoptic_seg == segment["id"]] = int(segment["category_id"])
    return labels


def prompt_records(
    masks: np.ndarray,
    iou_predictions: np.ndarray,
    stability_scores: np.ndarray,
    *,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] = (),
) -> list[dict]:
    """Records of prompted masks (one per prompt and output), JSON-ready.

    Args:
        masks: bool [N, M, H, W].
        iou_predictions, stability_scores: float [N, M].
        points: float [N, 2] point prompts (x, y), or None.
        boxes: float [N, 4] XYXY box prompts, or None (exactly one of points/boxes).
        labels, scores: Optional int [N, M] class indices and float [N, M] probabilities.
        class_names: Display names for ``labels``.

    Returns:
        N x M dicts, prompt-major, with the module's record keys plus ``prompt_index`` and
        ``mask_index`` (which of the prompt's M outputs).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4:
        raise ValueError(f"masks must be [N, M, H, W], got shape {masks.shape}")
    if (points is None) == (boxes is None):
        raise ValueError("pass exactly one of points and boxes")
    num, num_outputs, height, width = masks.shape
    flat = masks.reshape(num * num_outputs, height, width)
    rles = encode_masks_rle(flat)
    xyxy = masks_to_boxes(torch.from_numpy(flat)).round().long().tolist()
    areas = flat.sum(axis=(1, 2))
    records = []
    for k in range(num * num_outputs):
        i, m = divmod(k, num_outputs)
        x1, y1, x2, y2 = xyxy[k]
        record = {
            "segmentation": rles[k],
            "area": int(areas[k]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "predicted_iou": float(iou_predictions[i, m]),
            "stability_score": float(stability_scores[i, m]),
            "crop_box": [0, 0, int(width), int(height)],
            "prompt_index": i,
            "mask_index": m,
        }
        if points is not None:
            record["point_coords"] = [[float(v) for v in points[i]]]
        else:
            record["box"] = [float(v) for v in boxes[i]]
        if labels is not None and scores is not None:
            record["category_id"] = int(labels[i, m])
            record["category"] = class_names[int(labels[i, m])]
            record["score"] = float(scores[i, m])
        records.append(record)
    return records


def write_json(path: str, data: dict) -> None:
    """Writes ``data`` as JSON atomically (a temporary file renamed into place), so an
    interrupted run never leaves a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
