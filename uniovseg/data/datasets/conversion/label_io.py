"""Reading and writing label maps and COCO panoptic segments for the dataset converters.

Reading errors name the file (:class:`~.progress.ConversionError`); every file is written
atomically (a temporary ``PATH.tmp`` renamed into place), so a run stopped midway never leaves a
half-written output that a re-run would take as done.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from uniovseg.atomic_files import atomic_write

from .progress import ConversionError

__all__ = [
    "list_files",
    "lookup_table",
    "panoptic_segments",
    "read_image_array",
    "read_json",
    "read_label_map",
    "write_image",
    "write_json",
    "write_label_png",
    "write_label_tiff16",
    "write_panoptic_png",
]


def read_label_map(path: str) -> np.ndarray:
    """The values stored in a label image: palette indices for ``P`` PNGs (VOC), uint16 for
    16-bit PNG/TIFF, HxWx3 uint8 for RGB-encoded maps (panoptic, ADE20K full).

    Raises:
        ConversionError: the file is missing, empty, truncated or not an image; names it.
    """
    return read_image_array(path)


def read_image_array(path: str, mode: str | None = None) -> np.ndarray:
    """The pixels of an image file, converted to ``mode`` when given (e.g. ``"RGB"``).

    Raises:
        ConversionError: the file is missing, empty, truncated or not an image; names it.
    """
    if not os.path.isfile(path):
        raise ConversionError(path, "missing")
    if os.path.getsize(path) == 0:
        raise ConversionError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except UnidentifiedImageError as e:
        raise ConversionError(path, "not an image (unknown format or corrupt header)") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ConversionError(path, f"cannot read it ({type(e).__name__}: {e})") from e


def read_json(path: str, hint: str) -> dict:
    """A JSON file's content; ``ValueError`` naming the file (and ``hint``: what to download)
    when it is missing or not valid JSON."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e} ({hint})") from e


def write_image(path: str, image: np.ndarray, format: str) -> None:
    """Writes an image array in ``format`` (a PIL format name: ``"PNG"``, ``"JPEG"``...)."""
    picture = Image.fromarray(image)
    with atomic_write(path) as handle:
        picture.save(handle, format=format)


def write_label_png(path: str, labels: np.ndarray) -> None:
    """Writes a uint8 label map as a single-channel (``L``) PNG."""
    if labels.dtype != np.uint8:
        raise ValueError(f"uint8 labels expected for {path}, got {labels.dtype}")
    write_image(path, labels, "PNG")  # 2-D uint8 -> mode "L"


def write_label_tiff16(path: str, labels: np.ndarray) -> None:
    """Writes a uint16 label map as a 16-bit TIFF (read back by PIL as mode ``I;16``)."""
    if labels.dtype != np.uint16:
        raise ValueError(f"uint16 labels expected for {path}, got {labels.dtype}")
    write_image(path, labels, "TIFF")


def write_panoptic_png(path: str, segment_ids: np.ndarray) -> None:
    """Writes segment ids (int, < 2**24, 0 = void) in COCO's RGB encoding
    (id = R + 256 G + 256^2 B)."""
    from panopticapi.utils import id2rgb

    if segment_ids.min() < 0 or segment_ids.max() >= 2**24:
        raise ValueError("panoptic segment ids must lie in [0, 2**24)")
    write_image(path, id2rgb(segment_ids.astype(np.int64)).astype(np.uint8), "PNG")


def write_json(path: str, data: dict) -> None:
    """Writes ``data`` as JSON (atomically: never a half-written annotation file)."""
    encoded = json.dumps(data)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(encoded)


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
