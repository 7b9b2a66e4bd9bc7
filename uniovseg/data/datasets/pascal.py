"""PASCAL benchmarks: PASCAL Context 59 / 459 and PASCAL VOC 2012 20 / 21 semantic segmentation.

Layout under the dataset root (see datasets/README.md)::

    VOCdevkit/VOC2010/
        JPEGImages/*.jpg                                  # the official VOC2010 images
        annotations_detectron2/pc59_val/*.png              # uint8, 0-58, 255 = ignore
        annotations_detectron2/pc459_val/*.tif             # uint16, 0-458, 65535 = ignore
    VOCdevkit/VOC2012/
        JPEGImages/*.jpg
        annotations_detectron2/pas21_val/*.png             # uint8, 0 = background, 255 = ignore
        annotations_detectron2/pas20_val/*.png             # uint8, 0-19, background = 255

The images are read in place; only the label files are converted.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .benchmark_registry import load_sem_seg_pairs, register_dataset, vocabulary_metadata

__all__ = ["PASCAL_SEM_SEG_BENCHMARKS", "register_pascal_benchmarks"]


class _SemSegBenchmark(NamedTuple):
    voc: str  # VOCdevkit sub-folder holding JPEGImages/
    labels: str  # folder under <voc>/annotations_detectron2/
    suffix: str  # label file suffix
    ignore_label: int
    vocabulary: str
    num_classes: int
    paper_column: str


PASCAL_SEM_SEG_BENCHMARKS = {
    "pascal_context_59_sem_seg_val": _SemSegBenchmark(
        "VOC2010", "pc59_val", ".png", 255, "pascal_context_59", 59, "PC-59"
    ),
    "pascal_context_459_sem_seg_val": _SemSegBenchmark(
        "VOC2010", "pc459_val", ".tif", 65535, "pascal_context_459", 459, "PC-459"
    ),
    "pascal_voc_20_sem_seg_val": _SemSegBenchmark(
        "VOC2012", "pas20_val", ".png", 255, "pascal_voc_20", 20, "PAS-20"
    ),
    "pascal_voc_21_sem_seg_val": _SemSegBenchmark(
        "VOC2012", "pas21_val", ".png", 255, "pascal_voc_21", 21, "PAS-21"
    ),
}


def register_pascal_benchmarks(root: str, *, prefix: str = "") -> list[str]:
    """Registers the four PASCAL benchmarks (names in :data:`PASCAL_SEM_SEG_BENCHMARKS`, each
    preceded by ``prefix``) under ``root``; reads no file.

    Returns:
        The registered names.
    """
    names = []
    for base, spec in PASCAL_SEM_SEG_BENCHMARKS.items():
        image_dir = os.path.join(root, "VOCdevkit", spec.voc, "JPEGImages")
        gt_dir = os.path.join(root, "VOCdevkit", spec.voc, "annotations_detectron2", spec.labels)
        name = prefix + base
        register_dataset(
            name,
            lambda i=image_dir, g=gt_dir, s=spec.suffix: load_sem_seg_pairs(i, g, gt_suffix=s),
            {
                "image_root": image_dir,
                "sem_seg_root": gt_dir,
                "ignore_label": spec.ignore_label,
                "evaluator_type": "sem_seg",
                "vocabulary": spec.vocabulary,
                "paper_column": spec.paper_column,
            },
            lazy_loader=vocabulary_metadata(spec.vocabulary, spec.num_classes),
            lazy_keys=("stuff_classes",),
        )
        names.append(name)
    return names
