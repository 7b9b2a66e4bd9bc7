"""Cityscapes benchmarks (19 evaluated classes): fine val semantic and panoptic segmentation.

Layout under the dataset root (cityscapesScripts' layout; ``datasets/prepare_cityscapes.py``
writes the two derived parts, so cityscapesScripts need not be installed)::

    cityscapes/
        leftImg8bit/val/<city>/<id>_leftImg8bit.png
        gtFine/val/<city>/<id>_gtFine_labelIds.png, <id>_gtFine_instanceIds.png   # downloaded
        gtFine/val/<city>/<id>_gtFine_labelTrainIds.png     # derived: 0-18, 255 = ignore
        gtFine/cityscapes_panoptic_val.json                 # derived: COCO panoptic format,
        gtFine/cityscapes_panoptic_val/<id>_gtFine_panoptic.png   # category ids = label ids

detectron2 registers ``cityscapes_fine_sem_seg_val`` / ``cityscapes_fine_panoptic_val`` on the
same files for its Cityscapes evaluators (which need cityscapesScripts); the names here use
detectron2's generic semantic (mIoU) and COCO panoptic (PQ) evaluators instead.
"""

from __future__ import annotations

import os

from detectron2.data import MetadataCatalog

from .benchmark_registry import (
    PANOPTIC_LAZY_KEYS,
    load_panoptic_json,
    load_sem_seg_pairs,
    panoptic_metadata,
    register_dataset,
    vocabulary_metadata,
)

__all__ = ["register_cityscapes_benchmarks"]


def _city(image_id: str) -> str:
    return image_id.split("_")[0]  # "frankfurt_000000_000294" -> "frankfurt"


def register_cityscapes_benchmarks(root: str, *, prefix: str = "") -> list[str]:
    """Registers ``cityscapes_sem_seg_val`` and ``cityscapes_panoptic_val`` (each preceded by
    ``prefix``) under ``root``; reads no file.

    Returns:
        The registered names.
    """
    city = os.path.join(root, "cityscapes")
    image_dir = os.path.join(city, "leftImg8bit", "val")
    gt_dir = os.path.join(city, "gtFine", "val")

    sem = f"{prefix}cityscapes_sem_seg_val"
    register_dataset(
        sem,
        lambda: load_sem_seg_pairs(
            image_dir,
            gt_dir,
            image_suffix="_leftImg8bit.png",
            gt_suffix="_gtFine_labelTrainIds.png",
            recursive=True,
        ),
        {
            "image_root": image_dir,
            "sem_seg_root": gt_dir,
            "ignore_label": 255,
            "evaluator_type": "sem_seg",
            "vocabulary": "cityscapes_19",
            "paper_column": "Citys",
        },
        lazy_loader=vocabulary_metadata("cityscapes_19", 19),
        lazy_keys=("stuff_classes",),
    )

    pan_json = os.path.join(city, "gtFine", "cityscapes_panoptic_val.json")
    pan_root = os.path.join(city, "gtFine", "cityscapes_panoptic_val")
    pan = f"{prefix}cityscapes_panoptic_val"

    def image_file(info: dict) -> str:
        return os.path.join(image_dir, _city(info["id"]), info["file_name"])

    def sem_seg_file(info: dict) -> str:
        return os.path.join(gt_dir, _city(info["id"]), f"{info['id']}_gtFine_labelTrainIds.png")

    register_dataset(
        pan,
        lambda: load_panoptic_json(
            pan_json,
            pan_root,
            MetadataCatalog.get(pan),
            image_file=image_file,
            sem_seg_file=sem_seg_file,
        ),
        {
            "image_root": image_dir,
            "panoptic_root": pan_root,
            "panoptic_json": pan_json,
            "sem_seg_root": gt_dir,
            "ignore_label": 255,
            "label_divisor": 1000,
            "evaluator_type": "coco_panoptic_seg",
            "vocabulary": "cityscapes_19",
            "paper_column": "Cityscapes",
        },
        lazy_loader=panoptic_metadata(pan_json, "cityscapes_19"),
        lazy_keys=PANOPTIC_LAZY_KEYS,
    )
    return [sem, pan]
