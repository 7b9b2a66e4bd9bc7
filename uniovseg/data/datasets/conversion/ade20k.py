"""ADE20K converters: SceneParse150 semantic labels, ADE20K-150 panoptic, ADE20K-full (847).

Official inputs (under the dataset root):

* ``ADEChallengeData2016/`` (SceneParse150, ``ADEChallengeData2016.zip``): ``images/<split>/``,
  ``annotations/<split>/*.png`` (uint8, 0 = unlabelled, 1-150 = classes).
* ``ADEChallengeData2016/annotations_instance/<split>/*.png`` (Places Challenge 2017 instance
  annotations, ``annotations_instance.tar``): R = instance class 1-100, G = instance index
  (0 = none); and that challenge's ``categoryMapping.txt`` (instance class -> SceneParse150 id).
* ``ADE20K_2021_17_01/`` (the full dataset): ``index_ade20k.pkl`` (``filename``, ``folder``,
  ``objectnames``) and per image ``<name>_seg.png`` whose pixels encode the object class as
  R / 10 * 256 + G (0 = unlabelled, k = ``objectnames[k - 1]``).
"""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np

from .ade20k_847_ids import ADE20K_847_OBJECT_IDS
from .label_io import (
    list_files,
    lookup_table,
    panoptic_segments,
    read_image_array,
    read_label_map,
    write_image,
    write_json,
    write_label_png,
    write_label_tiff16,
    write_panoptic_png,
)
from .progress import ConversionRun

__all__ = [
    "ade20k_150_labels",
    "ade20k_full_class_mask",
    "ade20k_full_labels",
    "ade20k_panoptic",
    "prepare_ade20k_full",
    "prepare_ade20k_panoptic",
    "prepare_ade20k_sem_seg",
    "read_instance_category_mapping",
    "shorter_side_resize_shape",
]

logger = logging.getLogger(__name__)

# Panoptic segment id = category id * this + instance number (stuff: instance number 0).
SEGMENT_ID_DIVISOR = 1000
# ADE20K-full images are stored with their shorter side at most this long (MaskFormer's A-847
# convention, followed by every later A-847 number).
ADE20K_FULL_MAX_SHORT_SIDE = 512


def ade20k_150_labels(annotation: np.ndarray) -> np.ndarray:
    """SceneParse150 annotation (uint8, 0 = unlabelled, 1-150) -> 0-149, 255 = ignore."""
    if annotation.dtype != np.uint8 or annotation.ndim != 2:
        raise ValueError("SceneParse150 annotations are single-channel uint8 images")
    return lookup_table({k: k - 1 for k in range(1, 151)}, 256, 255, np.uint8)[annotation]


def prepare_ade20k_sem_seg(
    root: str,
    splits: tuple[str, ...] = ("validation",),
    *,
    overwrite: bool = False,
    run: ConversionRun | None = None,
) -> int:
    """Writes ``ADEChallengeData2016/annotations_detectron2/<split>/*.png``; returns the number of
    files written.

    Args:
        run: Progress and bad-file policy (default: stop at the first bad file, naming it).
    """
    run = run if run is not None else ConversionRun()
    base = os.path.join(root, "ADEChallengeData2016")
    jobs = []
    for split in splits:
        src_dir = os.path.join(base, "annotations", split)
        files = list_files(src_dir, ".png", "unpack ADEChallengeData2016.zip into the root")
        jobs += [(os.path.join(src_dir, name), split, name) for name in files]
    written = 0
    for src, split, name in run.track(jobs, total=len(jobs)):
        dst = os.path.join(base, "annotations_detectron2", split, name)
        with run.file(src):
            if overwrite or not os.path.exists(dst):
                write_label_png(dst, ade20k_150_labels(read_label_map(src)))
                written += 1
    return written


def read_instance_category_mapping(path: str) -> dict[int, int]:
    """Instance class (1-100) -> SceneParse150 id (1-150) from the Places Challenge's
    ``categoryMapping.txt`` (a header line, then ``<instance id> <scene-parse id> [<full id>]``;
    an instance class may repeat with other full-ADE ids)."""
    mapping: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
                continue  # header or blank line
            ins, sem = int(fields[0]), int(fields[1])
            if mapping.setdefault(ins, sem) != sem:
                raise ValueError(f"{path}: instance class {ins} maps to {mapping[ins]} and {sem}")
    if not mapping:
        raise ValueError(f"{path} holds no '<instance id> <scene-parse id>' line")
    return mapping


def ade20k_panoptic(
    semantic: np.ndarray, instance: np.ndarray, instance_to_semantic: dict[int, int]
) -> tuple[np.ndarray, list[dict]]:
    """Panoptic segments of one image from its SceneParse150 and instance annotations.

    Stuff classes (those no instance class maps to) give one segment per class from the
    semantic map; things give one segment per instance of the instance map, painted over stuff
    where both annotate a pixel. Thing-class pixels without an instance stay void.

    Args:
        semantic: uint8 [H, W], 0 = unlabelled, 1-150.
        instance: uint8 [H, W, 3], R = instance class (1-100), G = instance index (0 = none).
        instance_to_semantic: :func:`read_instance_category_mapping`.

    Returns:
        Segment ids int32 [H, W] (category id * 1000 + instance number; 0 = void) and the COCO
        ``segments_info`` (category ids are SceneParse150 ids 1-150).
    """
    if instance.shape[:2] != semantic.shape or instance.ndim != 3:
        raise ValueError("instance annotation must be [H, W, 3] with the semantic map's H, W")
    things = set(instance_to_semantic.values())
    segment_ids = np.zeros(semantic.shape, dtype=np.int32)
    categories: dict[int, int] = {}
    for cat in np.unique(semantic).tolist():
        if cat != 0 and cat not in things:
            segment_ids[semantic == cat] = cat * SEGMENT_ID_DIVISOR
            categories[cat * SEGMENT_ID_DIVISOR] = cat
    counts: dict[int, int] = {}
    for index in np.unique(instance[..., 1]).tolist():
        if index == 0:
            continue
        mask = instance[..., 1] == index
        classes = np.unique(instance[..., 0][mask]).tolist()
        if len(classes) != 1 or classes[0] not in instance_to_semantic:
            raise ValueError(f"instance {index} has instance classes {classes}")
        cat = instance_to_semantic[classes[0]]
        counts[cat] = counts.get(cat, 0) + 1
        seg_id = cat * SEGMENT_ID_DIVISOR + counts[cat]
        segment_ids[mask] = seg_id
        categories[seg_id] = cat
    return segment_ids, panoptic_segments(segment_ids, categories)


def prepare_ade20k_panoptic(
    root: str,
    class_names: list[str],
    *,
    mapping_file: str | None = None,
    split: str = "validation",
    overwrite: bool = False,
    run: ConversionRun | None = None,
) -> str:
    """Writes ``ade20k_panoptic_<val|train>.json`` and its PNG folder in ADEChallengeData2016.

    Args:
        root: Dataset root.
        class_names: The 150 class names in SceneParse150 order (JSON category names).
        mapping_file: ``categoryMapping.txt`` (default: ``ADEChallengeData2016/
            categoryMapping.txt``).
        split: ``validation`` or ``training``.
        overwrite: Rewrite PNGs that exist.
        run: Progress and bad-file policy (default: stop at the first bad file, naming it); a
            skipped image is left out of the JSON.

    Returns:
        The JSON path.
    """
    run = run if run is not None else ConversionRun()
    if len(class_names) != 150:
        raise ValueError(f"150 class names expected, got {len(class_names)}")
    base = os.path.join(root, "ADEChallengeData2016")
    mapping_file = mapping_file or os.path.join(base, "categoryMapping.txt")
    if not os.path.isfile(mapping_file):
        raise ValueError(
            f"{mapping_file} does not exist: download categoryMapping.txt of the Places "
            "Challenge instance segmentation task (see datasets/README.md)"
        )
    instance_to_semantic = read_instance_category_mapping(mapping_file)
    things = set(instance_to_semantic.values())
    short = {"validation": "val", "training": "train"}[split]
    out_dir = os.path.join(base, f"ade20k_panoptic_{short}")
    image_dir = os.path.join(base, "images", split)
    instance_dir = os.path.join(base, "annotations_instance", split)
    names = list_files(image_dir, ".jpg", "unpack ADEChallengeData2016.zip into the root")
    list_files(instance_dir, ".png", "unpack annotations_instance.tar into ADEChallengeData2016")
    images, annotations = [], []
    for name in run.track(names, total=len(names)):
        stem = os.path.splitext(name)[0]
        instance_file = os.path.join(instance_dir, stem + ".png")
        with run.file(instance_file):
            semantic = read_label_map(os.path.join(base, "annotations", split, stem + ".png"))
            segment_ids, segments = ade20k_panoptic(
                semantic, read_label_map(instance_file), instance_to_semantic
            )
            out_png = os.path.join(out_dir, stem + ".png")
            if overwrite or not os.path.exists(out_png):
                write_panoptic_png(out_png, segment_ids)
            height, width = semantic.shape
            images.append({"id": stem, "file_name": name, "height": height, "width": width})
            annotations.append(
                {"image_id": stem, "file_name": stem + ".png", "segments_info": segments}
            )
    categories = [
        {"id": k + 1, "name": n, "isthing": int(k + 1 in things), "color": _color(k + 1)}
        for k, n in enumerate(class_names)
    ]
    out_json = os.path.join(base, f"ade20k_panoptic_{short}.json")
    write_json(out_json, {"images": images, "annotations": annotations, "categories": categories})
    return out_json


def ade20k_full_class_mask(seg: np.ndarray) -> np.ndarray:
    """Object class values (int32 [H, W], 0 = unlabelled) of an ADE20K-full ``*_seg.png``."""
    if seg.ndim != 3 or seg.shape[2] < 2:
        raise ValueError("ADE20K-full *_seg.png files are RGB images")
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def shorter_side_resize_shape(height: int, width: int, max_short: int) -> tuple[int, int]:
    """(H, W) with the shorter side reduced to ``max_short`` (aspect kept, rounded); unchanged
    when the shorter side is already <= ``max_short``."""
    if min(height, width) <= max_short:
        return height, width
    if width >= height:
        return max_short, round(width / height * max_short)
    return round(height / width * max_short), max_short


def prepare_ade20k_full(
    root: str,
    *,
    object_ids: tuple[int, ...] = ADE20K_847_OBJECT_IDS,
    splits: tuple[str, ...] = ("validation",),
    overwrite: bool = False,
    run: ConversionRun | None = None,
) -> int:
    """Writes ``ADE20K_2021_17_01/{images,annotations}_detectron2/<split>/`` and
    ``ADE20K_2021_17_01/classes_<N>.txt``.

    Images are stored as JPEG with the shorter side <= 512 (bilinear), labels as uint16 TIFF
    (nearest) with label ``i`` for object class ``object_ids[i]`` and 65535 for every other
    class. ``classes_<N>.txt`` lists the dataset's own name of each label's class
    (``objectnames[id - 1]``), one per line in label order.

    Args:
        run: Progress and bad-file policy (default: stop at the first bad file, naming it).

    Returns:
        The number of images written.
    """
    import cv2

    run = run if run is not None else ConversionRun()
    base = os.path.join(root, "ADE20K_2021_17_01")
    index_file = os.path.join(base, "index_ade20k.pkl")
    if not os.path.isfile(index_file):
        raise ValueError(f"{index_file} does not exist: unpack ADE20K_2021_17_01.zip into {root}")
    try:
        with open(index_file, "rb") as f:
            index = pickle.load(f)  # the dataset's own index (trusted input)
        objectnames = [str(n) for n in index["objectnames"]]
        entries = list(zip(index["folder"], index["filename"], strict=True))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"cannot read {index_file} ({type(e).__name__}: {e}): unpack ADE20K_2021_17_01.zip "
            "again"
        ) from e
    if max(object_ids) > len(objectnames):
        raise ValueError(
            f"object id {max(object_ids)} exceeds the {len(objectnames)} objectnames of "
            f"{index_file}: is this ADE20K_2021_17_01?"
        )
    with open(os.path.join(base, f"classes_{len(object_ids)}.txt"), "w", encoding="utf-8") as f:
        f.writelines(objectnames[i - 1] + "\n" for i in object_ids)
    value_to_label = {value: label for label, value in enumerate(object_ids)}
    split_of = {True: "validation", False: "training"}
    jobs = [
        (folder, filename, split_of[filename.startswith("ADE_val_")])
        for folder, filename in entries
        if split_of[filename.startswith("ADE_val_")] in splits
    ]
    written = 0
    for folder, filename, split in run.track(jobs, total=len(jobs)):
        stem = os.path.splitext(filename)[0]
        out_image = os.path.join(base, "images_detectron2", split, filename)
        out_label = os.path.join(base, "annotations_detectron2", split, stem + ".tif")
        # index folders are relative to the folder holding ADE20K_2021_17_01
        image_path = os.path.join(root, folder, filename)
        with run.file(image_path):
            if not overwrite and os.path.exists(out_image) and os.path.exists(out_label):
                continue
            image = read_image_array(image_path, "RGB")
            values = ade20k_full_class_mask(
                read_label_map(os.path.join(root, folder, stem + "_seg.png"))
            )
            height, width = shorter_side_resize_shape(*image.shape[:2], ADE20K_FULL_MAX_SHORT_SIDE)
            if (height, width) != image.shape[:2]:
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
                values = cv2.resize(values, (width, height), interpolation=cv2.INTER_NEAREST)
            write_label_tiff16(out_label, ade20k_full_labels(values, value_to_label))
            write_image(out_image, image, "JPEG")
            written += 1
    return written


def ade20k_full_labels(values: np.ndarray, value_to_label: dict[int, int]) -> np.ndarray:
    """ADE20K-full class values (int [H, W]) -> uint16 labels, 65535 for unlisted classes."""
    lut = lookup_table(
        value_to_label, max(int(values.max()), max(value_to_label)) + 1, 65535, np.uint16
    )
    return lut[values]


def _color(category_id: int) -> list[int]:
    """A fixed colour per category (for visualisation tools reading the JSON)."""
    rng = np.random.default_rng(category_id)
    return [int(c) for c in rng.integers(0, 256, size=3)]
