"""SA-1B image-mask pairs: a one-off file index, deterministic subsets and lazy registration.

SA-1B is distributed as ~1000 tars of ``sa_<id>.jpg`` + ``sa_<id>.json`` (11M images). Listing
that tree at every start-up takes minutes, so :func:`build_sa1b_index` scans it once (run
``python datasets/prepare_sa1b.py --root DIR``) and writes a text index of relative stems; the
loader then reads only that file. Masks are not decoded here: the dataset dicts only carry paths
and :class:`uniovseg.data.sa1b_mapper.SA1BDatasetMapper` decodes each image's JSON lazily.

The scan checks every pair cheaply, so that training never meets a pair it can only skip: the
image is not empty, the JSON parses, lists at least one annotation, and every RLE has the size
of the image recorded in its ``image`` entry (and an area that fits in it). Images are not
decoded. Pairs that fail are left out of the index and reported per reason (see
:data:`SKIP_REASONS`) with the first few file names.

Index format (UTF-8 text): a header line ``# uniovseg-sa1b-index v1``, then one line per image,
the image path relative to the root without the ``.jpg`` suffix (``sa_000020/sa_223750``), sorted
so that the same tree always gives the same index (and thus the same subsets) on every machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_util

from uniovseg.atomic_files import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INDEX_NAME",
    "SKIP_REASONS",
    "SA1BScan",
    "build_sa1b_index",
    "check_sa1b_index",
    "load_sa1b_dicts",
    "read_sa1b_index",
    "register_sa1b",
    "scan_sa1b",
    "write_sa1b_index",
]

DEFAULT_INDEX_NAME = "uniovseg_sa1b_index.txt"
_HEADER = "# uniovseg-sa1b-index v1"
# Why a file is left out of the index (names shared with the mapper's skip counts).
SKIP_REASONS = {
    "missing_json": "image without its sa_*.json",
    "missing_image": "annotation file without its sa_*.jpg",
    "empty_image": "image file of 0 bytes",
    "unreadable_json": "annotation file could not be read",
    "corrupt_json": "annotation file is not valid SA-1B JSON",
    "empty_json": "annotation file lists no mask",
    "size_mismatch": "RLE size differs from the image size in the JSON",
}
# File names kept per skip reason for messages (a bad corpus may have millions).
_MAX_EXAMPLES = 5
# Pairs checked per task sent to a worker process.
_CHUNK_SIZE = 256


@dataclass
class SA1BScan:
    """What :func:`scan_sa1b` found under a root.

    Attributes:
        root: The scanned folder.
        stems: Sorted relative stems (``sa_000020/sa_223750``) of the usable pairs.
        skipped: Number of files left out per reason (keys of :data:`SKIP_REASONS`).
        examples: The first few left-out files per reason, relative to ``root``, each with the
            detail of the failure when there is one (``"sa_1.json: Expecting value: ..."``).
    """

    root: str
    stems: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, name: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        listed = self.examples.setdefault(reason, [])
        if len(listed) < _MAX_EXAMPLES:
            listed.append(f"{name}: {detail}" if detail else name)

    def skip_summary(self) -> list[str]:
        """One line per skip reason: count, meaning and the first few files."""
        return [
            f"{reason}: {count} ({SKIP_REASONS[reason]}), e.g. {'; '.join(self.examples[reason])}"
            for reason, count in sorted(self.skipped.items())
        ]


def _default_index_file(root: str) -> str:
    return os.path.join(root, DEFAULT_INDEX_NAME)


def _check_json(path: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when the SA-1B JSON at ``path`` is unusable, else None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "unreadable_json", e.strerror or str(e)
    if not data.strip():
        return "empty_json", "blank file"
    try:
        record = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return "corrupt_json", str(e)
    if not isinstance(record, dict) or not isinstance(record.get("annotations"), list):
        return "corrupt_json", "no 'annotations' list"
    annotations = record["annotations"]
    if not annotations:
        return "empty_json", ""
    info = record.get("image")
    size = [info.get("height"), info.get("width")] if isinstance(info, dict) else []
    if len(size) != 2 or not all(type(s) is int and s > 0 for s in size):
        return "corrupt_json", "no positive integer 'height' and 'width' in its 'image' entry"
    rles = []
    for i, annotation in enumerate(annotations):
        segmentation = annotation.get("segmentation") if isinstance(annotation, dict) else None
        if not isinstance(segmentation, dict) or not isinstance(segmentation.get("counts"), str):
            return "corrupt_json", f"annotation {i} has no compressed RLE 'segmentation'"
        try:
            rle_size = [int(s) for s in segmentation.get("size")]
        except (TypeError, ValueError):
            return "corrupt_json", f"annotation {i} has no RLE 'size'"
        if rle_size != size:
            shape = "x".join(map(str, rle_size))
            return "size_mismatch", f"annotation {i} is {shape}, the image {size[0]}x{size[1]}"
        rles.append({"size": rle_size, "counts": segmentation["counts"]})
    # Decoding the run lengths (no mask is rasterised) catches counts that are not RLE.
    try:
        areas = mask_util.area(rles).astype(np.int64)
    except (TypeError, ValueError) as e:
        return "corrupt_json", f"RLE counts cannot be read: {e}"
    if ((areas < 0) | (areas > size[0] * size[1])).any():
        return "corrupt_json", "RLE counts do not fit the mask size"
    return None


def _check_pair(paths: tuple[str, str], validate: bool = True) -> tuple[str, str] | None:
    """``(reason, detail)`` when the (image, annotation) pair is unusable, else None."""
    image, annotation = paths
    try:
        if os.path.getsize(image) == 0:
            return "empty_image", ""
    except OSError as e:  # removed since the listing
        return "missing_image", e.strerror or str(e)
    return _check_json(annotation) if validate else None


def scan_sa1b(root: str, *, validate: bool = True, num_workers: int = 0) -> SA1BScan:
    """Lists and checks the SA-1B image/annotation pairs under ``root`` (at any depth).

    A pair is an ``sa_*.jpg`` and an ``sa_*.json`` of the same stem in the same folder. Unpaired
    files, empty images and (with ``validate``) JSON files the mapper could only skip are left
    out; each is counted under its reason (:data:`SKIP_REASONS`) and the counts are logged with
    the first few file names.

    Args:
        root: Folder holding the untarred SA-1B files.
        validate: Parse every JSON and check its annotations (the costly part: one JSON read per
            image); False only pairs the files.
        num_workers: Processes that check the JSON files (0 or 1: this process).

    Returns:
        The usable stems (sorted) and what was left out.

    Raises:
        ValueError: ``root`` is not a folder, or ``num_workers`` is negative.
    """
    if not os.path.isdir(root):
        raise ValueError(f"SA-1B root {root!r} is not a folder; pass the folder of untarred files")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    scan = SA1BScan(root=root)
    pairs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        images = {
            n[: -len(".jpg")] for n in filenames if n.startswith("sa_") and n.endswith(".jpg")
        }
        jsons = {
            n[: -len(".json")] for n in filenames if n.startswith("sa_") and n.endswith(".json")
        }
        for stem in sorted(images | jsons):
            rel = os.path.relpath(os.path.join(dirpath, stem), root).replace(os.sep, "/")
            if stem not in jsons:
                scan.skip("missing_json", rel + ".jpg")
            elif stem not in images:
                scan.skip("missing_image", rel + ".json")
            else:
                pairs.append(rel)
    logger.info("SA-1B index: %d pairs found under %s, checking them", len(pairs), root)

    check = functools.partial(_check_pair, validate=validate)
    paths = ((os.path.join(root, r) + ".jpg", os.path.join(root, r) + ".json") for r in pairs)
    with contextlib.ExitStack() as stack:
        if num_workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(num_workers))
            results = pool.map(check, paths, chunksize=_CHUNK_SIZE)
        else:
            results = map(check, paths)
        for count, (rel, failure) in enumerate(zip(pairs, results, strict=True), start=1):
            if failure is None:
                scan.stems.append(rel)
            else:
                reason, detail = failure
                scan.skip(reason, rel + (".jpg" if reason == "empty_image" else ".json"), detail)
            if count % 100_000 == 0:
                logger.info("SA-1B index: %d / %d pairs checked", count, len(pairs))
    scan.stems.sort()
    for line in scan.skip_summary():
        logger.warning("SA-1B index: left out %s", line)
    return scan


def write_sa1b_index(scan: SA1BScan, index_file: str | None = None) -> str:
    """Writes the index of the usable pairs of a :func:`scan_sa1b` result.

    Args:
        scan: The scan of an SA-1B root.
        index_file: Where to write the index. Defaults to ``<root>/uniovseg_sa1b_index.txt``;
            pass another path when the root is read-only (and the same path to the loader).

    Returns:
        The path of the written index.

    Raises:
        ValueError: The scan found no usable pair (the message names the root and counts what
            was left out, per reason).
    """
    if not scan.stems:
        raise ValueError(_no_pair_message(scan))
    index_file = index_file or _default_index_file(scan.root)
    with atomic_write(index_file, "w", encoding="utf-8") as f:  # never half an index
        f.write(_HEADER + "\n")
        f.write("\n".join(scan.stems))
        f.write("\n")
    logger.info(
        "SA-1B index: %d pairs written to %s (%d files left out)",
        len(scan.stems),
        index_file,
        sum(scan.skipped.values()),
    )
    return index_file


def _no_pair_message(scan: SA1BScan) -> str:
    message = f"found no sa_*.jpg with a usable sibling sa_*.json under {scan.root!r}"
    if not scan.skipped:
        return message + "; untar the SA-1B archives there first"
    counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(scan.skipped.items()))
    first = scan.examples[min(scan.skipped)][0]
    return (
        f"{message}: every file was left out ({counts}; e.g. {first}). Re-extract the "
        "archives, or pass the folder that holds the sa_*.jpg/json pairs"
    )


def build_sa1b_index(
    root: str, index_file: str | None = None, *, validate: bool = True, num_workers: int = 0
) -> str:
    """Scans ``root`` once (:func:`scan_sa1b`) and writes the index of its usable pairs.

    Args:
        root: Folder holding the untarred SA-1B files, at any depth.
        index_file: Where to write the index. Defaults to ``<root>/uniovseg_sa1b_index.txt``;
            pass another path when ``root`` is read-only (and the same path to the loader).
        validate: Check every JSON (see :func:`scan_sa1b`).
        num_workers: Processes that check the JSON files (0 or 1: this process).

    Returns:
        The path of the written index.

    Raises:
        ValueError: ``root`` is not a folder or holds no usable image/JSON pair.
    """
    scan = scan_sa1b(root, validate=validate, num_workers=num_workers)
    return write_sa1b_index(scan, index_file)


def _prepare_command(root: str, index_file: str) -> str:
    extra = f" --index-file {index_file}" if index_file != _default_index_file(root) else ""
    return f"`python datasets/prepare_sa1b.py --root {root}{extra}`"


def _check_index_header(f, root: str, index_file: str) -> None:
    header = f.readline().rstrip("\n")
    if header != _HEADER:
        raise ValueError(
            f"{index_file!r} is not a uniovseg SA-1B index (first line {header!r}); rebuild it "
            f"with {_prepare_command(root, index_file)}"
        )


def check_sa1b_index(root: str, index_file: str | None = None) -> str:
    """Checks, cheaply, that ``root`` exists and holds an index: the run-time checks of
    :func:`read_sa1b_index` that need only the index's first line.

    Returns:
        The index path.

    Raises:
        ValueError: ``root`` is not a folder, or the index is missing or not a uniovseg SA-1B
            index; the message names the path and the command that writes it.
    """
    index_file = index_file or _default_index_file(root)
    if not os.path.isdir(root):
        raise ValueError(
            f"SA-1B root {root!r} does not exist: download and untar SA-1B there, then index it "
            f"once with {_prepare_command(root, index_file)}"
        )
    if not os.path.isfile(index_file):
        raise ValueError(
            f"SA-1B index {index_file!r} not found; build it once with "
            f"{_prepare_command(root, index_file)}"
        )
    with open(index_file, encoding="utf-8") as f:
        _check_index_header(f, root, index_file)
    return index_file


def read_sa1b_index(root: str, index_file: str | None = None) -> list[str]:
    """Reads the relative stems listed in an index written by :func:`build_sa1b_index`.

    Raises:
        ValueError: The index is missing, is not a uniovseg SA-1B index or lists no image (an
            empty training set would only fail later, inside the data loader).
    """
    index_file = index_file or _default_index_file(root)
    if not os.path.isfile(index_file):
        raise ValueError(
            f"SA-1B index {index_file!r} not found; build it once with "
            f"{_prepare_command(root, index_file)}"
        )
    with open(index_file, encoding="utf-8") as f:
        _check_index_header(f, root, index_file)
        stems = [line for line in f.read().split("\n") if line]
    if not stems:
        raise ValueError(
            f"SA-1B index {index_file!r} lists no image; rebuild it with "
            f"`python datasets/prepare_sa1b.py --root {root}` (it reports what it left out)"
        )
    return stems


def _image_id(stem: str) -> int | str:
    base = stem.rsplit("/", 1)[-1]
    digits = base[len("sa_") :]
    return int(digits) if digits.isdigit() else base


def load_sa1b_dicts(
    root: str, *, index_file: str | None = None, fraction: float = 1.0, seed: int = 0
) -> list[dict]:
    """Lists the SA-1B images of a deterministic subset, reading only the index.

    The subset is the first ``round(fraction * N)`` entries of a permutation of the index drawn
    from ``seed``, returned in index order: the same index, fraction and seed always give the
    same images, and with one seed a smaller fraction is a subset of a larger one.

    Args:
        root: The SA-1B root given to :func:`build_sa1b_index`.
        index_file: The index path, if not the default ``<root>/uniovseg_sa1b_index.txt``.
        fraction: Fraction of the indexed images to keep, in (0, 1] (the paper: 0.3).
        seed: Seed of the subset permutation.

    Returns:
        One dict per image: ``file_name`` (str, the .jpg path), ``annotation_file`` (str, the
        .json path) and ``image_id`` (int from ``sa_<id>``, else the stem).

    Raises:
        ValueError: Bad fraction, or no index (the message says how to build it).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    stems = read_sa1b_index(root, index_file)
    if fraction < 1.0:
        num_keep = max(1, int(round(fraction * len(stems))))
        keep = np.sort(np.random.default_rng(seed).permutation(len(stems))[:num_keep])
        stems = [stems[i] for i in keep]
    dicts = []
    for stem in stems:
        base = os.path.join(root, stem)
        dicts.append(
            {
                "file_name": base + ".jpg",
                "annotation_file": base + ".json",
                "image_id": _image_id(stem),
            }
        )
    logger.info(
        "SA-1B: %d images (fraction %.3g, seed %d) from %s", len(dicts), fraction, seed, root
    )
    return dicts


def register_sa1b(
    name: str,
    root: str,
    *,
    index_file: str | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> None:
    """Registers an SA-1B subset in detectron2's catalogs; no file is read until it is used.

    Args:
        name: Dataset name, e.g. ``"sa1b_train_30pct"``.
        root: The SA-1B root.
        index_file: The index path, if not the default.
        fraction: Fraction of the images to use (see :func:`load_sa1b_dicts`).
        seed: Seed of the subset.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    DatasetCatalog.register(
        name,
        lambda: load_sa1b_dicts(root, index_file=index_file, fraction=fraction, seed=seed),
    )
    MetadataCatalog.get(name).set(
        image_root=root,
        index_file=index_file or _default_index_file(root),
        fraction=fraction,
        subset_seed=seed,
        evaluator_type="sa1b",
    )
