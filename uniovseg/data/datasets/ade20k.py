"""ADE20K benchmarks: A-150 and A-847 semantic segmentation, ADE20K-150 panoptic segmentation.

Layout under the dataset root (see datasets/README.md for the downloads and prepare commands)::

    ADEChallengeData2016/
        images/validation/ADE_val_*.jpg
        annotations_detectron2/validation/ADE_val_*.png   # uint8, 0-149, 255 = ignore
        ade20k_panoptic_val.json                           # COCO panoptic format
        ade20k_panoptic_val/ADE_val_*.png
    ADE20K_2021_17_01/
        images_detectron2/validation/ADE_val_*.jpg         # shorter side <= 512
        annotations_detectron2/validation/ADE_val_*.tif    # uint16, 0-846, 65535 = ignore
"""

from __future__ import annotations

import os

from .benchmark_registry import (
    load_sem_seg_pairs,
    register_dataset,
    register_panoptic_dataset,
    vocabulary_metadata,
)

__all__ = ["ADE20K_150_DIR", "ADE20K_FULL_DIR", "register_ade20k_benchmarks"]

ADE20K_150_DIR = "ADEChallengeData2016"
ADE20K_FULL_DIR = "ADE20K_2021_17_01"


def register_ade20k_benchmarks(root: str, *, prefix: str = "") -> list[str]:
    """Registers ``ade20k_150_sem_seg_val``, ``ade20k_847_sem_seg_val`` and
    ``ade20k_panoptic_val`` (each name preceded by ``prefix``) under ``root``; reads no file.

    Returns:
        The registered names.
    """
    ade = os.path.join(root, ADE20K_150_DIR)
    image_dir = os.path.join(ade, "images", "validation")
    sem_dir = os.path.join(ade, "annotations_detectron2", "validation")

    a150 = f"{prefix}ade20k_150_sem_seg_val"
    register_dataset(
        a150,
        lambda: load_sem_seg_pairs(image_dir, sem_dir),
        {
            "image_root": image_dir,
            "sem_seg_root": sem_dir,
            "ignore_label": 255,
            "evaluator_type": "sem_seg",
            "vocabulary": "ade20k_150",
            "paper_column": "A-150",
        },
        lazy_loader=vocabulary_metadata("ade20k_150", 150),
        lazy_keys=("stuff_classes",),
    )

    full = os.path.join(root, ADE20K_FULL_DIR)
    full_images = os.path.join(full, "images_detectron2", "validation")
    full_labels = os.path.join(full, "annotations_detectron2", "validation")
    a847 = f"{prefix}ade20k_847_sem_seg_val"
    register_dataset(
        a847,
        lambda: load_sem_seg_pairs(full_images, full_labels, gt_suffix=".tif"),
        {
            "image_root": full_images,
            "sem_seg_root": full_labels,
            "ignore_label": 65535,
            "evaluator_type": "sem_seg",
            "vocabulary": "ade20k_847",
            "paper_column": "A-847",
        },
        lazy_loader=vocabulary_metadata("ade20k_847", 847),
        lazy_keys=("stuff_classes",),
    )

    pan_json = os.path.join(ade, "ade20k_panoptic_val.json")
    pan_root = os.path.join(ade, "ade20k_panoptic_val")
    pan = f"{prefix}ade20k_panoptic_val"

    register_panoptic_dataset(
        pan,
        image_dir=image_dir,
        panoptic_json=pan_json,
        panoptic_root=pan_root,
        sem_seg_dir=sem_dir,
        vocabulary="ade20k_150",
        paper_column="ADE20K",
    )
    return [a150, a847, pan]
