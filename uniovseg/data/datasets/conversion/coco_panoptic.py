"""COCO panoptic -> semantic labels (133 classes) for the ``coco_panoptic_sem_seg_val`` view.

Official inputs (under ``<root>/coco/``): ``val2017/`` images, ``annotations/panoptic_val2017.json``
and ``panoptic_val2017/`` PNGs (from ``panoptic_annotations_trainval2017.zip``, whose inner
``panoptic_val2017.zip`` must be unpacked too).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .label_io import read_label_map, write_label_png

__all__ = ["panoptic_to_semantic", "prepare_coco_panoptic_semantic"]


def panoptic_to_semantic(
    segment_ids: np.ndarray, segments_info: list[dict], category_to_label: dict[int, int]
) -> np.ndarray:
    """Per-pixel class of a panoptic annotation.

    Every segment, crowd ones included, gives its category's label (the convention of the
    semantic COCO numbers in this field); void pixels (id 0) and unknown ids give 255.

    Args:
        segment_ids: int [H, W] (RGB-decoded panoptic PNG).
        segments_info: The annotation's segments (``id``, ``category_id``).
        category_to_label: COCO category id -> label (0-254).

    Returns:
        uint8 [H, W].
    """
    out = np.full(segment_ids.shape, 255, dtype=np.uint8)
    for seg in segments_info:
        out[segment_ids == seg["id"]] = category_to_label[seg["category_id"]]
    return out


def prepare_coco_panoptic_semantic(
    root: str, *, split: str = "val2017", overwrite: bool = False
) -> int:
    """Writes ``coco/panoptic_semseg_<split>/*.png`` (labels = categories in id order, 0-132);
    returns the number written."""
    from panopticapi.utils import rgb2id

    coco = os.path.join(root, "coco")
    json_file = os.path.join(coco, "annotations", f"panoptic_{split}.json")
    if not os.path.isfile(json_file):
        raise ValueError(
            f"{json_file} does not exist: unpack panoptic_annotations_trainval2017.zip into "
            f"{coco} (see datasets/README.md)"
        )
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    ids = sorted(c["id"] for c in data["categories"])
    category_to_label = {cat: i for i, cat in enumerate(ids)}
    written = 0
    for ann in data["annotations"]:
        dst = os.path.join(coco, f"panoptic_semseg_{split}", ann["file_name"])
        if not overwrite and os.path.exists(dst):
            continue
        png = os.path.join(coco, f"panoptic_{split}", ann["file_name"])
        if not os.path.isfile(png):
            raise ValueError(f"{png} is missing: unpack panoptic_{split}.zip into {coco}")
        segment_ids = rgb2id(read_label_map(png))
        write_label_png(
            dst, panoptic_to_semantic(segment_ids, ann["segments_info"], category_to_label)
        )
        written += 1
    return written
