"""PASCAL converters: PASCAL Context 459 / 59 and PASCAL VOC 2012 21 / 20.

Official inputs (under ``<root>/VOCdevkit/``):

* ``VOC2010/`` from ``VOCtrainval_03-May-2010.tar`` (``JPEGImages/``, ``ImageSets/Main/val.txt``
  = the 5105 validation images of PASCAL Context), plus PASCAL Context's ``trainval.tar.gz``
  unpacked into it (``trainval/<id>.mat`` with a uint16 ``LabelMap``: 0 = unlabelled, k = class
  ``k`` of ``labels.txt``) and its ``labels.txt`` (``"k: name"``, 459 lines) and
  ``59_labels.txt`` (the 59 frequent classes by name).
* ``VOC2012/`` from ``VOCtrainval_11-May-2012.tar`` (``JPEGImages/``, ``SegmentationClass/``
  palette PNGs: 0 = background, 1-20 = classes, 255 = void boundary,
  ``ImageSets/Segmentation/val.txt``: 1449 images).
"""

from __future__ import annotations

import os

import numpy as np

from .label_io import lookup_table, read_label_map, write_label_png, write_label_tiff16
from .progress import ConversionRun

__all__ = [
    "pascal_context_459_labels",
    "pascal_context_59_labels",
    "pascal_context_59_source_ids",
    "pascal_voc_20_labels",
    "pascal_voc_21_labels",
    "prepare_pascal_context",
    "prepare_pascal_voc",
    "read_pascal_context_labels",
]


def read_pascal_context_labels(path: str) -> dict[int, str]:
    """``{k: name}`` from a PASCAL Context label list (lines ``"k: name"``)."""
    labels: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, name = line.partition(":")
            if sep and key.strip().isdigit():
                labels[int(key)] = name.strip()
    if not labels:
        raise ValueError(f"{path} holds no 'k: name' line")
    return labels


def pascal_context_59_source_ids(
    labels_459: dict[int, str], labels_59: dict[int, str]
) -> list[int]:
    """For each of the 59 classes (in ``59_labels.txt`` order), its ``LabelMap`` value (459 id),
    matched by name. A ``0``/``background`` entry of ``labels_59`` is skipped."""
    by_name = {name: k for k, name in labels_459.items()}
    names = [n for k, n in sorted(labels_59.items()) if k != 0 and n != "background"]
    missing = [n for n in names if n not in by_name]
    if missing or len(names) != 59:
        raise ValueError(
            f"59_labels.txt must name 59 classes of labels.txt; got {len(names)} names, "
            f"not in labels.txt: {missing}"
        )
    return [by_name[n] for n in names]


def pascal_context_459_labels(label_map: np.ndarray) -> np.ndarray:
    """``LabelMap`` (0 = unlabelled, 1-459) -> uint16 0-458, 65535 = ignore."""
    out = label_map.astype(np.int64) - 1
    out[label_map == 0] = 65535
    if out.max() > 65535 or out.min() < 0:
        raise ValueError("PASCAL Context LabelMap values must lie in 0..459")
    return out.astype(np.uint16)


def pascal_context_59_labels(label_map: np.ndarray, source_ids: list[int]) -> np.ndarray:
    """``LabelMap`` -> uint8 0-58 for the 59 classes, 255 for every other class and unlabelled."""
    lut = lookup_table({v: i for i, v in enumerate(source_ids)}, 65536, 255, np.uint8)
    return lut[label_map.astype(np.uint16)]


def pascal_voc_21_labels(label: np.ndarray) -> np.ndarray:
    """``SegmentationClass`` indices -> uint8 0 = background, 1-20, 255 = ignore."""
    return lookup_table({k: k for k in range(21)}, 256, 255, np.uint8)[label]


def pascal_voc_20_labels(label: np.ndarray) -> np.ndarray:
    """``SegmentationClass`` indices -> uint8 0-19; background and void -> 255 (ignored)."""
    return lookup_table({k: k - 1 for k in range(1, 21)}, 256, 255, np.uint8)[label]


def _read_split(path: str, hint: str) -> list[str]:
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: {hint}")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def prepare_pascal_context(
    root: str,
    *,
    split_file: str | None = None,
    labels_file: str | None = None,
    labels_59_file: str | None = None,
    overwrite: bool = False,
    run: ConversionRun | None = None,
) -> int:
    """Writes ``VOCdevkit/VOC2010/annotations_detectron2/{pc459_val/*.tif, pc59_val/*.png}``.

    Args:
        root: Dataset root.
        split_file: Image ids to convert (default ``VOC2010/ImageSets/Main/val.txt``).
        labels_file: ``labels.txt`` (default ``VOC2010/labels.txt``).
        labels_59_file: ``59_labels.txt`` (default ``VOC2010/59_labels.txt``).
        overwrite: Rewrite existing outputs.
        run: Progress and bad-file policy (default: stop at the first bad file, naming it).

    Returns:
        The number of images converted.
    """
    import scipy.io

    run = run if run is not None else ConversionRun()
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    split_file = split_file or os.path.join(voc, "ImageSets", "Main", "val.txt")
    labels_file = labels_file or os.path.join(voc, "labels.txt")
    labels_59_file = labels_59_file or os.path.join(voc, "59_labels.txt")
    for path in (labels_file, labels_59_file):
        if not os.path.isfile(path):
            raise ValueError(f"{path} does not exist: download it from the PASCAL Context page")
    source_ids = pascal_context_59_source_ids(
        read_pascal_context_labels(labels_file), read_pascal_context_labels(labels_59_file)
    )
    ids = _read_split(split_file, "unpack VOCtrainval_03-May-2010.tar into <root>/VOCdevkit")
    out = os.path.join(voc, "annotations_detectron2")
    if not os.path.isdir(os.path.join(voc, "trainval")):
        raise ValueError(
            f"{os.path.join(voc, 'trainval')} does not exist: unpack PASCAL Context's "
            f"trainval.tar.gz into {voc}"
        )
    converted = 0
    for image_id in run.track(ids, total=len(ids)):
        mat = os.path.join(voc, "trainval", image_id + ".mat")
        dst459 = os.path.join(out, "pc459_val", image_id + ".tif")
        dst59 = os.path.join(out, "pc59_val", image_id + ".png")
        with run.file(mat):
            if not overwrite and os.path.exists(dst459) and os.path.exists(dst59):
                continue
            if not os.path.isfile(mat):
                raise FileNotFoundError("missing from PASCAL Context's trainval.tar.gz")
            label_map = scipy.io.loadmat(mat)["LabelMap"]
            write_label_tiff16(dst459, pascal_context_459_labels(label_map))
            write_label_png(dst59, pascal_context_59_labels(label_map, source_ids))
            converted += 1
    return converted


def prepare_pascal_voc(
    root: str, *, split: str = "val", overwrite: bool = False, run: ConversionRun | None = None
) -> int:
    """Writes ``VOCdevkit/VOC2012/annotations_detectron2/{pas21,pas20}_<split>/*.png``; returns
    the number of images converted.

    Args:
        run: Progress and bad-file policy (default: stop at the first bad file, naming it).
    """
    run = run if run is not None else ConversionRun()
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    ids = _read_split(
        os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"),
        "unpack VOCtrainval_11-May-2012.tar into <root>",
    )
    out = os.path.join(voc, "annotations_detectron2")
    converted = 0
    for image_id in run.track(ids, total=len(ids)):
        src = os.path.join(voc, "SegmentationClass", image_id + ".png")
        dst21 = os.path.join(out, f"pas21_{split}", image_id + ".png")
        dst20 = os.path.join(out, f"pas20_{split}", image_id + ".png")
        with run.file(src):
            if not overwrite and os.path.exists(dst21) and os.path.exists(dst20):
                continue
            label = read_label_map(src)
            if label.ndim != 2 or label.dtype != np.uint8:
                raise ValueError(
                    f"not a palette (index) image: {label.dtype} of shape {label.shape}"
                )
            write_label_png(dst21, pascal_voc_21_labels(label))
            write_label_png(dst20, pascal_voc_20_labels(label))
            converted += 1
    return converted
