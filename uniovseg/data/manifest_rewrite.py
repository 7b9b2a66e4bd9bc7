"""Rewrites a JSON-lines caption manifest row by row, atomically, copying bad lines unchanged.

The offline caption tools (``tools/extract_entities.py``, ``tools/refine_captions.py``) add a
field to every row of a manifest (see :mod:`uniovseg.data.datasets.captions` for its format).
They share this loop: lines that are not JSON objects with a string ``caption`` are copied byte
for byte (the loader skips and counts them later) and counted per reason; every other row is
handed to an ``update`` callable that edits it in place and names what it did; the output goes
through :func:`uniovseg.atomic_files.atomic_write`, so a failure leaves ``output`` as it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator

from uniovseg.atomic_files import atomic_write

__all__ = [
    "BAD_LINE_REASONS",
    "check_manifest_paths",
    "iter_manifest_rows",
    "parse_manifest_line",
    "rewrite_manifest",
]

logger = logging.getLogger(__name__)

# Why a manifest line is copied unchanged (counted under these keys).
BAD_LINE_REASONS = ("invalid_utf8", "invalid_json", "not_an_object", "missing_caption")
# Bad manifest lines whose numbers a warning lists.
_MAX_LISTED_LINES = 5


def check_manifest_paths(manifest: str, output: str) -> None:
    """Checks, before any work, that ``manifest`` is a file and ``output`` a writable file path.

    Raises:
        ValueError: With what is wrong and how to fix it.
    """
    if not os.path.isfile(manifest):
        what = "is a folder" if os.path.isdir(manifest) else "does not exist"
        raise ValueError(f"manifest {manifest!r} {what}; pass a JSON-lines caption manifest")
    if os.path.isdir(output):
        example = os.path.join(output, "captions_entities.jsonl")
        raise ValueError(f"output {output!r} is a folder; pass a file path such as {example!r}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ValueError(f"the folder of output {output!r} does not exist; create {folder!r} first")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write output {output!r}: folder {folder!r} is not writable")


def parse_manifest_line(raw: bytes) -> tuple[dict | None, str]:
    """A manifest line -> (row, "") or (None, why it cannot be used: a BAD_LINE_REASONS key)."""
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark before the first row
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(row, dict):
        return None, "not_an_object"
    if not isinstance(row.get("caption"), str):
        return None, "missing_caption"
    return row, ""


def iter_manifest_rows(manifest: str) -> Iterator[dict]:
    """The usable rows of a manifest (bad lines skipped silently; :func:`rewrite_manifest`
    counts them). For a first pass that collects the texts to send in batches."""
    with open(manifest, "rb") as src:
        for raw in src:
            if raw.strip():
                row, _ = parse_manifest_line(raw)
                if row is not None:
                    yield row


def rewrite_manifest(
    manifest: str, output: str, update: Callable[[dict], str], *, what: str = "changes"
) -> Counter[str]:
    """Copies a manifest through ``update``, one output line per non-blank input line.

    Args:
        manifest: Input JSON-lines manifest.
        output: Output path (may equal ``manifest``); replaced only when everything succeeded.
        update: Called with each usable row (a dict with a string ``caption``); edits it in place
            and returns the name of what it did, which is counted (e.g. ``"parsed"``).
        what: What the rows gain, for the warning about copied lines (e.g. ``"entities"``).

    Returns:
        The counts of ``update``'s outcomes, ``copied`` (lines left as they were) and each
        reason for copying (:data:`BAD_LINE_REASONS`).

    Raises:
        ValueError: ``manifest`` is not a file or ``output`` cannot be written (checked before
            anything is read; see :func:`check_manifest_paths`).
    """
    check_manifest_paths(manifest, output)
    counts: Counter[str] = Counter()
    bad_lines: list[str] = []
    # Bytes in and out: a line that is not UTF-8 is copied as it is, not a crash.
    with open(manifest, "rb") as src, atomic_write(output) as dst:
        for number, raw in enumerate(src, start=1):
            if not raw.strip():
                continue
            row, reason = parse_manifest_line(raw)
            if row is None:
                counts["copied"] += 1
                counts[reason] += 1
                if len(bad_lines) < _MAX_LISTED_LINES:
                    bad_lines.append(f"line {number} ({reason})")
                dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                continue
            counts[update(row)] += 1
            dst.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    if bad_lines:
        reasons = {r: counts[r] for r in BAD_LINE_REASONS if counts[r]}
        logger.warning(
            "%s: %d line(s) copied without %s %s, e.g. %s",
            manifest,
            counts["copied"],
            what,
            reasons,
            ", ".join(bad_lines),
        )
    return counts
