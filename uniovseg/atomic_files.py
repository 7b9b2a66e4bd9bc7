"""Files that are never seen half-written: the one atomic writer of uniovseg.

Checkpoints, evaluation results, the SA-1B index, entity manifests, text-embedding caches, demo
outputs and converted labels are all written through :func:`atomic_write`: the content goes to a
temporary file in the same folder (``os.replace`` is atomic only within one file system), which
is renamed over the target at the end, so a reader sees the old file or the complete new one,
and a failure (or a kill before the rename) never leaves a truncated target. Imports nothing from
uniovseg, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write"]


def _default_temporary(path: str) -> str:
    # pid and thread in the name: concurrent writers of one target never share a temporary.
    return f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"


def _fsync_folder(folder: str) -> None:
    """Makes a rename in ``folder`` durable; best effort (not every platform opens folders)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_write(
    path: str,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    temporary: str | None = None,
    durable: bool = False,
) -> Iterator[IO]:
    """Opens a temporary file for writing; on success it replaces ``path``, on failure it is
    removed and the exception propagates.

    Args:
        path: The target file; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        encoding: Text encoding for ``mode="w"`` (e.g. ``"utf-8"``).
        temporary: The temporary file's path (same folder as ``path``); default
            ``PATH.<pid>.<thread>.tmp``.
        durable: fsync the file and the rename (checkpoints: survive a power cut).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes files: mode 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = temporary or _default_temporary(path)
    try:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    if durable:
        _fsync_folder(folder)
