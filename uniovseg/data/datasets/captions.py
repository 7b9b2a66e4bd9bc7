"""Image-caption pairs from a caption manifest (real web data such as CC3M, or the synthetic world).

Manifest format: JSON lines (UTF-8), one image per line::

    {"image": "images/000001.jpg", "caption": "a red car parked on a road."}
    {"image": "/abs/path.jpg", "caption": "...", "refined_caption": "...", "entities": ["car"]}

- ``image`` (required): path relative to the manifest's folder (or to ``image_root`` when
  given), or absolute.
- ``caption`` (required): non-empty text.
- ``refined_caption`` (optional): an improved caption (e.g. rewritten by an LLM).
- ``entities`` (optional): pre-extracted entity phrases (list of non-empty strings); when absent,
  a later stage extracts them from the caption.

Real manifests are large and imperfect, so a bad row never stops loading: it is skipped and
counted, and one log line per reason reports the counts. The image id of a row is its 0-based
line number, stable whatever other rows are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

__all__ = ["load_caption_manifest", "register_caption_dataset"]

logger = logging.getLogger(__name__)

# Reasons a row is skipped (keys of the skip counter, as logged).
MALFORMED_JSON = "malformed JSON"
NOT_AN_OBJECT = "row is not a JSON object"
BAD_IMAGE_FIELD = "missing or non-string 'image'"
BAD_CAPTION_FIELD = "missing or non-string 'caption'"
EMPTY_CAPTION = "empty caption"
MISSING_IMAGE = "image file not found"


def load_caption_manifest(
    manifest: str, *, image_root: str | None = None, check_files: bool = True
) -> list[dict]:
    """Reads a caption manifest into detectron2 dataset dicts, skipping bad rows.

    Args:
        manifest: Path of the JSON-lines manifest.
        image_root: Folder that relative ``image`` paths are relative to; defaults to the
            manifest's folder.
        check_files: Skip rows whose image file does not exist (one ``stat`` per row; turn off
            for huge manifests on slow file systems).

    Returns:
        One dict per valid row: ``file_name`` (absolute image path), ``image_id`` (int, the row's
        0-based line number), ``caption`` (str, stripped), and when present and valid
        ``refined_caption`` (str) and ``entities`` (list[str]). An invalid optional field is
        dropped (and counted) without dropping the row.

    Raises:
        ValueError: If the manifest file does not exist.
    """
    if not os.path.isfile(manifest):
        raise ValueError(
            f"Caption manifest {manifest!r} does not exist; write one JSON object per line with "
            "'image' and 'caption' keys (see uniovseg/data/datasets/captions.py)."
        )
    root = os.path.abspath(image_root if image_root is not None else os.path.dirname(manifest))
    skipped: Counter[str] = Counter()
    dropped_fields: Counter[str] = Counter()
    dicts = []
    with open(manifest, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped[MALFORMED_JSON] += 1
                continue
            if not isinstance(row, dict):
                skipped[NOT_AN_OBJECT] += 1
                continue
            image, caption = row.get("image"), row.get("caption")
            if not isinstance(image, str) or not image:
                skipped[BAD_IMAGE_FIELD] += 1
                continue
            if not isinstance(caption, str):
                skipped[BAD_CAPTION_FIELD] += 1
                continue
            caption = caption.strip()
            if not caption:
                skipped[EMPTY_CAPTION] += 1
                continue
            path = image if os.path.isabs(image) else os.path.join(root, image)
            if check_files and not os.path.isfile(path):
                skipped[MISSING_IMAGE] += 1
                continue
            record = {"file_name": os.path.normpath(path), "image_id": line_no, "caption": caption}
            refined = row.get("refined_caption")
            if refined is not None:
                if isinstance(refined, str) and refined.strip():
                    record["refined_caption"] = refined.strip()
                else:
                    dropped_fields["refined_caption"] += 1
            entities = row.get("entities")
            if entities is not None:
                if isinstance(entities, list) and all(
                    isinstance(e, str) and e.strip() for e in entities
                ):
                    record["entities"] = [e.strip() for e in entities]
                else:
                    dropped_fields["entities"] += 1
            dicts.append(record)
    for reason, count in sorted(skipped.items()):
        logger.warning("Caption manifest %s: skipped %d rows (%s)", manifest, count, reason)
    for key, count in sorted(dropped_fields.items()):
        logger.warning(
            "Caption manifest %s: ignored an invalid '%s' in %d rows", manifest, key, count
        )
    logger.info("Caption manifest %s: %d image-caption pairs", manifest, len(dicts))
    return dicts


def register_caption_dataset(name: str, manifest: str, image_root: str | None = None) -> None:
    """Registers a caption manifest in detectron2's catalogs; no file is read until it is used.

    Args:
        name: Dataset name, e.g. ``"cc3m_train"``.
        manifest: Path of the JSON-lines manifest.
        image_root: Folder of relative image paths (default: the manifest's folder).

    The metadata carries ``manifest``, ``image_root`` and ``dataset_type="caption"``; caption
    sets are for training only, so no ``evaluator_type`` is set.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, lambda: load_caption_manifest(manifest, image_root=image_root))
    MetadataCatalog.get(name).set(
        manifest=manifest,
        image_root=image_root if image_root is not None else os.path.dirname(manifest),
        dataset_type="caption",
    )
