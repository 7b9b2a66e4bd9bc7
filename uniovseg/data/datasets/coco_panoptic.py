"""COCO panoptic benchmark (133 classes): panoptic val2017 and its semantic view.

Layout under the dataset root (the official downloads, plus one converted folder)::

    coco/
        val2017/*.jpg
        annotations/panoptic_val2017.json
        panoptic_val2017/*.png
        panoptic_semseg_val2017/*.png     # uint8, 0-132 (categories in id order), 255 = ignore

detectron2 registers ``coco_2017_val_panoptic`` on the same files with its own class names; the
names here carry the open-vocabulary metadata (``vocabulary``) instead.
"""

from __future__ import annotations

import os

from .benchmark_registry import (
    load_sem_seg_pairs,
    register_dataset,
    register_panoptic_dataset,
    vocabulary_metadata,
)

__all__ = ["register_coco_benchmarks"]


def register_coco_benchmarks(root: str, *, prefix: str = "") -> list[str]:
    """Registers ``coco_panoptic_val`` and ``coco_panoptic_sem_seg_val`` (each preceded by
    ``prefix``) under ``root``; reads no file.

    Returns:
        The registered names.
    """
    coco = os.path.join(root, "coco")
    image_dir = os.path.join(coco, "val2017")
    pan_json = os.path.join(coco, "annotations", "panoptic_val2017.json")
    pan_root = os.path.join(coco, "panoptic_val2017")
    sem_dir = os.path.join(coco, "panoptic_semseg_val2017")

    pan = f"{prefix}coco_panoptic_val"

    register_panoptic_dataset(
        pan,
        image_dir=image_dir,
        panoptic_json=pan_json,
        panoptic_root=pan_root,
        sem_seg_dir=sem_dir,
        vocabulary="coco_panoptic_133",
        paper_column="COCO",
    )

    sem = f"{prefix}coco_panoptic_sem_seg_val"
    register_dataset(
        sem,
        lambda: load_sem_seg_pairs(image_dir, sem_dir),
        {
            "image_root": image_dir,
            "sem_seg_root": sem_dir,
            "ignore_label": 255,
            "evaluator_type": "sem_seg",
            "vocabulary": "coco_panoptic_133",
            "paper_column": "COCO",
        },
        lazy_loader=vocabulary_metadata("coco_panoptic_133", 133),
        lazy_keys=("stuff_classes",),
    )
    return [pan, sem]
