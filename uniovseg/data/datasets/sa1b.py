"""SA-1B image-mask pairs: a one-off file index, deterministic subsets and lazy registration.

SA-1B is distributed as ~1000 tars of ``sa_<id>.jpg`` + ``sa_<id>.json`` (11M images). Listing
that tree at every start-up takes minutes, so :func:`build_sa1b_index` scans it once (run
``python datasets/prepare_sa1b.py --root DIR``) and writes a text index of relative stems; the
loader then reads only that file. Masks are not read here: the dataset dicts only carry paths and
:class:`uniovseg.data.sa1b_mapper.SA1BDatasetMapper` decodes each image's JSON lazily.

Index format (UTF-8 text): a header line ``# uniovseg-sa1b-index v1``, then one line per image,
the image path relative to the root without the ``.jpg`` suffix (``sa_000020/sa_223750``), sorted
so that the same tree always gives the same index (and thus the same subsets) on every machine.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INDEX_NAME",
    "build_sa1b_index",
    "load_sa1b_dicts",
    "read_sa1b_index",
    "register_sa1b",
]

DEFAULT_INDEX_NAME = "uniovseg_sa1b_index.txt"
_HEADER = "# uniovseg-sa1b-index v1"


def _default_index_file(root: str) -> str:
    return os.path.join(root, DEFAULT_INDEX_NAME)


def build_sa1b_index(root: str, index_file: str | None = None) -> str:
    """Scans ``root`` recursively once and writes the index of SA-1B image/annotation pairs.

    Every ``sa_*.jpg`` with a sibling ``sa_*.json`` (same stem, same folder) is indexed. Images
    without their JSON are left out and reported (count + a few examples in the log).

    Args:
        root: Folder holding the untarred SA-1B files, at any depth.
        index_file: Where to write the index. Defaults to ``<root>/uniovseg_sa1b_index.txt``;
            pass another path when ``root`` is read-only (and the same path to the loader).

    Returns:
        The path of the written index.

    Raises:
        ValueError: ``root`` is not a folder or holds no image/JSON pair.
    """
    if not os.path.isdir(root):
        raise ValueError(f"SA-1B root {root!r} is not a folder; pass the folder of untarred files")
    index_file = index_file or _default_index_file(root)
    stems: list[str] = []
    missing_json: list[str] = []
    next_report = 100_000
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = set(filenames)
        for name in filenames:
            if not (name.startswith("sa_") and name.endswith(".jpg")):
                continue
            stem = name[: -len(".jpg")]
            rel = os.path.relpath(os.path.join(dirpath, stem), root)
            if stem + ".json" in names:
                stems.append(rel.replace(os.sep, "/"))
            else:
                missing_json.append(rel + ".jpg")
        if len(stems) >= next_report:
            logger.info("SA-1B index: %d pairs found so far", len(stems))
            next_report += 100_000
    if missing_json:
        logger.warning(
            "SA-1B index: %d images have no sibling JSON and are left out, e.g. %s",
            len(missing_json),
            ", ".join(sorted(missing_json)[:5]),
        )
    if not stems:
        raise ValueError(
            f"found no sa_*.jpg with a sibling sa_*.json under {root!r}; untar the SA-1B "
            "archives there first"
        )
    stems.sort()
    index_dir = os.path.dirname(os.path.abspath(index_file))
    os.makedirs(index_dir, exist_ok=True)
    tmp = f"{index_file}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_HEADER + "\n")
        f.write("\n".join(stems))
        f.write("\n")
    os.replace(tmp, index_file)  # atomic: a reader never sees half an index
    logger.info(
        "SA-1B index: %d pairs written to %s (%d images without JSON)",
        len(stems),
        index_file,
        len(missing_json),
    )
    return index_file


def read_sa1b_index(root: str, index_file: str | None = None) -> list[str]:
    """Reads the relative stems listed in an index written by :func:`build_sa1b_index`.

    Raises:
        ValueError: The index is missing or is not a uniovseg SA-1B index.
    """
    index_file = index_file or _default_index_file(root)
    if not os.path.isfile(index_file):
        raise ValueError(
            f"SA-1B index {index_file!r} not found; build it once with "
            f"`python datasets/prepare_sa1b.py --root {root}`"
            + (f" --index-file {index_file}" if index_file != _default_index_file(root) else "")
        )
    with open(index_file, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        if header != _HEADER:
            raise ValueError(
                f"{index_file!r} is not a uniovseg SA-1B index (first line {header!r}); rebuild it "
                f"with `python datasets/prepare_sa1b.py --root {root}`"
            )
        return [line for line in f.read().split("\n") if line]


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
