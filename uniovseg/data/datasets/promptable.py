"""Promptable-segmentation datasets: views of labelled datasets, COCO instances JSON files, and the
public COCO-style datasets of the paper's promptable benchmark (Table 5, Fig. 3 and 7).

The promptable benchmark (1-point / 1-box oracle IoU) needs instance masks. Every dataset
registered here has the evaluator type ``promptable``, so ``PromptableEvalMapper`` derives the
prompts from each ground-truth mask and ``PromptableEvaluator`` scores the predicted masks:

- :func:`register_promptable_view`: the dataset dicts of a panoptic or instance dataset that is
  already registered, under another name;
- :func:`register_coco_promptable`: any COCO instances JSON (``images``, ``annotations`` with
  ``segmentation`` as polygons or RLE) and its image folder; from the command line through
  ``DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS`` (:func:`register_promptable_datasets_from_config`);
- :data:`PAPER_PROMPTABLE_DATASETS`: the datasets of the paper's Table 5 that are distributed
  with COCO-format instance annotations, at fixed paths under ``$DETECTRON2_DATASETS``
  (:func:`register_paper_promptable_datasets`; ``datasets/prepare_promptable.py`` puts a
  download there and checks it). The others (EgoHOS, STREETS, WoodScape: other formats; ADE20K
  instances; SegInW's 25 sets) can be converted to COCO JSON and registered with the generic
  function.

Registration reads no file; a missing file is reported, with the command that provides it, when
the dataset is first loaded (or by :func:`check_promptable_files`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .benchmark_registry import register_dataset

__all__ = [
    "PAPER_PROMPTABLE_DATASETS",
    "PROMPTABLE_DIR",
    "PromptableSource",
    "check_promptable_files",
    "load_coco_promptable",
    "register_coco_promptable",
    "register_paper_promptable_datasets",
    "register_promptable_datasets_from_config",
    "register_promptable_view",
]

logger = logging.getLogger(__name__)

_COPIED_METADATA = ("panoptic_root", "panoptic_json", "json_file", "image_root", "label_divisor")
# Folder under the dataset root that datasets/prepare_promptable.py fills, one sub-folder each.
PROMPTABLE_DIR = "promptable"


class PromptableSource(NamedTuple):
    """One dataset of the paper's promptable benchmark, in COCO instances format.

    Attributes:
        name: Registered dataset name.
        key: ``--dataset`` of ``datasets/prepare_promptable.py`` (its folder under
            ``$DETECTRON2_DATASETS/promptable/``); empty for COCO, read where it is unpacked.
        paper_name: The dataset's name in the paper (Table 5, Fig. 3 and 7).
        image_dir: Image folder, relative to the dataset root.
        json_file: COCO instances JSON, relative to the dataset root.
        source: Where the dataset is published.
    """

    name: str
    key: str
    paper_name: str
    image_dir: str
    json_file: str
    source: str


def _prepared(name: str, key: str, paper_name: str, source: str) -> PromptableSource:
    folder = os.path.join(PROMPTABLE_DIR, key)
    return PromptableSource(
        name,
        key,
        paper_name,
        os.path.join(folder, "images"),
        os.path.join(folder, "annotations.json"),
        source,
    )


# The datasets of the paper's Table 5 whose public releases hold COCO-format instance masks.
# iShape is evaluated per subset (App. B: antenna, branch, fence, hanger, log, wire).
PAPER_PROMPTABLE_DATASETS: tuple[PromptableSource, ...] = (
    PromptableSource(
        "coco_promptable_val",
        "",
        "COCO",
        os.path.join("coco", "val2017"),
        os.path.join("coco", "annotations", "instances_val2017.json"),
        "https://cocodataset.org (val2017.zip, annotations_trainval2017.zip)",
    ),
    _prepared(
        "timberseg_promptable_val",
        "timberseg",
        "TimberSeg",
        "TimberSeg 1.0, https://data.mendeley.com/datasets/y5npsm3gkj",
    ),
    *(
        _prepared(
            f"ishape_{subset}_promptable_val",
            f"ishape_{subset}",
            f"iShape ({subset})",
            "iShape, https://ishape.github.io",
        )
        for subset in ("antenna", "branch", "fence", "hanger", "log", "wire")
    ),
    _prepared(
        "ndispark_promptable_val",
        "ndispark",
        "NDISPark",
        "NDISPark, https://zenodo.org/record/6560823",
    ),
    _prepared(
        "pidray_promptable_val",
        "pidray",
        "PIDray",
        "PIDray, https://github.com/bywang2018/security-dataset",
    ),
    _prepared(
        "trashcan_promptable_val",
        "trashcan",
        "TrashCan",
        "TrashCan 1.0 (instance version), https://conservancy.umn.edu/handle/11299/214865",
    ),
)


def register_promptable_view(name: str, source_name: str) -> None:
    """Registers ``name`` as a lazy, promptable-evaluation view of dataset ``source_name``.

    Reads no file: the source's loader runs when the view is first used. Metadata of the source
    that locates its files is copied then too.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load() -> list[dict]:
        dicts = DatasetCatalog.get(source_name)
        source = MetadataCatalog.get(source_name)
        target = MetadataCatalog.get(name)
        for key in _COPIED_METADATA:
            if source.get(key, None) is not None and target.get(key, None) is None:
                target.set(**{key: source.get(key)})
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="promptable", source_dataset=source_name)


def check_promptable_files(image_root: str, json_file: str, *, hint: str = "") -> None:
    """Raises a ValueError naming the missing file or folder (and ``hint``, how to provide it)."""
    for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
        exists = os.path.isfile(path) if what == "annotation file" else os.path.isdir(path)
        if not exists:
            raise ValueError(f"{what} {path} does not exist{'; ' + hint if hint else ''}")


def load_coco_promptable(image_root: str, json_file: str, *, hint: str = "") -> list[dict]:
    """Dataset dicts of a COCO instances JSON for promptable evaluation.

    Args:
        image_root: Folder that the JSON's ``images[].file_name`` are relative to.
        json_file: COCO instances JSON; annotations need a ``segmentation`` (polygons, or
            compressed / uncompressed RLE); category names are not used.
        hint: How to provide missing files, for the error message.

    Returns:
        detectron2 instance dicts (``file_name``, ``height``, ``width``, ``image_id``,
        ``annotations`` with ``segmentation``, ``bbox``, ``iscrowd``, ``category_id`` as in the
        JSON). Images without annotations are kept (they have nothing to score).

    Raises:
        ValueError: a file is missing, or no annotation has a segmentation.
    """
    from detectron2.data.datasets import load_coco_json

    check_promptable_files(image_root, json_file, hint=hint)
    # Without a dataset name, detectron2 keeps the JSON's category ids and sets no metadata.
    dicts = load_coco_json(json_file, image_root)
    masks = sum(1 for d in dicts for a in d.get("annotations", ()) if "segmentation" in a)
    if not masks:
        raise ValueError(
            f"{json_file}: no annotation has a 'segmentation' (polygons or RLE); promptable "
            "evaluation needs instance masks, not only boxes"
        )
    logger.info("Loaded %d images with %d instance masks from %s", len(dicts), masks, json_file)
    return dicts


def register_coco_promptable(
    name: str,
    image_root: str,
    json_file: str,
    *,
    paper_name: str | None = None,
    hint: str = "",
) -> str:
    """Registers any COCO instances JSON as the promptable dataset ``name``; reads no file.

    Args:
        name: Dataset name (replaces an earlier registration of that name).
        image_root: Folder of the images (``images[].file_name`` are relative to it).
        json_file: The COCO instances JSON.
        paper_name: The dataset's name in the paper, if it is one of its datasets.
        hint: How to provide the files when they are missing (for the error message).

    Returns:
        ``name``.
    """
    if not name or not image_root or not json_file:
        raise ValueError(
            f"a COCO promptable dataset needs a name, an image folder and a JSON file; got "
            f"{name!r}, {image_root!r}, {json_file!r}"
        )
    image_root, json_file = os.path.expanduser(image_root), os.path.expanduser(json_file)
    metadata = {
        "image_root": image_root,
        "json_file": json_file,
        "evaluator_type": "promptable",
        "prepare_hint": hint,
    }
    if paper_name:
        metadata["paper_name"] = paper_name
    register_dataset(
        name, functools.partial(load_coco_promptable, image_root, json_file, hint=hint), metadata
    )
    return name


def register_paper_promptable_datasets(root: str | None = None) -> list[str]:
    """Registers :data:`PAPER_PROMPTABLE_DATASETS` under ``root``; reads no file.

    Args:
        root: The dataset root (default ``$DETECTRON2_DATASETS``, else ``./datasets``).

    Returns:
        The registered names.
    """
    from .benchmarks import default_datasets_root

    root = default_datasets_root() if root is None else os.path.expanduser(root)
    names = []
    for source in PAPER_PROMPTABLE_DATASETS:
        if source.key:
            hint = (
                f"download {source.source} and run `python datasets/prepare_promptable.py "
                f"--dataset {source.key} --images IMAGE_DIR --annotations COCO_JSON` "
                "(datasets/README.md)"
            )
        else:
            hint = f"download {source.source} into {os.path.join(root, 'coco')}"
        names.append(
            register_coco_promptable(
                source.name,
                os.path.join(root, source.image_dir),
                os.path.join(root, source.json_file),
                paper_name=source.paper_name,
                hint=hint,
            )
        )
    return names


def register_promptable_datasets_from_config(cfg) -> list[str]:
    """Registers the ``[NAME, IMAGE_ROOT, JSON_FILE]`` triples of
    ``DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS`` with :func:`register_coco_promptable`.

    Returns:
        The registered names.

    Raises:
        ValueError: an entry is not a triple of non-empty strings.
    """
    names = []
    for entry in cfg.DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS:
        if (
            isinstance(entry, str)
            or not isinstance(entry, Sequence)
            or len(entry) != 3
            or not all(isinstance(v, str) and v for v in entry)
        ):
            raise ValueError(
                f"DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS entry {entry!r}: expected "
                "[NAME, IMAGE_ROOT, JSON_FILE], e.g. "
                "\"[['mine_val', 'data/images', 'data/annotations.json']]\""
            )
        names.append(register_coco_promptable(*entry))
    return names
