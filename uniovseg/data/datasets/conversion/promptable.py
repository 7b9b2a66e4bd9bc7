"""Puts a downloaded COCO-format promptable dataset where its registration reads it.

The paper's promptable datasets with COCO-format instance masks (TimberSeg, iShape, NDISPark,
PIDray, TrashCan; :data:`uniovseg.data.datasets.promptable.PAPER_PROMPTABLE_DATASETS`) are
published with their own folder layouts and file names. :func:`prepare_promptable_dataset`
checks one download (the JSON parses, holds instance masks, and names images that exist) and
links it as ``<root>/promptable/<key>/images`` and ``<root>/promptable/<key>/annotations.json``.
Nothing is converted: the JSON is read as it is.
"""

from __future__ import annotations

import os
import shutil
from typing import NamedTuple

from ..promptable import PAPER_PROMPTABLE_DATASETS, PromptableSource, load_coco_promptable

__all__ = ["PreparedPromptable", "prepare_promptable_dataset", "promptable_source"]

# How many missing images an error message lists.
_MAX_LISTED = 5


class PreparedPromptable(NamedTuple):
    """What :func:`prepare_promptable_dataset` set up."""

    name: str
    image_dir: str
    json_file: str
    num_images: int
    num_masks: int


def promptable_source(key: str) -> PromptableSource:
    """The paper dataset prepared under ``key`` (e.g. ``"timberseg"``, ``"ishape_wire"``).

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    for source in PAPER_PROMPTABLE_DATASETS:
        if source.key and source.key == key:
            return source
    keys = ", ".join(s.key for s in PAPER_PROMPTABLE_DATASETS if s.key)
    raise ValueError(f"unknown promptable dataset {key!r}; known: {keys}")


def _place(source: str, target: str, *, copy: bool, overwrite: bool) -> None:
    """Links (or copies) ``source`` to ``target``; an existing target is kept unless
    ``overwrite``, except a link to ``source`` itself, which is already right."""
    if os.path.lexists(target):
        if os.path.islink(target) and os.path.realpath(target) == os.path.realpath(source):
            return
        if not overwrite:
            raise ValueError(f"{target} exists; pass --overwrite to replace it")
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)
    if not copy:
        os.symlink(os.path.abspath(source), target)
    elif os.path.isdir(source):
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def prepare_promptable_dataset(
    root: str,
    key: str,
    *,
    images: str,
    annotations: str,
    copy: bool = False,
    overwrite: bool = False,
) -> PreparedPromptable:
    """Checks a downloaded COCO-format dataset and places it where its registration reads it.

    Args:
        root: The dataset root (``$DETECTRON2_DATASETS``).
        key: The dataset (:func:`promptable_source`).
        images: The download's image folder (the JSON's ``file_name`` are relative to it).
        annotations: The download's COCO instances JSON of the split to evaluate.
        copy: Copy instead of symbolic links.
        overwrite: Replace what an earlier run placed.

    Returns:
        The registered name, the placed paths and the numbers of images and instance masks.

    Raises:
        ValueError: a file is missing, the JSON holds no instance mask, or images it names are
            missing (the message lists a few).
    """
    source = promptable_source(key)
    dicts = load_coco_promptable(images, annotations)
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED])
        raise ValueError(
            f"{len(missing)} of the {len(dicts)} images of {annotations} are not in {images} "
            f"(e.g. {listed}); pass the folder that the JSON's file_name entries start from"
        )
    image_dir = os.path.join(root, source.image_dir)
    json_file = os.path.join(root, source.json_file)
    os.makedirs(os.path.dirname(image_dir), exist_ok=True)
    _place(images, image_dir, copy=copy, overwrite=overwrite)
    _place(annotations, json_file, copy=copy, overwrite=overwrite)
    num_masks = sum(1 for d in dicts for a in d.get("annotations", ()) if "segmentation" in a)
    return PreparedPromptable(source.name, image_dir, json_file, len(dicts), num_masks)
