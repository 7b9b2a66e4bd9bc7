"""Writes training sets as tar shards that :mod:`uniovseg.data.datasets.shards` streams.

- :func:`write_sa1b_shards`: an extracted SA-1B-layout folder (indexed by
  ``datasets/prepare_sa1b.py``) to tars of ``<stem>.jpg`` + ``<stem>.json`` pairs, the layout of
  SA-1B's own tars.
- :func:`write_caption_shards`: a caption manifest (:mod:`uniovseg.data.datasets.captions`) to
  WebDataset shards as img2dataset writes them: ``<key>.jpg`` (the image file's own bytes and
  extension), ``<key>.txt`` (the caption) and ``<key>.json`` (``caption``, ``image_id`` and, when
  the row has them, ``refined_caption`` and ``entities``).

Files are copied byte for byte (no re-encoding). Shards are named ``000000.tar``,
``000001.tar``... in ``output_dir``, written through ``webdataset.ShardWriter`` with a fixed
modification time, so the same input gives the same bytes. A shard is written under a temporary
name and renamed when complete, so a killed conversion never leaves a torn ``.tar`` behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .datasets.captions import load_caption_manifest
from .datasets.sa1b import read_sa1b_index

__all__ = ["ShardSummary", "write_caption_shards", "write_sa1b_shards"]

logger = logging.getLogger(__name__)

_PATTERN = "%06d.tar"
_PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ShardSummary:
    """What a conversion wrote.

    Attributes:
        shards: The written shard paths, in order.
        samples: Samples written.
        skipped: Samples left out because a file could not be read.
    """

    shards: list[str]
    samples: int
    skipped: int


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        logger.warning("left out %s: %s", path, e.strerror or e)
        return None


def _write(samples: Iterable[dict | None], output_dir: str, samples_per_shard: int) -> ShardSummary:
    """Writes the non-None samples (``{"__key__": str, ext: bytes}``) to numbered shards."""
    import webdataset as wds

    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    os.makedirs(output_dir, exist_ok=True)
    written: list[str] = []
    state = {"aborted": False, "count_in_shard": 0}

    def finish(partial: str) -> None:
        # ShardWriter calls this with each closed shard: move a complete one to its final name;
        # drop the one a failure interrupted, and the empty one of an empty input.
        if state["aborted"] or state["count_in_shard"] == 0:
            os.remove(partial)
            return
        final = partial[: -len(_PARTIAL_SUFFIX)]
        os.replace(partial, final)
        written.append(final)
        state["count_in_shard"] = 0

    count = skipped = 0
    pattern = os.path.join(output_dir, _PATTERN + _PARTIAL_SUFFIX)
    writer = wds.ShardWriter(
        pattern, maxcount=samples_per_shard, post=finish, verbose=0, encoder=False, mtime=0
    )
    try:
        for sample in samples:
            if sample is None:
                skipped += 1
                continue
            writer.write(sample)
            count += 1
            state["count_in_shard"] = writer.count
    except BaseException:
        state["aborted"] = True
        raise
    finally:
        writer.close()
    logger.info("wrote %d samples to %d shards in %s", count, len(written), output_dir)
    return ShardSummary(shards=written, samples=count, skipped=skipped)


def _sa1b_samples(root: str, stems: list[str]) -> Iterator[dict | None]:
    for stem in stems:
        base = os.path.join(root, stem)
        image, annotation = _read_bytes(base + ".jpg"), _read_bytes(base + ".json")
        if image is None or annotation is None:
            yield None
            continue
        yield {"__key__": stem, "jpg": image, "json": annotation}


def write_sa1b_shards(
    root: str,
    output_dir: str,
    *,
    index_file: str | None = None,
    samples_per_shard: int = 1000,
) -> ShardSummary:
    """Packs the indexed image/JSON pairs of an extracted SA-1B folder into tar shards.

    Args:
        root: The folder given to ``datasets/prepare_sa1b.py``.
        output_dir: Where the shards go (created if needed).
        index_file: The index, if not ``<root>/uniovseg_sa1b_index.txt``.
        samples_per_shard: Image/JSON pairs per shard. Prefer at least as many shards as the
            training run has loader workers in all (processes x DATALOADER.NUM_WORKERS).

    Returns:
        The shards written and the counts.

    Raises:
        ValueError: No index (the message says how to build it) or bad ``samples_per_shard``.
    """
    stems = read_sa1b_index(root, index_file)
    return _write(_sa1b_samples(root, stems), output_dir, samples_per_shard)


def _caption_samples(rows: list[dict]) -> Iterator[dict | None]:
    for row in rows:
        image = _read_bytes(row["file_name"])
        if image is None:
            yield None
            continue
        extension = os.path.splitext(row["file_name"])[1].lower().lstrip(".") or "jpg"
        meta = {"caption": row["caption"], "image_id": row["image_id"]}
        meta.update({k: row[k] for k in ("refined_caption", "entities") if k in row})
        yield {
            "__key__": f"{row['image_id']:09d}",
            extension: image,
            "txt": row["caption"].encode("utf-8"),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        }


def write_caption_shards(
    manifest: str,
    output_dir: str,
    *,
    image_root: str | None = None,
    samples_per_shard: int = 1000,
) -> ShardSummary:
    """Packs the rows of a caption manifest and their images into WebDataset shards.

    Args:
        manifest: The JSON-lines manifest (bad rows are skipped and counted, as for training).
        output_dir: Where the shards go (created if needed).
        image_root: Folder of relative image paths (default: the manifest's folder).
        samples_per_shard: Rows per shard.

    Returns:
        The shards written and the counts.

    Raises:
        ValueError: The manifest does not exist, or bad ``samples_per_shard``.
    """
    rows = load_caption_manifest(manifest, image_root=image_root)
    return _write(_caption_samples(rows), output_dir, samples_per_shard)
