"""Training sets stored as tar shards: SA-1B's official tars and WebDataset caption shards.

Two formats, both read by :class:`uniovseg.data.shard_stream.ShardStream` (through the
``webdataset`` library) without extracting a file:

- ``"sa1b"``: each tar holds ``<key>.jpg`` + ``<key>.json`` pairs, the SA-1B JSON of the image
  (``{"image": {...}, "annotations": [...]}``). The official SA-1B download (``sa_000000.tar``
  ... ``sa_000999.tar``, each with ``sa_<id>.jpg``/``sa_<id>.json``) is read as it is;
  ``tools/write_shards.py sa1b`` writes the same layout from an extracted folder.
- ``"caption"``: WebDataset shards as img2dataset writes them for CC3M/CC12M/LAION
  (``00000.tar`` with ``<key>.jpg``, ``<key>.txt``: the caption, ``<key>.json``: metadata).
  The caption is the ``.txt`` (else the JSON's ``"caption"``); the JSON's optional
  ``"refined_caption"`` and ``"entities"`` are used as in a caption manifest (see
  :mod:`.captions`). ``.jpeg``, ``.png`` and ``.webp`` images are read too.
  ``tools/write_shards.py captions`` writes such shards from a caption manifest.

Shard specs (config keys ``DATASETS.UNIOVSEG.SA1B_SHARDS`` / ``CAPTION_SHARDS``) are strings,
each one of: a folder (its ``*.tar`` files), a brace pattern (``/data/sa_{000000..000999}.tar``),
a glob (``/data/cc12m/*.tar``), a tar file, or a URL / ``pipe:`` command that ``webdataset``
opens (``pipe:aws s3 cp s3://bucket/00001.tar -``; brace patterns work there too). A ``pipe:``
spec is a shell command, so it is refused unless ``UNIOVSEG_ALLOW_PIPE_SHARDS=1`` is set. Local
shards are checked to exist at start-up; remote ones are not.

The only thing held in memory per dataset is the list of shard names: no sample is listed or
counted before training (see :mod:`uniovseg.data.shard_stream` for how memory is bounded).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import braceexpand
import numpy as np

from .benchmark_registry import register_dataset

__all__ = [
    "SHARD_FORMATS",
    "caption_sample_to_dict",
    "expand_shard_specs",
    "is_shard_dataset",
    "register_shard_dataset",
    "sa1b_sample_to_dict",
    "select_shards",
    "shard_dataset_files",
    "shard_list_fingerprint",
]

logger = logging.getLogger(__name__)

SHARD_FORMATS = ("sa1b", "caption")
_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


# webdataset runs a "pipe:" spec as a shell command: allowed only when the user says so, so
# that a config file from elsewhere cannot run commands by naming its training data.
ALLOW_PIPE_ENV = "UNIOVSEG_ALLOW_PIPE_SHARDS"


def _is_remote(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def _check_pipe_allowed(spec: str) -> None:
    if spec.startswith("pipe:") and os.environ.get(ALLOW_PIPE_ENV) != "1":
        raise ValueError(
            f"shard spec {spec!r} is a shell command (webdataset runs 'pipe:' specs with a "
            f"shell); set {ALLOW_PIPE_ENV}=1 in the environment to allow commands from the "
            "config, or name local files / URLs instead"
        )


def expand_shard_specs(specs: Sequence[str], *, check: bool = True) -> list[str]:
    """The shard files named by ``specs``, in order (each folder and glob sorted).

    Args:
        specs: Folders, brace patterns, globs, tar files or remote URLs (see the module
            docstring); ``~`` is expanded.
        check: Raise when a local shard does not exist or a folder/glob matches nothing.

    Returns:
        Shard paths or URLs, duplicates removed (first occurrence kept).

    Raises:
        ValueError: No spec given, or (with ``check``) a spec names no existing shard.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ValueError("no shard given: pass tar files, a folder of tars or a brace pattern")
    shards: list[str] = []
    for spec in specs:
        spec = str(spec).strip()
        if _is_remote(spec):
            _check_pipe_allowed(spec)
            shards.extend(braceexpand.braceexpand(spec))
            continue
        spec = os.path.expanduser(spec)
        if os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
            if check and not found:
                raise ValueError(f"shard folder {spec!r} holds no *.tar file")
            shards.extend(found)
            continue
        for name in braceexpand.braceexpand(spec):
            if glob.has_magic(name):
                found = sorted(glob.glob(name))
                if check and not found:
                    raise ValueError(f"shard pattern {name!r} matches no file")
                shards.extend(found)
            elif check and not os.path.isfile(name):
                raise ValueError(
                    f"shard {name!r} does not exist (from {spec!r}); write shards with "
                    "`python tools/write_shards.py` or point the config at existing tars"
                )
            else:
                shards.append(name)
    return list(dict.fromkeys(shards))


def select_shards(shards: Sequence[str], *, fraction: float, seed: int) -> list[str]:
    """A deterministic ``fraction`` of the shards (at least one), kept in their order.

    SA-1B's tars each hold a random sample of the images, so a fraction of the tars is a random
    fraction of the images (the paper trains on 30% of SA-1B).

    Raises:
        ValueError: ``fraction`` is not in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(shards)
    keep = max(1, int(round(fraction * len(shards))))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(shards))[:keep])
    return [shards[i] for i in chosen]


def shard_list_fingerprint(shards: Sequence[str]) -> str:
    """A short hash of the shard list, stored with a stream's checkpointed position so that a
    resume with other shards starts over instead of skipping into the wrong files."""
    digest = hashlib.sha1("\n".join(shards).encode("utf-8"), usedforsecurity=False)
    return digest.hexdigest()[:16]


def _sample_name(sample: dict) -> str:
    """``<shard file name>/<key>``: unique across shards, short enough for logs."""
    return f"{os.path.basename(str(sample.get('__url__', '?')))}/{sample.get('__key__', '?')}"


def _image_id(key: str) -> int | str:
    base = key.rsplit("/", 1)[-1]
    digits = base[len("sa_") :] if base.startswith("sa_") else base
    return int(digits) if digits.isdigit() else base


def sa1b_sample_to_dict(sample: dict) -> dict | None:
    """A dataset dict for :class:`~uniovseg.data.sa1b_mapper.SA1BDatasetMapper` from one raw
    shard sample, or None when the sample lacks its image or its JSON.

    Returns:
        ``file_name`` (``<shard>/<key>``, for messages), ``image_id`` (int from ``sa_<id>``,
        else the key), ``image_bytes`` (the encoded image) and ``annotation_bytes`` (the JSON);
        the mapper decodes both.
    """
    image = next((sample[e] for e in _IMAGE_EXTENSIONS if e in sample), None)
    if image is None or "json" not in sample:
        return None
    return {
        "file_name": _sample_name(sample),
        "image_id": _image_id(str(sample["__key__"])),
        "image_bytes": image,
        "annotation_bytes": sample["json"],
    }


def caption_sample_to_dict(sample: dict) -> dict | None:
    """A dataset dict for :class:`~uniovseg.data.caption_mapper.CaptionDatasetMapper` from one
    raw shard sample, or None when it has no image or no caption.

    Returns:
        As :func:`~.captions.load_caption_manifest` (``caption``, optional ``refined_caption``
        and ``entities``) with ``image_bytes`` in place of a readable ``file_name``
        (``<shard>/<key>``, for messages); ``image_id`` is the key (an int when it is digits).
    """
    image = next((sample[e] for e in _IMAGE_EXTENSIONS if e in sample), None)
    if image is None:
        return None
    meta: dict = {}
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
        except ValueError:  # JSONDecodeError, UnicodeDecodeError: keep the caption of the .txt
            loaded = None
        meta = loaded if isinstance(loaded, dict) else {}
    caption = sample.get("txt")
    caption = caption.decode("utf-8", errors="replace") if caption is not None else None
    if caption is None:
        caption = meta.get("caption") if isinstance(meta.get("caption"), str) else None
    if caption is None or not caption.strip():
        return None
    record = {
        "file_name": _sample_name(sample),
        "image_id": _image_id(str(sample["__key__"])),
        "image_bytes": image,
        "caption": caption.strip(),
    }
    refined = meta.get("refined_caption")
    if isinstance(refined, str) and refined.strip():
        record["refined_caption"] = refined.strip()
    entities = meta.get("entities")
    if isinstance(entities, list) and all(isinstance(e, str) and e.strip() for e in entities):
        record["entities"] = [e.strip() for e in entities]
    return record


SAMPLE_DECODERS = {"sa1b": sa1b_sample_to_dict, "caption": caption_sample_to_dict}


def _refuse_listing(name: str) -> list[dict]:
    raise ValueError(
        f"dataset {name!r} is streamed from tar shards and has no list of dataset dicts; train "
        "on it with uniovseg's trainer (it builds a shard stream for it)"
    )


def register_shard_dataset(
    name: str,
    shards: Sequence[str],
    shard_format: str,
    *,
    fraction: float = 1.0,
    seed: int = 0,
) -> None:
    """Registers a training set read from tar shards, replacing an earlier registration.

    Reads no file. The trainer streams it (:mod:`uniovseg.data.stream_loader`); asking
    ``DatasetCatalog`` for its dicts raises a ``ValueError`` (there is no list to give).

    Args:
        name: Dataset name.
        shards: Shard specs (see the module docstring), expanded when the run starts.
        shard_format: ``"sa1b"`` or ``"caption"``.
        fraction: Fraction of the shards used, in (0, 1] (:func:`select_shards`).
        seed: Seed of that subset.

    Raises:
        ValueError: Unknown format, no shard spec, or a fraction outside (0, 1].
    """
    if shard_format not in SHARD_FORMATS:
        raise ValueError(f"shard format {shard_format!r}: use one of {list(SHARD_FORMATS)}")
    if isinstance(shards, str):
        shards = [shards]
    if not shards:
        raise ValueError(f"dataset {name!r}: no shard spec given")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"dataset {name!r}: the shard fraction must be in (0, 1], got {fraction}")
    register_dataset(
        name,
        functools.partial(_refuse_listing, name),
        {
            "shards": list(shards),
            "shard_format": shard_format,
            "dataset_type": "shards",
            "fraction": float(fraction),
            "subset_seed": int(seed),
        },
    )


def is_shard_dataset(name: str) -> bool:
    """Whether ``name`` was registered by :func:`register_shard_dataset`."""
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(name).get("dataset_type", None) == "shards"


def shard_dataset_files(names: Sequence[str], *, check: bool = True) -> tuple[list[str], str]:
    """The shards of registered shard datasets (their specs expanded, their fraction drawn) and
    their common format.

    Raises:
        ValueError: A dataset is not a shard dataset, the datasets differ in format, or (with
            ``check``) a local shard is missing.
    """
    from detectron2.data import MetadataCatalog

    shards: list[str] = []
    formats = set()
    for name in names:
        if not is_shard_dataset(name):
            raise ValueError(f"dataset {name!r} is not a shard dataset")
        metadata = MetadataCatalog.get(name)
        formats.add(metadata.shard_format)
        try:
            files = expand_shard_specs(metadata.shards, check=check)
        except ValueError as e:
            raise ValueError(f"dataset {name!r}: {e}") from None
        shards.extend(select_shards(files, fraction=metadata.fraction, seed=metadata.subset_seed))
    if len(formats) != 1:
        raise ValueError(
            f"datasets {list(names)} mix shard formats {sorted(formats)}; one loader reads one "
            "format"
        )
    return list(dict.fromkeys(shards)), formats.pop()
