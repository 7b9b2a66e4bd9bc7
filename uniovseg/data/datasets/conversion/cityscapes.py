"""Cityscapes converters: ``labelTrainIds`` maps and COCO-format panoptic annotations.

They write what cityscapesScripts' ``createTrainIdLabelImgs`` and ``createPanopticImgs`` write
(same names, same ids: panoptic category ids are Cityscapes label ids, segment ids are the
``instanceIds`` values), from the official ``gtFine_trainvaltest.zip`` and
``leftImg8bit_trainvaltest.zip`` unpacked into ``<root>/cityscapes/``.

Label facts (id -> train id, thing or stuff, for the 19 evaluated classes) come from
detectron2's ``CITYSCAPES_CATEGORIES``.
"""

from __future__ import annotations

import os

import numpy as np
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from .label_io import (
    lookup_table,
    panoptic_segments,
    read_label_map,
    write_json,
    write_label_png,
    write_panoptic_png,
)
from .progress import ConversionRun

__all__ = ["cityscapes_panoptic", "cityscapes_train_ids", "prepare_cityscapes"]

_EVALUATED = {c["id"]: c for c in CITYSCAPES_CATEGORIES}  # label id -> category


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """``*_gtFine_labelIds.png`` values -> uint8 train ids 0-18, 255 for unevaluated labels."""
    lut = lookup_table({k: c["trainId"] for k, c in _EVALUATED.items()}, 256, 255, np.uint8)
    return lut[label_ids.astype(np.uint8)]


def cityscapes_panoptic(instance_ids: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Panoptic segments from a ``*_gtFine_instanceIds.png``.

    ``instanceIds`` holds ``label id * 1000 + k`` for individually annotated objects and the
    label id elsewhere; a label id on a thing class marks a crowd region (``iscrowd=1``).
    Unevaluated labels become void.

    Returns:
        Segment ids int32 [H, W] (the ``instanceIds`` values; 0 = void) and ``segments_info``
        with Cityscapes label ids as ``category_id``.
    """
    instance_ids = instance_ids.astype(np.int32)
    segment_ids = np.zeros_like(instance_ids)
    categories, crowd = {}, {}
    for seg_id in np.unique(instance_ids).tolist():
        label = seg_id if seg_id < 1000 else seg_id // 1000
        if label not in _EVALUATED:
            continue
        segment_ids[instance_ids == seg_id] = seg_id
        categories[seg_id] = label
        crowd[seg_id] = int(seg_id < 1000 and bool(_EVALUATED[label]["isthing"]))
    return segment_ids, panoptic_segments(segment_ids, categories, crowd)


def prepare_cityscapes(
    root: str, *, split: str = "val", overwrite: bool = False, run: ConversionRun | None = None
) -> str:
    """Writes ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``, ``gtFine/cityscapes_panoptic_
    <split>/*_gtFine_panoptic.png`` and ``gtFine/cityscapes_panoptic_<split>.json`` under
    ``<root>/cityscapes``; returns the JSON path.

    Args:
        run: Progress and bad-file policy (default: stop at the first bad file, naming it); a
            skipped image is left out of the JSON.
    """
    run = run if run is not None else ConversionRun()
    base = os.path.join(root, "cityscapes")
    gt_dir = os.path.join(base, "gtFine", split)
    if not os.path.isdir(gt_dir):
        raise ValueError(f"{gt_dir} does not exist: unpack gtFine_trainvaltest.zip into {base}")
    pan_dir = os.path.join(base, "gtFine", f"cityscapes_panoptic_{split}")
    suffix = "_gtFine_labelIds.png"
    label_files = [
        os.path.join(gt_dir, city, name)
        for city in sorted(os.listdir(gt_dir))
        if os.path.isdir(os.path.join(gt_dir, city))
        for name in sorted(os.listdir(os.path.join(gt_dir, city)))
        if name.endswith(suffix)
    ]
    if not label_files:
        raise ValueError(f"no *{suffix} under {gt_dir}")
    images, annotations = [], []
    for label_file in run.track(label_files, total=len(label_files)):
        image_id = os.path.basename(label_file)[: -len(suffix)]
        prefix = label_file[: -len("labelIds.png")]
        with run.file(label_file):
            label_ids = read_label_map(label_file)
            if label_ids.ndim != 2:
                raise ValueError(f"expected a single-channel label image, got {label_ids.shape}")
            train_file = prefix + "labelTrainIds.png"
            if overwrite or not os.path.exists(train_file):
                write_label_png(train_file, cityscapes_train_ids(label_ids))
            segment_ids, segments = cityscapes_panoptic(read_label_map(prefix + "instanceIds.png"))
            pan_name = image_id + "_gtFine_panoptic.png"
            if overwrite or not os.path.exists(os.path.join(pan_dir, pan_name)):
                write_panoptic_png(os.path.join(pan_dir, pan_name), segment_ids)
            height, width = label_ids.shape
            images.append(
                {
                    "id": image_id,
                    "file_name": image_id + "_leftImg8bit.png",
                    "height": height,
                    "width": width,
                }
            )
            annotations.append(
                {"image_id": image_id, "file_name": pan_name, "segments_info": segments}
            )
    categories = [
        {"id": c["id"], "name": c["name"], "color": list(c["color"]), "isthing": c["isthing"]}
        for c in CITYSCAPES_CATEGORIES
    ]
    out_json = os.path.join(base, "gtFine", f"cityscapes_panoptic_{split}.json")
    write_json(out_json, {"images": images, "annotations": annotations, "categories": categories})
    return out_json
