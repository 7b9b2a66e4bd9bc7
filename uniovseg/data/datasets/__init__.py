"""Dataset loaders and their detectron2 catalog registration.

Importing this package registers, lazily (no file is read until a dataset is used):

- the paper's benchmarks (ADE20K-150/847, PASCAL Context-59/459, PASCAL VOC-20/21, COCO panoptic,
  Cityscapes; see :mod:`.benchmarks` and datasets/README.md) under ``$DETECTRON2_DATASETS``
  (default ``./datasets``);
- the training sets of the paper's configs, ``sa1b_train`` (``$DETECTRON2_DATASETS/sa1b``) and
  ``captions_train`` (``$DETECTRON2_DATASETS/captions/captions_entities.jsonl``); training
  registers them again from its config's ``DATASETS.UNIOVSEG.*`` keys (see :mod:`.training`);
- the synthetic world's datasets (``synthetic_*``, see :mod:`.synthetic`) from
  ``$UNIOVSEG_SYNTHETIC_ROOT`` (default ``./datasets/synthetic``), plus its promptable view;
- the paper's promptable datasets with COCO-format masks (``coco_promptable_val``,
  ``timberseg_promptable_val``, ``ishape_*_promptable_val``, ...; see :mod:`.promptable`) under
  ``$DETECTRON2_DATASETS``. Any other COCO instances JSON: :func:`register_coco_promptable`, or
  the config key ``DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS``.
"""

import os

from .benchmarks import BENCHMARK_DATASETS, default_datasets_root, register_all_benchmarks
from .captions import load_caption_manifest, register_caption_dataset
from .promptable import (
    PAPER_PROMPTABLE_DATASETS,
    register_coco_promptable,
    register_paper_promptable_datasets,
    register_promptable_datasets_from_config,
    register_promptable_view,
)
from .synthetic import register_synthetic_world
from .training import (
    check_datasets,
    register_training_datasets,
    register_training_datasets_from_config,
)

__all__ = [
    "BENCHMARK_DATASETS",
    "PAPER_PROMPTABLE_DATASETS",
    "check_datasets",
    "default_datasets_root",
    "load_caption_manifest",
    "register_all_benchmarks",
    "register_caption_dataset",
    "register_coco_promptable",
    "register_paper_promptable_datasets",
    "register_promptable_datasets_from_config",
    "register_promptable_view",
    "register_synthetic_world",
    "register_training_datasets",
    "register_training_datasets_from_config",
]

register_all_benchmarks()
register_paper_promptable_datasets()
register_training_datasets()
register_synthetic_world(
    os.environ.get("UNIOVSEG_SYNTHETIC_ROOT", os.path.join("datasets", "synthetic"))
)
# 1-point / 1-box IoU on the synthetic world's labelled segments (things and stuff).
register_promptable_view("synthetic_promptable_val", "synthetic_panoptic_val")
