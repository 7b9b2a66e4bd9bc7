"""Files and folders that are never seen half-written: the one atomic writer of uniovseg.

Checkpoints, evaluation results, the SA-1B index, entity manifests, text-embedding caches, demo
outputs and converted labels are all written through :func:`atomic_write`: the content goes to a
temporary file in the same folder (``os.replace`` is atomic only within one file system), which
is renamed over the target at the end, so a reader sees the old file or the complete new one,
and a failure (or a kill before the rename) never leaves a truncated target. Model bundles (a
folder of files that belong together) are written the same way by :func:`atomic_folder`. Imports
nothing from uniovseg, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from typing import IO

__all__ = ["atomic_folder", "atomic_write", "check_replaceable_folder"]


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


@contextlib.contextmanager
def atomic_folder(path: str, *, durable: bool = False) -> Iterator[str]:
    """Yields an empty temporary folder to fill; on success it replaces the folder ``path``, on
    failure it is removed and the exception propagates.

    The temporary folder is a hidden sibling of ``path`` (``.NAME.<pid>.<thread>.tmp``, same file
    system). At the end an existing ``path`` is renamed aside, the new folder renamed in, and the
    old one removed, so a reader finds the old folder, for an instant nothing, or the new one:
    never a part of either; a failure in between puts the old folder back.

    Args:
        path: The target folder; it may exist (it is replaced as a whole: callers decide whether
            that is allowed). Its parent is created if needed.
        durable: fsync every file written and the renames.

    Yields:
        The temporary folder's path.

    Raises:
        FileExistsError: ``path`` exists and is not a folder.
    """
    target = os.path.abspath(path)
    parent, name = os.path.split(target)
    if not name:
        raise ValueError(f"atomic_folder needs a folder name, got {path!r}")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise FileExistsError(f"{path!r} exists and is not a folder")
    os.makedirs(parent, exist_ok=True)
    stamp = f"{os.getpid()}.{threading.get_ident()}"
    temporary = os.path.join(parent, f".{name}.{stamp}.tmp")
    previous = os.path.join(parent, f".{name}.{stamp}.old")
    os.mkdir(temporary)
    try:
        yield temporary
        if durable:
            for folder, _, files in os.walk(temporary):
                for file_name in files:
                    with open(os.path.join(folder, file_name), "rb") as handle:
                        os.fsync(handle.fileno())
                _fsync_folder(folder)
        if os.path.isdir(target):
            os.rename(target, previous)
        os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if os.path.isdir(previous) and not os.path.lexists(target):
            os.rename(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    if durable:
        _fsync_folder(parent)


def check_replaceable_folder(path: str, *, known_files: Iterable[str], kind: str) -> None:
    """Refuses to let :func:`atomic_folder` replace ``path`` unless it is missing, empty or an
    earlier output of the same ``kind`` (only ``known_files`` in it): replacing a folder of
    other files would delete them.

    Raises:
        FileExistsError: ``path`` holds other files, or exists and is not a folder.
    """
    if os.path.isdir(path):
        others = sorted(set(os.listdir(path)) - set(known_files))
        if others:
            raise FileExistsError(
                f"{path!r} holds files that are not {kind}'s ({', '.join(others[:5])}); write "
                f"to a new or empty folder (an earlier {kind} is replaced)"
            )
    elif os.path.lexists(path):
        raise FileExistsError(f"{path!r} exists and is not a folder")
