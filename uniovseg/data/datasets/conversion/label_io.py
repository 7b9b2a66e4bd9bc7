"""Reading and writing label maps and COCO panoptic segments for the dataset converters."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

__all__ = [
    "list_files",
    "lookup_table",
    "panoptic_segments",
    "read_label_map",
    "write_json",
    "write_label_png",
    "write_label_tiff16",
    "write_panoptic_png",
]


def read_label_map(path: str) -> np.ndarray:
    """The values stored in a label image: palette indices for ``P`` PNGs (VOC), uint16 for
    16-bit PNG/TIFF, HxWx3 uint8 for RGB-encoded maps (panoptic, ADE20K full)."""
    with Image.open(path) as im:
        return np.array(im)


def write_label_png(path: str, labels: np.ndarray) -> None:
    """Writes a uint8 label map as a single-channel (``L``) PNG."""
    if labels.dtype != np.uint8:
        raise ValueError(f"uint8 labels expected for {path}, got {labels.dtype}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(labels).save(path)  # 2-D uint8 -> mode "L"


def write_label_tiff16(path: str, labels: np.ndarray) -> None:
    """Writes a uint16 label map as a 16-bit TIFF (read back by PIL as mode ``I;16``)."""
    if labels.dtype != np.uint16:
        raise ValueError(f"uint16 labels expected for {path}, got {labels.dtype}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(labels).save(path, format="TIFF")


def write_panoptic_png(path: str, segment_ids: np.ndarray) -> None:
    """Writes segment ids (int, < 2**24, 0 = void) in COCO's RGB encoding
    (id = R + 256 G + 256^2 B)."""
    from panopticapi.utils import id2rgb

    if segment_ids.min() < 0 or segment_ids.max() >= 2**24:
        raise ValueError("panoptic segment ids must lie in [0, 2**24)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(id2rgb(segment_ids.astype(np.int64))).save(path)


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # never leave a half-written annotation file behind


def lookup_table(mapping: dict[int, int], size: int, fill: int, dtype) -> np.ndarray:
    """A [size] array with ``lut[k] = mapping[k]`` and ``fill`` elsewhere."""
    lut = np.full(size, fill, dtype=dtype)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def panoptic_segments(
    segment_ids: np.ndarray, categories: dict[int, int], crowd: dict[int, int] | None = None
) -> list[dict]:
    """COCO ``segments_info`` of a finished segment-id map.

    Areas and boxes are measured on ``segment_ids`` itself, so they are exact even where one
    segment was painted over another (the panoptic API takes ground-truth areas from the JSON).

    Args:
        segment_ids: int [H, W], 0 = void.
        categories: segment id -> category id, for every non-zero id present.
        crowd: segment id -> iscrowd (default 0).

    Returns:
        ``{"id", "category_id", "area", "bbox" (XYWH), "iscrowd"}`` per segment present, in
        increasing id order.
    """
    crowd = crowd or {}
    ids, areas = np.unique(segment_ids, return_counts=True)
    segments = []
    for seg_id, area in zip(ids.tolist(), areas.tolist(), strict=True):
        if seg_id == 0:
            continue
        ys, xs = np.nonzero(segment_ids == seg_id)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": int(seg_id),
                "category_id": int(categories[seg_id]),
                "area": int(area),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": int(crowd.get(seg_id, 0)),
            }
        )
    return segments


def list_files(folder: str, suffix: str, hint: str) -> list[str]:
    """Sorted names of the ``*suffix`` files in ``folder``; ``ValueError`` with ``hint`` (what to
    download or unpack) when the folder is missing or has none."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} does not exist: {hint}")
    files = sorted(f for f in os.listdir(folder) if f.endswith(suffix))
    if not files:
        raise ValueError(f"no '*{suffix}' file in {folder}: {hint}")
    return files
