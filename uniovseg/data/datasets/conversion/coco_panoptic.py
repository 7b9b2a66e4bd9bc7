"""COCO panoptic -> semantic labels (133 classes) for the ``coco_panoptic_sem_seg_val`` view.

Official inputs (under ``<root>/coco/``): ``val2017/`` images, ``annotations/panoptic_val2017.json``
and ``panoptic_val2017/`` PNGs (from ``panoptic_annotations_trainval2017.zip``, whose inner
``panoptic_val2017.zip`` must be unpacked too).
"""

from __future__ import annotations

import os

import numpy as np

from .label_io import read_json, read_label_map, write_label_png
from .progress import ConversionRun

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
    root: str, *, split: str = "val2017", overwrite: bool = False, run: ConversionRun | None = None
) -> int:
    """Writes ``coco/panoptic_semseg_<split>/*.png`` (labels = categories in id order, 0-132);
    returns the number written.

    Args:
        run: Progress and bad-file policy (default: stop at the first bad file, naming it).
    """
    from panopticapi.utils import rgb2id

    run = run if run is not None else ConversionRun()
    coco = os.path.join(root, "coco")
    json_file = os.path.join(coco, "annotations", f"panoptic_{split}.json")
    data = read_json(
        json_file,
        f"unpack panoptic_annotations_trainval2017.zip into {coco} (see datasets/README.md)",
    )
    try:
        ids = sorted(c["id"] for c in data["categories"])
        annotations = list(data["annotations"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{json_file} is not a COCO panoptic annotation file (no {e} in it)"
        ) from e
    png_dir = os.path.join(coco, f"panoptic_{split}")
    if not os.path.isdir(png_dir):
        raise ValueError(f"{png_dir} does not exist: unpack panoptic_{split}.zip into {coco}")
    category_to_label = {cat: i for i, cat in enumerate(ids)}
    written = 0
    for ann in run.track(annotations, total=len(annotations)):
        name = ann.get("file_name") if isinstance(ann, dict) else None
        png = os.path.join(png_dir, str(name))
        with run.file(png):
            dst = os.path.join(coco, f"panoptic_semseg_{split}", ann["file_name"])
            if not overwrite and os.path.exists(dst):
                continue
            segment_ids = rgb2id(read_label_map(png))
            write_label_png(
                dst, panoptic_to_semantic(segment_ids, ann["segments_info"], category_to_label)
            )
            written += 1
    return written
