"""Registers the synthetic world's datasets (see :mod:`uniovseg.data.synthetic`) in detectron2.

Names (``prefix`` defaults to ``synthetic``):

- ``<prefix>_sa1b_train``: image-mask pairs, SA-1B loader (:func:`register_sa1b`).
- ``<prefix>_captions_train``: image-caption pairs (:func:`register_caption_dataset`).
- ``<prefix>_clip_pretrain``: the CLIP pretraining pairs (same loader).
- ``<prefix>_sem_seg_val``: semantic segmentation, evaluator ``sem_seg``.
- ``<prefix>_panoptic_val``: COCO panoptic, evaluator ``coco_panoptic_seg``.
- ``<prefix>_instances_val``: COCO instances of every segment (things and stuff), the source of
  point and box prompts.

Registration reads no file: the loaders run when a dataset is first used, and the class lists in
the metadata are read from ``<root>/eval/categories.json`` the first time they are accessed (so a
world with other classes needs no code change, and registering a root that does not exist yet is
harmless). Class indices are contiguous in ``class_names.txt`` order (things, then stuff);
following detectron2's ``coco_panoptic_standard`` metadata, ``thing_classes`` and
``stuff_classes`` both list every class and the two id maps share one contiguous space.
"""

from __future__ import annotations

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from .captions import register_caption_dataset

__all__ = [
    "load_synthetic_panoptic",
    "load_synthetic_sem_seg",
    "read_categories",
    "register_synthetic_world",
]

logger = logging.getLogger(__name__)


def read_categories(root: str) -> list[dict]:
    """The COCO categories (``id``, ``name``, ``isthing``, ``color``) of a written world."""
    path = os.path.join(root, "eval", "categories.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} does not exist: generate the world first with "
            f"`python datasets/prepare_synthetic.py --root {root}`."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _class_metadata(categories: list[dict]) -> dict:
    names = [c["name"] for c in categories]
    colors = [c["color"] for c in categories]
    return {
        "thing_classes": names,
        "stuff_classes": names,
        "thing_colors": colors,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if not c["isthing"]
        },
    }


class _LazyClassMetadata(Metadata):
    """detectron2 metadata whose class keys are read from the world's categories on first use."""

    _LAZY_KEYS = frozenset(_class_metadata([]))

    def __getattr__(self, key):
        state = self.__dict__
        if key in self._LAZY_KEYS and "categories_root" in state and not state.get("_loaded"):
            values = _class_metadata(read_categories(state["categories_root"]))
            state.update({k: values[k] for k in state["_lazy_keys"]})
            state["_loaded"] = True
            if key in state:
                return state[key]
        return super().__getattr__(key)


def load_synthetic_sem_seg(root: str) -> list[dict]:
    """Semantic segmentation dicts: ``file_name``, ``sem_seg_file_name`` (uint8 PNG, 255 =
    ignore), ``height``, ``width``, ``image_id``."""
    with open(os.path.join(root, "eval", "panoptic.json"), encoding="utf-8") as f:
        images = json.load(f)["images"]
    return [
        {
            "file_name": os.path.join(root, "eval", "images", im["file_name"]),
            "sem_seg_file_name": os.path.join(
                root, "eval", "semantic", os.path.splitext(im["file_name"])[0] + ".png"
            ),
            "height": im["height"],
            "width": im["width"],
            "image_id": im["id"],
        }
        for im in images
    ]


def load_synthetic_panoptic(root: str) -> list[dict]:
    """Panoptic dicts as detectron2's COCO panoptic loader makes them (``file_name``,
    ``image_id``, ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and
    ``isthing``), plus ``sem_seg_file_name``."""
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    meta = _class_metadata(read_categories(root))
    eval_dir = os.path.join(root, "eval")
    dicts = load_coco_panoptic_json(
        os.path.join(eval_dir, "panoptic.json"),
        os.path.join(eval_dir, "images"),
        os.path.join(eval_dir, "panoptic"),
        meta,
    )
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["pan_seg_file_name"]))[0]
        d["sem_seg_file_name"] = os.path.join(eval_dir, "semantic", stem + ".png")
    return dicts


def _register(name: str, loader, metadata: dict, lazy_keys: tuple[str, ...] = ()) -> None:
    if name in DatasetCatalog.list():
        # Re-registering (e.g. another root in the same process) replaces the old entry.
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    if lazy_keys:
        MetadataCatalog[name] = _LazyClassMetadata(
            name=name, categories_root=metadata["categories_root"], _lazy_keys=lazy_keys
        )
    MetadataCatalog.get(name).set(**metadata)


def register_synthetic_world(root: str, *, prefix: str = "synthetic") -> list[str]:
    """Registers every dataset of a synthetic world written under ``root``; reads no file.

    Args:
        root: The ``--root`` given to ``datasets/prepare_synthetic.py``.
        prefix: Dataset name prefix.

    Returns:
        The registered dataset names. Names registered before are replaced.
    """
    root = os.path.expanduser(root)
    eval_dir = os.path.join(root, "eval")
    names = []

    sa1b_name = f"{prefix}_sa1b_train"
    if sa1b_name in DatasetCatalog.list():
        DatasetCatalog.remove(sa1b_name)
        MetadataCatalog.remove(sa1b_name)
    from .sa1b import register_sa1b  # written by the SA-1B loader; imported on use

    register_sa1b(sa1b_name, os.path.join(root, "sa1b"))
    names.append(sa1b_name)

    for name, sub in (
        (f"{prefix}_captions_train", "captions"),
        (f"{prefix}_clip_pretrain", "pretrain"),
    ):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_caption_dataset(name, os.path.join(root, sub, "captions.jsonl"))
        names.append(name)

    common = {"categories_root": root, "image_root": os.path.join(eval_dir, "images")}
    name = f"{prefix}_sem_seg_val"
    _register(
        name,
        lambda: load_synthetic_sem_seg(root),
        {
            **common,
            "sem_seg_root": os.path.join(eval_dir, "semantic"),
            "ignore_label": 255,
            "evaluator_type": "sem_seg",
            "class_names_file": os.path.join(eval_dir, "class_names.txt"),
        },
        lazy_keys=("stuff_classes", "stuff_colors"),
    )
    names.append(name)

    name = f"{prefix}_panoptic_val"
    _register(
        name,
        lambda: load_synthetic_panoptic(root),
        {
            **common,
            "panoptic_root": os.path.join(eval_dir, "panoptic"),
            "panoptic_json": os.path.join(eval_dir, "panoptic.json"),
            "sem_seg_root": os.path.join(eval_dir, "semantic"),
            "json_file": os.path.join(eval_dir, "instances.json"),
            "ignore_label": 255,
            "label_divisor": 1000,
            "evaluator_type": "coco_panoptic_seg",
        },
        lazy_keys=tuple(sorted(_LazyClassMetadata._LAZY_KEYS)),
    )
    names.append(name)

    inst_name = f"{prefix}_instances_val"
    json_file = os.path.join(eval_dir, "instances.json")

    def load_instances() -> list[dict]:
        from detectron2.data.datasets.coco import load_coco_json

        return load_coco_json(json_file, common["image_root"], inst_name)

    _register(
        inst_name,
        load_instances,
        {"json_file": json_file, "image_root": common["image_root"], "evaluator_type": "coco"},
    )
    names.append(inst_name)
    logger.debug("Registered synthetic world datasets %s from %s", names, root)
    return names
