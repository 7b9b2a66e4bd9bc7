"""Shared pieces of the benchmark registrations: lazy metadata, a semantic-segmentation file loader
and class names from the packaged vocabularies.

Benchmark registration must read no file (importing :mod:`uniovseg.data.datasets` happens in every
entry point, also where no dataset was downloaded). Class lists therefore live in
:class:`LazyMetadata`: keys that are computed by a loader the first time one of them is read
(e.g. by an evaluator), and raise a ``ValueError`` that says what to prepare when they cannot be.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

__all__ = [
    "PANOPTIC_LAZY_KEYS",
    "LazyMetadata",
    "load_panoptic_json",
    "load_sem_seg_pairs",
    "panoptic_metadata",
    "register_dataset",
    "vocabulary_class_names",
    "vocabulary_metadata",
]

logger = logging.getLogger(__name__)


class LazyMetadata(Metadata):
    """detectron2 metadata whose ``lazy_keys`` are computed by ``lazy_loader()`` on first read.

    ``lazy_loader`` returns a dict holding at least every lazy key; it runs once, when one of
    them is first read (or on :meth:`as_dict`). Other keys behave as in :class:`Metadata`.
    Keep ``lazy_loader`` picklable (a module-level function or a ``functools.partial``).
    """

    _PRIVATE = ("_lazy_loader", "_lazy_keys", "_lazy_loaded")

    def __init__(self, name: str, lazy_loader: Callable[[], dict], lazy_keys: Iterable[str]):
        super().__init__(name=name)
        # Written to __dict__ directly: Metadata.__setattr__ would read (and so load) them first.
        self.__dict__.update(
            _lazy_loader=lazy_loader, _lazy_keys=frozenset(lazy_keys), _lazy_loaded=False
        )

    def _load_lazy_keys(self) -> None:
        state = self.__dict__
        values = state["_lazy_loader"]()
        missing = state["_lazy_keys"] - set(values)
        if missing:
            raise ValueError(
                f"the metadata loader of {self.name!r} did not return {sorted(missing)}"
            )
        state.update({k: values[k] for k in state["_lazy_keys"]})
        state["_lazy_loaded"] = True

    def __getattr__(self, key):
        state = self.__dict__
        if key in state.get("_lazy_keys", ()) and not state.get("_lazy_loaded", True):
            self._load_lazy_keys()
            return state[key]
        return super().__getattr__(key)

    def as_dict(self) -> dict:
        """All metadata, the lazy keys included (they are loaded if they were not yet)."""
        if not self.__dict__["_lazy_loaded"]:
            self._load_lazy_keys()
        return {k: v for k, v in self.__dict__.items() if k not in self._PRIVATE}


def register_dataset(
    name: str,
    loader: Callable[[], list[dict]],
    metadata: dict,
    *,
    lazy_loader: Callable[[], dict] | None = None,
    lazy_keys: Iterable[str] = (),
) -> None:
    """Registers ``name`` in detectron2's catalogs, replacing an earlier registration.

    Args:
        name: Dataset name.
        loader: Returns the dataset dicts; called on ``DatasetCatalog.get(name)``.
        metadata: Metadata set at once (cheap values: paths, ignore label, evaluator type...).
        lazy_loader: Returns the values of ``lazy_keys``; called on their first read.
        lazy_keys: Metadata keys computed by ``lazy_loader``.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    if lazy_loader is not None:
        MetadataCatalog[name] = LazyMetadata(name, lazy_loader, lazy_keys)
    MetadataCatalog.get(name).set(**metadata)


def load_sem_seg_pairs(
    image_dir: str,
    gt_dir: str,
    *,
    image_suffix: str = ".jpg",
    gt_suffix: str = ".png",
    recursive: bool = False,
) -> list[dict]:
    """Semantic-segmentation dicts, one per label file in ``gt_dir``.

    The image of ``<gt_dir>/<rel><gt_suffix>`` is ``<image_dir>/<rel><image_suffix>`` (``rel``
    may contain sub-folders with ``recursive=True``, e.g. Cityscapes' cities). Driven by the label
    files, so an image folder holding more images (all of VOC2010 for PASCAL Context's val split)
    is fine.

    Returns:
        Dicts sorted by ``rel`` with ``file_name``, ``sem_seg_file_name`` and ``image_id`` (the
        basename of ``rel``). Reads no image.

    Raises:
        ValueError: ``gt_dir`` is missing or empty, or an image is missing.
    """
    if not os.path.isdir(gt_dir):
        raise ValueError(
            f"label folder {gt_dir} does not exist: prepare the dataset as described in "
            "datasets/README.md (or point $DETECTRON2_DATASETS at the folder holding it)"
        )
    rels = []
    for folder, _, files in os.walk(gt_dir):
        rels.extend(
            os.path.relpath(os.path.join(folder, f), gt_dir)[: -len(gt_suffix)]
            for f in files
            if f.endswith(gt_suffix)
        )
        if not recursive:
            break
    if not rels:
        raise ValueError(f"no '*{gt_suffix}' label file in {gt_dir}: was the conversion run?")
    dicts = []
    for rel in sorted(rels):
        image = os.path.join(image_dir, rel + image_suffix)
        if not os.path.isfile(image):
            raise ValueError(
                f"label {os.path.join(gt_dir, rel + gt_suffix)} has no image {image}; "
                "check the layout in datasets/README.md"
            )
        dicts.append(
            {
                "file_name": image,
                "sem_seg_file_name": os.path.join(gt_dir, rel + gt_suffix),
                "image_id": os.path.basename(rel),
            }
        )
    logger.info("Loaded %d semantic-segmentation pairs from %s", len(dicts), gt_dir)
    return dicts


def vocabulary_class_names(vocabulary: str) -> list[str]:
    """Display names (each class's first synonym) of a packaged vocabulary, in label order."""
    # Imported on use: the vocabulary module reads package data.
    from uniovseg.data.vocabulary import class_display_names, load_vocabulary

    return class_display_names(load_vocabulary(vocabulary))


def _vocabulary_metadata(vocabulary: str, num_classes: int) -> dict:
    names = vocabulary_class_names(vocabulary)
    if len(names) != num_classes:
        raise ValueError(
            f"vocabulary {vocabulary!r} has {len(names)} classes, the benchmark {num_classes}: "
            "the packaged class-name file does not match the benchmark's labels"
        )
    return {"stuff_classes": names}


def vocabulary_metadata(vocabulary: str, num_classes: int) -> Callable[[], dict]:
    """A lazy loader of ``stuff_classes`` from a vocabulary that must hold ``num_classes``."""
    return functools.partial(_vocabulary_metadata, vocabulary, num_classes)


def _panoptic_metadata(panoptic_json: str, vocabulary: str) -> dict:
    if not os.path.isfile(panoptic_json):
        raise ValueError(
            f"{panoptic_json} does not exist: prepare the panoptic annotations as described in "
            "datasets/README.md"
        )
    with open(panoptic_json, encoding="utf-8") as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    names = vocabulary_class_names(vocabulary)
    if len(names) != len(categories):
        raise ValueError(
            f"{panoptic_json} has {len(categories)} categories but vocabulary {vocabulary!r} "
            f"has {len(names)} classes"
        )
    # detectron2's "standard" panoptic convention (coco_panoptic_standard): things and stuff
    # share one contiguous space (categories in id order) and both class lists name every class.
    return {
        "thing_classes": names,
        "stuff_classes": names,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if not c["isthing"]
        },
    }


PANOPTIC_LAZY_KEYS = (
    "thing_classes",
    "stuff_classes",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)


def panoptic_metadata(panoptic_json: str, vocabulary: str) -> Callable[[], dict]:
    """A lazy loader of the class lists and id maps (:data:`PANOPTIC_LAZY_KEYS`) of a COCO-format
    panoptic dataset: ids from the JSON's categories (in id order), names from ``vocabulary``."""
    return functools.partial(_panoptic_metadata, panoptic_json, vocabulary)


def load_panoptic_json(
    panoptic_json: str,
    panoptic_root: str,
    metadata: Metadata,
    *,
    image_file: Callable[[dict], str],
    sem_seg_file: Callable[[dict], str] | None = None,
) -> list[dict]:
    """Dataset dicts of a COCO-format panoptic annotation file.

    Unlike detectron2's ``load_coco_panoptic_json``, image ids stay as they are in the JSON
    (ADE20K and Cityscapes use strings; the panoptic evaluator matches predictions to ground
    truth by that id) and image paths come from ``image_file``.

    Args:
        panoptic_json: The annotation file (``images``, ``annotations``, ``categories``).
        panoptic_root: Folder of the annotations' PNG files.
        metadata: Holds ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``.
        image_file: Maps a JSON ``images`` entry to the image path.
        sem_seg_file: Maps a JSON ``images`` entry to its semantic label file, if any.

    Returns:
        One dict per annotation: ``file_name``, ``image_id``, ``height``, ``width``,
        ``pan_seg_file_name``, ``segments_info`` (``id``, contiguous ``category_id``,
        ``isthing``, ``iscrowd``, ``area``, ``bbox``) and, with ``sem_seg_file``,
        ``sem_seg_file_name``.
    """
    if not os.path.isfile(panoptic_json):
        raise ValueError(
            f"{panoptic_json} does not exist: prepare the panoptic annotations as described in "
            "datasets/README.md"
        )
    with open(panoptic_json, encoding="utf-8") as f:
        data = json.load(f)
    things = metadata.thing_dataset_id_to_contiguous_id
    stuff = metadata.stuff_dataset_id_to_contiguous_id
    images = {im["id"]: im for im in data["images"]}
    dicts = []
    for ann in data["annotations"]:
        info = images[ann["image_id"]]
        segments = []
        for seg in ann["segments_info"]:
            isthing = seg["category_id"] in things
            segments.append(
                {
                    **seg,
                    "category_id": (things if isthing else stuff)[seg["category_id"]],
                    "isthing": isthing,
                }
            )
        record = {
            "file_name": image_file(info),
            "image_id": ann["image_id"],
            "height": info["height"],
            "width": info["width"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if sem_seg_file is not None:
            record["sem_seg_file_name"] = sem_seg_file(info)
        dicts.append(record)
    if dicts and not os.path.isfile(dicts[0]["file_name"]):
        raise ValueError(
            f"image {dicts[0]['file_name']} of {panoptic_json} does not exist; check the layout "
            "in datasets/README.md"
        )
    logger.info("Loaded %d panoptic annotations from %s", len(dicts), panoptic_json)
    return dicts


def register_panoptic_dataset(
    name: str,
    *,
    image_dir: str,
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_dir: str,
    vocabulary: str,
    paper_column: str,
) -> str:
    """Registers a COCO-format panoptic validation set whose images and semantic PNGs share
    their file stems (COCO, ADE20K); evaluator ``coco_panoptic_seg``, metadata read lazily.

    Returns:
        ``name``.
    """

    def load() -> list[dict]:
        return load_panoptic_json(
            panoptic_json,
            panoptic_root,
            MetadataCatalog.get(name),
            image_file=lambda info: os.path.join(image_dir, info["file_name"]),
            sem_seg_file=lambda info: os.path.join(
                sem_seg_dir, os.path.splitext(info["file_name"])[0] + ".png"
            ),
        )

    register_dataset(
        name,
        load,
        {
            "image_root": image_dir,
            "panoptic_root": panoptic_root,
            "panoptic_json": panoptic_json,
            "sem_seg_root": sem_seg_dir,
            "ignore_label": 255,
            "label_divisor": 1000,
            "evaluator_type": "coco_panoptic_seg",
            "vocabulary": vocabulary,
            "paper_column": paper_column,
        },
        lazy_loader=panoptic_metadata(panoptic_json, vocabulary),
        lazy_keys=PANOPTIC_LAZY_KEYS,
    )
    return name
