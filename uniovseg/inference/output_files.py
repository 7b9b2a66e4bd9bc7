"""Files written for one processed image: JSON records, label maps and panoptic PNGs.

Formats:

* records: SAM / SA-1B style dicts with a compressed COCO RLE ``segmentation`` (``{"size":
  [H, W], "counts": str}``, decodable with ``pycocotools.mask.decode``), ``bbox`` XYWH,
  ``area``, ``predicted_iou``, ``stability_score``, ``point_coords`` ([[x, y]]) and/or ``box``
  (XYXY), ``crop_box``, plus ``category_id``/``category``/``score`` when labelled;
* semantic label map: single-channel PNG of class indices, uint8 with 255 for unlabelled
  pixels when there are fewer than 255 classes, else uint16 with 65535. It is data, not a
  picture: class indices 0, 1, 2... look black in image viewers; read it with
  ``np.asarray(PIL.Image.open(path))``;
* coloured label map: the same map as an RGB picture, class ``c`` in
  ``visualization.class_color(c)`` (the overlay's colours), unlabelled pixels black;
* panoptic PNG: COCO panoptic RGB encoding (``id = R + 256 G + 256^2 B``, 0 = no segment).

Every file is written atomically (a temporary ``PATH.tmp`` renamed into place): an interrupted
or failed write never leaves a half-written file.

Records, label maps and panoptic PNGs are at the size of the masks given (the demo gives them
at the original image's size, see :mod:`uniovseg.inference.upscaling`).

File names: an image named ``NAME`` gets ``NAME`` + each of :data:`IMAGE_FILE_SUFFIXES`, and the
run gets :data:`SUMMARY_FILE`. No suffix ends another one, so distinct names (see
:func:`output_names`) never share a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uniovseg.atomic_files import atomic_write
from uniovseg.modeling.mask_postprocessing import encode_masks_rle, masks_to_boxes

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "SUMMARY_FILE",
    "check_output_dir",
    "concept_records",
    "image_info",
    "label_map_ignore_value",
    "output_names",
    "panoptic_to_semantic",
    "prompt_records",
    "write_json",
    "write_label_map",
    "write_panoptic_png",
    "write_rgb_png",
    "write_semantic_color_png",
]

_UINT8_IGNORE = 255
_UINT16_IGNORE = 65535

# The run's own file, at the top of the output folder.
SUMMARY_FILE = "summary.json"
# Appended to an image's output name: records, overlay, label map, coloured label map,
# panoptic PNG.
IMAGE_FILE_SUFFIXES = (
    ".json",
    "_overlay.png",
    "_semantic.png",
    "_semantic_color.png",
    "_panoptic.png",
)


def output_names(names: Sequence[str]) -> list[str]:
    """Output names (paths relative to the output folder, without suffix) that cannot collide.

    A name is kept unless an earlier one took it or it is the run's own (``summary``, whose
    ``.json`` is :data:`SUMMARY_FILE`); then ``_2``, ``_3``... is appended, as
    :func:`~uniovseg.inference.image_io.collect_image_paths` does. Names are compared
    case-insensitively: ``A`` and ``a`` are one file on macOS and Windows file systems.

    Args:
        names: Wanted names, e.g. ``ImageInput.name`` of each input (``"a"``, ``"sub/b"``).

    Returns:
        One unique name per input, in order.
    """
    taken = {os.path.splitext(SUMMARY_FILE)[0].casefold()}
    unique_names = []
    for name in names:
        unique, n = name, 1
        while unique.casefold() in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique.casefold())
        unique_names.append(unique)
    return unique_names


def check_output_dir(path: str) -> None:
    """Creates the output folder if needed and proves that files can be written in it (a
    temporary file is created, written and removed), so that a run fails before any work.

    Raises:
        ValueError: ``path`` is a file, lies under a file, or cannot be created or written in;
            the message says which.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"the output folder {path!r} is a file; give a folder path")
    for parent in Path(path).absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(
                f"the output folder {path!r} lies under {str(parent)!r}, which is a file; "
                "give a folder path"
            )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {path!r}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".uniovseg-write-test-", suffix=".tmp", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write in the output folder {path!r}: {e.strerror or e}") from e


def _save_png(path: str, array: np.ndarray, **options) -> None:
    image = Image.fromarray(array)
    with atomic_write(path) as handle:
        image.save(handle, format="PNG", **options)


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
    _save_png(path, np.where(valid, labels, ignore).astype(dtype))
    return ignore


def write_semantic_color_png(path: str, labels: np.ndarray, num_classes: int) -> None:
    """Writes int class indices [H, W] as an RGB picture (``visualization.colorize_labels``:
    the overlay's class colours, black for values outside ``[0, num_classes)``)."""
    from uniovseg.inference.visualization import colorize_labels

    write_rgb_png(path, colorize_labels(labels, num_classes))


def write_panoptic_png(path: str, panoptic_seg: np.ndarray) -> None:
    """Writes segment ids [H, W] in COCO panoptic's RGB encoding."""
    from panopticapi.utils import id2rgb

    _save_png(path, id2rgb(np.asarray(panoptic_seg, dtype=np.int64)).astype(np.uint8))


def write_rgb_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] RGB picture."""
    # Fast compression: overlays of large photos take seconds at the default level.
    _save_png(path, np.asarray(image, dtype=np.uint8), compress_level=1)


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
    first_prompt_index: int = 0,
) -> list[dict]:
    """Records of prompted masks (one per prompt and output), JSON-ready.

    Args:
        masks: bool [N, M, H, W].
        iou_predictions, stability_scores: float [N, M].
        points: float [N, 2] point prompts (x, y), or None.
        boxes: float [N, 4] XYXY box prompts, or None (exactly one of points/boxes).
        labels, scores: Optional int [N, M] class indices and float [N, M] probabilities.
        class_names: Display names for ``labels``.
        first_prompt_index: ``prompt_index`` of the first prompt: give the number of prompts
            already recorded for the image (e.g. the points before its boxes), so that every
            prompt of an image has its own index.

    Returns:
        N x M dicts, prompt-major, with the module's record keys plus ``prompt_index``
        (``first_prompt_index + i`` for prompt ``i``) and ``mask_index`` (which of the prompt's
        M outputs).
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
            "prompt_index": first_prompt_index + i,
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


def concept_records(
    masks: np.ndarray,
    scores: Sequence[float],
    iou_predictions: Sequence[float],
    *,
    concept: str,
    concept_index: int,
) -> list[dict]:
    """Records of one phrase's instances (concept prompts), JSON-ready.

    Args:
        masks: bool [N, H, W], the instances by decreasing score.
        scores: Their N phrase probabilities.
        iou_predictions: Their N predicted IoUs (mask quality).
        concept: The phrase.
        concept_index: Its position in the query.

    Returns:
        N dicts with ``segmentation`` (COCO RLE), ``area``, ``bbox`` (XYWH), ``concept``,
        ``concept_index``, ``score`` and ``predicted_iou``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or not len(masks) == len(scores) == len(iou_predictions):
        raise ValueError(
            f"masks must be [N, H, W] with N scores and IoUs, got {masks.shape}, "
            f"{len(scores)} and {len(iou_predictions)}"
        )
    rles = encode_masks_rle(masks)
    xyxy = masks_to_boxes(torch.from_numpy(masks)).round().long().tolist()
    records = []
    for k in range(len(masks)):
        x1, y1, x2, y2 = xyxy[k]
        records.append(
            {
                "segmentation": rles[k],
                "area": int(masks[k].sum()),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "concept": concept,
                "concept_index": int(concept_index),
                "score": float(scores[k]),
                "predicted_iou": float(iou_predictions[k]),
            }
        )
    return records


def image_info(loaded, *, file_name: str, task: str, class_names: Sequence[str] | None) -> dict:
    """The header of an image's JSON: its name, the task, its original and processed sizes,
    the scale between them and the reader's notes (a
    :class:`~uniovseg.inference.image_io.LoadedImage`), and ``class_names`` when given."""
    info = {
        "file_name": file_name,
        "task": task,
        "height": loaded.original_size[0],
        "width": loaded.original_size[1],
        "processed_height": loaded.size[0],
        "processed_width": loaded.size[1],
        "scale": loaded.scale,
        "notes": loaded.notes,
    }
    if class_names:
        info["class_names"] = list(class_names)
    return info


def write_json(path: str, data: dict) -> None:
    """Writes ``data`` as JSON atomically (a temporary file renamed into place), so an
    interrupted run never leaves a half-written file."""
    encoded = json.dumps(data).encode("utf-8")  # before opening: a bad value writes nothing
    with atomic_write(path) as handle:
        handle.write(encoded)
