"""Registration of every evaluation benchmark of the paper (Tables 1 and 2) in detectron2.

Names (all validation splits; layouts and prepare commands in datasets/README.md), with their
evaluator type, packaged vocabulary, ignore label and column in the paper's tables:

- ``ade20k_847_sem_seg_val``: sem_seg, ``ade20k_847``, 65535, A-847
- ``pascal_context_459_sem_seg_val``: sem_seg, ``pascal_context_459``, 65535, PC-459
- ``ade20k_150_sem_seg_val``: sem_seg, ``ade20k_150``, 255, A-150
- ``pascal_context_59_sem_seg_val``: sem_seg, ``pascal_context_59``, 255, PC-59
- ``pascal_voc_21_sem_seg_val``: sem_seg, ``pascal_voc_21``, 255, PAS-21
- ``pascal_voc_20_sem_seg_val``: sem_seg, ``pascal_voc_20``, 255, PAS-20
- ``cityscapes_sem_seg_val``: sem_seg, ``cityscapes_19``, 255, Citys
- ``coco_panoptic_sem_seg_val``: sem_seg, ``coco_panoptic_133``, 255, COCO (mIoU, Table 3)
- ``coco_panoptic_val``: coco_panoptic_seg, ``coco_panoptic_133``, COCO (PQ/SQ/RQ)
- ``ade20k_panoptic_val``: coco_panoptic_seg, ``ade20k_150``, ADE20K
- ``cityscapes_panoptic_val``: coco_panoptic_seg, ``cityscapes_19``, Cityscapes

Every dataset's metadata holds ``evaluator_type``, ``ignore_label``, ``vocabulary`` (the packaged
class-name list, see :mod:`uniovseg.data.vocabulary`), ``paper_column`` (its column in the paper's
tables, used by :mod:`uniovseg.evaluation.results_table`), and the folders it reads; class lists
(``stuff_classes``; for panoptic also ``thing_classes`` and the ``*_dataset_id_to_contiguous_id``
maps) are filled in on first use. The names do not collide with detectron2's builtin ones
(``ade20k_sem_seg_val``, ``coco_2017_val_panoptic``, ``cityscapes_fine_*``).
"""

from __future__ import annotations

import os

from .ade20k import register_ade20k_benchmarks
from .cityscapes import register_cityscapes_benchmarks
from .coco_panoptic import register_coco_benchmarks
from .pascal import register_pascal_benchmarks

__all__ = ["BENCHMARK_DATASETS", "default_datasets_root", "register_all_benchmarks"]

BENCHMARK_DATASETS = (
    "ade20k_847_sem_seg_val",
    "pascal_context_459_sem_seg_val",
    "ade20k_150_sem_seg_val",
    "pascal_context_59_sem_seg_val",
    "pascal_voc_21_sem_seg_val",
    "pascal_voc_20_sem_seg_val",
    "cityscapes_sem_seg_val",
    "coco_panoptic_sem_seg_val",
    "coco_panoptic_val",
    "ade20k_panoptic_val",
    "cityscapes_panoptic_val",
)


def default_datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (detectron2's convention), default ``./datasets``."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def register_all_benchmarks(root: str | None = None, *, prefix: str = "") -> list[str]:
    """Registers every benchmark of :data:`BENCHMARK_DATASETS` under ``root``; reads no file.

    Args:
        root: Folder holding the datasets (default: :func:`default_datasets_root`).
        prefix: Prepended to every name (e.g. to register a second copy for tests).

    Returns:
        The registered names. Earlier registrations of the same names are replaced.
    """
    root = default_datasets_root() if root is None else os.path.expanduser(root)
    names = []
    for register in (
        register_ade20k_benchmarks,
        register_pascal_benchmarks,
        register_coco_benchmarks,
        register_cityscapes_benchmarks,
    ):
        names.extend(register(root, prefix=prefix))
    return names
