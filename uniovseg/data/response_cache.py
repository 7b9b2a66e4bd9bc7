"""A resumable on-disk cache of model answers (LLM entities, refined captions), keyed by input.

Caption tools that call a paid or slow endpoint must survive an interruption (a kill, a spent
budget, a crash) without paying twice: every answer goes into this cache, which is saved every
few seconds and at the end (also on an exception), and a rerun with the same cache file only
asks for what is missing. Failed requests are never cached, so a rerun retries them.

File format (JSON lines, UTF-8): a header line ``{"uniovseg_cache": 1, ...meta}`` naming what
the answers depend on (the task, the model, the prompt's SHA-256), then one
``{"key": ..., "value": ...}`` line per answer. A cache whose header does not match the current
run is refused (the answers came from another model or prompt). The file is rewritten through
:func:`uniovseg.atomic_files.atomic_write`, so it is always the previous or the new complete file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from uniovseg.atomic_files import atomic_write

__all__ = ["ResponseCache"]

logger = logging.getLogger(__name__)

_FORMAT = 1


class ResponseCache:
    """A dict of answers backed by a JSON-lines file (see the module docstring).

    Example:
        >>> cache = ResponseCache("cache.jsonl", meta={"task": "entities"})  # doctest: +SKIP
        >>> cache.put("a red car", ["red car"])  # doctest: +SKIP
        >>> cache.save()  # doctest: +SKIP
    """

    def __init__(self, path: str, *, meta: dict[str, Any], save_interval: float = 5.0) -> None:
        """
        Args:
            path: The cache file; read when it exists, created at the first save.
            meta: What the answers depend on (JSON-serialisable); must equal the header of an
                existing file.
            save_interval: :meth:`maybe_save` writes at most this often (seconds), and at most
                as often as keeps rewriting the file under ~10% of the run (large caches).

        Raises:
            ValueError: The file is not such a cache, or was written for other ``meta``.
        """
        self.path = path
        self.meta = {"uniovseg_cache": _FORMAT, **meta}
        self.save_interval = float(save_interval)
        self._entries: dict[str, Any] = {}
        self._dirty = False
        self._last_save = time.monotonic()
        self._save_seconds = 0.0
        if os.path.exists(path):
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("uniovseg_cache") != _FORMAT:
            raise ValueError(
                f"{self.path!r} is not a uniovseg response cache; pass another cache path"
            )
        if header != self.meta:
            differs = sorted(k for k in {*header, *self.meta} if header.get(k) != self.meta.get(k))
            raise ValueError(
                f"cache {self.path!r} holds answers for other settings ({', '.join(differs)} "
                f"differ: { ({k: header.get(k) for k in differs}) }); pass another cache path, or "
                "delete it to ask again"
            )
        bad = 0
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
        if bad:
            logger.warning("%s: %d unreadable cache line(s) ignored", self.path, bad)
        logger.info("Cache %s: %d answer(s) from earlier runs", self.path, len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, default: Any = None) -> Any:
        return self._entries.get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Stores an answer (JSON-serialisable); written at the next save."""
        self._entries[key] = value
        self._dirty = True

    def maybe_save(self) -> None:
        """Saves when there is something new and the save interval has passed."""
        wait = max(self.save_interval, 10 * self._save_seconds)
        if self._dirty and time.monotonic() - self._last_save >= wait:
            self.save()

    def save(self) -> None:
        """Rewrites the file atomically (nothing is written when nothing changed)."""
        if not self._dirty:
            return
        start = time.monotonic()
        with atomic_write(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.meta, ensure_ascii=False) + "\n")
            for key, value in self._entries.items():
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        self._dirty = False
        self._last_save = time.monotonic()
        self._save_seconds = self._last_save - start
