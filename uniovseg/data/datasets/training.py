"""The training sets of the paper's configs, ``sa1b_train`` and ``captions_train``, registered from
config keys, plus the check that a run's datasets exist before any model is built.

- ``sa1b_train`` (stage 1): SA-1B image-mask pairs under ``DATASETS.UNIOVSEG.SA1B_ROOT``
  (default ``$DETECTRON2_DATASETS/sa1b``), indexed once by ``datasets/prepare_sa1b.py``; a
  deterministic ``SA1B_FRACTION`` subset drawn with ``SA1B_SEED`` (see :mod:`.sa1b`).
- ``captions_train`` (stage 2): the image-caption manifest ``DATASETS.UNIOVSEG.CAPTION_MANIFEST``
  (default ``$DETECTRON2_DATASETS/captions/captions_entities.jsonl``, as written by
  ``tools/extract_entities.py``; see :mod:`.captions` for its format).

Either can be streamed from tar shards instead (``DATASETS.UNIOVSEG.SA1B_SHARDS``,
``CAPTION_SHARDS``; see :mod:`.shards`): SA-1B's official tars or img2dataset's WebDataset
shards, read without extracting a file, with memory per process independent of their size.

Importing :mod:`uniovseg.data.datasets` registers both with the defaults; the training entry point
registers them again from its config (:func:`register_training_datasets_from_config`). Neither
reads a file: :func:`check_datasets` does, cheaply (a folder, a file, an index's first line), so
that a missing dataset stops a run at start-up with the path and the command that creates it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .benchmark_registry import register_dataset
from .benchmarks import default_datasets_root
from .captions import load_caption_manifest
from .promptable import check_promptable_files
from .sa1b import DEFAULT_INDEX_NAME, check_sa1b_index, load_sa1b_dicts
from .shards import is_shard_dataset, register_shard_dataset, shard_dataset_files

__all__ = [
    "CAPTIONS_TRAIN",
    "SA1B_TRAIN",
    "check_datasets",
    "default_caption_manifest",
    "default_sa1b_root",
    "register_training_datasets",
    "register_training_datasets_from_config",
    "resolve_dataset_paths",
]

SA1B_TRAIN = "sa1b_train"
CAPTIONS_TRAIN = "captions_train"
_CAPTIONS_FILE = os.path.join("captions", "captions_entities.jsonl")


def default_sa1b_root() -> str:
    """``$DETECTRON2_DATASETS/sa1b`` (``./datasets/sa1b`` when the variable is unset)."""
    return os.path.join(default_datasets_root(), "sa1b")


def default_caption_manifest() -> str:
    """``$DETECTRON2_DATASETS/captions/captions_entities.jsonl``."""
    return os.path.join(default_datasets_root(), _CAPTIONS_FILE)


def register_training_datasets(
    *,
    sa1b_root: str = "",
    sa1b_index_file: str = "",
    sa1b_fraction: float = 1.0,
    sa1b_seed: int = 0,
    caption_manifest: str = "",
    caption_image_root: str = "",
    caption_check_files: bool = True,
    sa1b_shards: Sequence[str] = (),
    caption_shards: Sequence[str] = (),
) -> list[str]:
    """Registers ``sa1b_train`` and ``captions_train``, replacing earlier registrations; reads no
    file. Empty strings take the defaults of the ``DATASETS.UNIOVSEG`` keys.

    Args:
        sa1b_root: Folder of the untarred SA-1B files ("" = :func:`default_sa1b_root`).
        sa1b_index_file: Index written by ``datasets/prepare_sa1b.py`` ("" =
            ``<sa1b_root>/uniovseg_sa1b_index.txt``).
        sa1b_fraction: Fraction of the indexed images used, in (0, 1] (the paper: 0.3 of SA-1B).
        sa1b_seed: Seed of that subset.
        caption_manifest: JSON-lines caption manifest ("" = :func:`default_caption_manifest`).
        caption_image_root: Folder of its relative image paths ("" = the manifest's folder).
        caption_check_files: Skip manifest rows whose image does not exist (a stat per row).
        sa1b_shards: Tar shard specs of SA-1B (:mod:`.shards`); when given, ``sa1b_train``
            streams them (``sa1b_fraction`` of the shards) instead of the folder.
        caption_shards: WebDataset caption shard specs; when given, ``captions_train`` streams
            them instead of the manifest.

    Returns:
        The registered names.

    Raises:
        ValueError: ``sa1b_fraction`` is not in (0, 1].
    """
    if not 0.0 < sa1b_fraction <= 1.0:
        raise ValueError(f"DATASETS.UNIOVSEG.SA1B_FRACTION must be in (0, 1], got {sa1b_fraction}")
    if sa1b_shards:
        register_shard_dataset(
            SA1B_TRAIN, list(sa1b_shards), "sa1b", fraction=sa1b_fraction, seed=sa1b_seed
        )
    else:
        _register_sa1b_folder(sa1b_root, sa1b_index_file, sa1b_fraction, sa1b_seed)
    if caption_shards:
        register_shard_dataset(CAPTIONS_TRAIN, list(caption_shards), "caption")
    else:
        _register_caption_manifest(caption_manifest, caption_image_root, caption_check_files)
    return [SA1B_TRAIN, CAPTIONS_TRAIN]


def _register_sa1b_folder(
    sa1b_root: str, sa1b_index_file: str, sa1b_fraction: float, sa1b_seed: int
) -> None:
    root = os.path.expanduser(sa1b_root) if sa1b_root else default_sa1b_root()
    index_file = (
        os.path.expanduser(sa1b_index_file)
        if sa1b_index_file
        else os.path.join(root, DEFAULT_INDEX_NAME)
    )
    register_dataset(
        SA1B_TRAIN,
        functools.partial(
            load_sa1b_dicts, root, index_file=index_file, fraction=sa1b_fraction, seed=sa1b_seed
        ),
        {
            "image_root": root,
            "index_file": index_file,
            "fraction": sa1b_fraction,
            "subset_seed": sa1b_seed,
            "evaluator_type": "sa1b",
        },
    )


def _register_caption_manifest(
    caption_manifest: str, caption_image_root: str, check_files: bool
) -> None:
    manifest = os.path.expanduser(caption_manifest) if caption_manifest else None
    manifest = manifest or default_caption_manifest()
    image_root = os.path.expanduser(caption_image_root) if caption_image_root else None
    register_dataset(
        CAPTIONS_TRAIN,
        functools.partial(
            load_caption_manifest, manifest, image_root=image_root, check_files=check_files
        ),
        {
            "manifest": manifest,
            "image_root": image_root if image_root is not None else os.path.dirname(manifest),
            "dataset_type": "caption",
        },
    )


def resolve_dataset_paths(cfg) -> None:
    """Fills the empty ``DATASETS.UNIOVSEG`` path keys of an unfrozen config with their defaults,
    so that the config a run saves names the folders it read."""
    d = cfg.DATASETS.UNIOVSEG
    d.SA1B_ROOT = os.path.expanduser(d.SA1B_ROOT) if d.SA1B_ROOT else default_sa1b_root()
    if not d.SA1B_INDEX_FILE:
        d.SA1B_INDEX_FILE = os.path.join(d.SA1B_ROOT, DEFAULT_INDEX_NAME)
    if not d.CAPTION_MANIFEST:
        d.CAPTION_MANIFEST = default_caption_manifest()


def register_training_datasets_from_config(cfg) -> list[str]:
    """:func:`register_training_datasets` with the ``DATASETS.UNIOVSEG`` keys of ``cfg``."""
    d = cfg.DATASETS.UNIOVSEG
    return register_training_datasets(
        sa1b_root=d.SA1B_ROOT,
        sa1b_index_file=d.SA1B_INDEX_FILE,
        sa1b_fraction=d.SA1B_FRACTION,
        sa1b_seed=d.SA1B_SEED,
        caption_manifest=d.CAPTION_MANIFEST,
        caption_image_root=d.CAPTION_IMAGE_ROOT,
        caption_check_files=d.CAPTION_CHECK_FILES,
        sa1b_shards=d.SA1B_SHARDS,
        caption_shards=d.CAPTION_SHARDS,
    )


def _check_caption_manifest(manifest: str) -> None:
    if os.path.isfile(manifest):
        return
    folder = os.path.dirname(manifest) or "."
    raise ValueError(
        f"caption manifest {manifest!r} does not exist (dataset {CAPTIONS_TRAIN!r}, config key "
        "DATASETS.UNIOVSEG.CAPTION_MANIFEST, default "
        "$DETECTRON2_DATASETS/captions/captions_entities.jsonl). Write one JSON object per image "
        '({"image": "images/1.jpg", "caption": "..."}) to a manifest, add the entities with '
        f"`python tools/extract_entities.py --manifest {os.path.join(folder, 'captions.jsonl')} "
        f"--output {manifest}`, or point DATASETS.UNIOVSEG.CAPTION_MANIFEST at your manifest"
    )


def check_datasets(names: Iterable[str], *, what: str = "DATASETS.TRAIN") -> None:
    """Checks that every dataset of ``names`` is registered and, for ``sa1b_train``,
    ``captions_train`` and COCO-JSON promptable datasets, that its files exist. Reads at most an
    index's first line.

    Args:
        names: Dataset names, e.g. ``cfg.DATASETS.TRAIN``.
        what: The config key that lists them, for the message.

    Raises:
        ValueError: A dataset is not registered (the message lists the names that are), or the
            files of a training set are missing (the message names the path, the config key and
            the command that creates it).
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            training = ", ".join(n for n in sorted(registered) if n.endswith("_train"))
            raise ValueError(
                f"dataset {name!r} in {what} is not registered. Training sets: {training}; "
                "evaluation sets: see datasets/README.md. To add your own, register it with "
                "detectron2's DatasetCatalog before the run, or use the DATASETS.UNIOVSEG.* "
                f"keys for {SA1B_TRAIN!r} and {CAPTIONS_TRAIN!r}"
            )
        metadata = MetadataCatalog.get(name)
        if is_shard_dataset(name):
            try:
                shard_dataset_files([name])
            except ValueError as e:
                key = {SA1B_TRAIN: "SA1B_SHARDS", CAPTIONS_TRAIN: "CAPTION_SHARDS"}.get(name)
                hint = f" (config key DATASETS.UNIOVSEG.{key})" if key else ""
                raise ValueError(f"{e}{hint}") from None
        elif name == SA1B_TRAIN:
            try:
                check_sa1b_index(metadata.image_root, metadata.index_file)
            except ValueError as e:
                raise ValueError(
                    f"dataset {name!r}: {e}; or set DATASETS.UNIOVSEG.SA1B_ROOT (default "
                    "$DETECTRON2_DATASETS/sa1b) to the folder that holds SA-1B"
                ) from None
        elif name == CAPTIONS_TRAIN:
            _check_caption_manifest(metadata.manifest)
        elif metadata.get("evaluator_type", None) == "promptable" and metadata.get("json_file", ""):
            hint = metadata.get("prepare_hint", "") or "see datasets/README.md"
            try:
                check_promptable_files(metadata.image_root, metadata.json_file, hint=hint)
            except ValueError as e:
                raise ValueError(f"dataset {name!r} in {what}: {e}") from None
