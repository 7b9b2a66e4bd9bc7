"""Class vocabularies: packaged benchmark class lists, user files and inline strings.

A vocabulary is a list of class *entries* in label order: entry ``i`` names contiguous class
``i``. An entry holds one or more comma-separated synonyms (``"dog, puppy"``); the text
classifier scores a class by its best synonym, and the first synonym is the display name.

Benchmark vocabularies ship as package data (``uniovseg/data/vocabularies/<name>.txt``) and are
read through :mod:`importlib.resources`, never through a path relative to the working directory.
Each file starts with ``#`` comment lines that say where its names and order come from; then one
class per line in label order.

Inline strings separate classes with ``;`` and synonyms with ``,``: ``"cat; dog, puppy; sky"``
is three classes, the second with two synonyms.

Normalisation (every loader): whitespace runs become one space and are stripped around each
synonym; empty synonyms and empty classes are dropped; repeated synonyms inside one class are
kept once; classes whose synonym lists are equal (ignoring case) are kept once, with a warning
naming them (label indices of the later classes then shift, which the warning says).
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence

__all__ = [
    "available_vocabularies",
    "class_display_names",
    "class_synonyms",
    "load_vocabulary",
    "normalize_vocabulary",
    "parse_vocabulary_string",
    "resolve_vocabulary",
]

logger = logging.getLogger(__name__)

# Package data folder (inside the `uniovseg.data` package) and file suffix of vocabularies.
_PACKAGE = "uniovseg.data"
_FOLDER = "vocabularies"
_SUFFIX = ".txt"
_CLASS_SEPARATOR = ";"
_SYNONYM_SEPARATOR = ","
_COMMENT = "#"
_WHITESPACE = re.compile(r"\s+")
# How many duplicate classes a warning lists before eliding the rest.
_MAX_LISTED_DUPLICATES = 10


def class_synonyms(entry: str) -> list[str]:
    """The synonyms of one class entry, normalised, in order, each once.

    Args:
        entry: A class entry such as ``"dog, puppy"`` (comma-separated synonyms).

    Returns:
        ``["dog", "puppy"]``: whitespace-normalised, empty synonyms dropped, repeats removed
        (first occurrence kept). An empty list when the entry holds no synonym at all.
    """
    if not isinstance(entry, str):
        raise ValueError(
            f"a class entry must be a string of comma-separated synonyms, got {type(entry)!r}"
        )
    synonyms = (_WHITESPACE.sub(" ", s).strip() for s in entry.split(_SYNONYM_SEPARATOR))
    return list(dict.fromkeys(s for s in synonyms if s))


def class_display_names(vocabulary: Sequence[str]) -> list[str]:
    """The first synonym of each entry: the names to show or store as ``stuff_classes``."""
    names = []
    for entry in vocabulary:
        synonyms = class_synonyms(entry)
        if not synonyms:
            raise ValueError(f"class entry {entry!r} holds no name")
        names.append(synonyms[0])
    return names


def normalize_vocabulary(entries: Iterable[str], *, source: str = "vocabulary") -> list[str]:
    """Normalises class entries: whitespace, empty classes, repeated synonyms and classes.

    Args:
        entries: Class entries (comma-separated synonyms each), in label order.
        source: What the entries came from, for messages (a file path, ``"string"``...).

    Returns:
        Entries re-joined as ``"syn1, syn2"``, in the original order, each class once.

    Raises:
        ValueError: no class is left (an empty vocabulary cannot classify anything).
    """
    if isinstance(entries, str):
        raise ValueError(
            f"{source}: expected a list of class entries, got one string; use "
            "parse_vocabulary_string() for inline strings such as 'cat; dog, puppy; sky'"
        )
    kept: list[str] = []
    first_index: dict[tuple[str, ...], int] = {}
    duplicates: list[str] = []
    for entry in entries:
        synonyms = class_synonyms(entry)
        if not synonyms:
            continue
        key = tuple(s.casefold() for s in synonyms)
        if key in first_index:
            duplicates.append(f"{', '.join(synonyms)!r} (same as class {first_index[key]})")
            continue
        first_index[key] = len(kept)
        kept.append(", ".join(synonyms))
    if duplicates:
        listed = "; ".join(duplicates[:_MAX_LISTED_DUPLICATES])
        more = len(duplicates) - _MAX_LISTED_DUPLICATES
        if more > 0:
            listed += f"; and {more} more"
        warnings.warn(
            f"{source}: removed {len(duplicates)} duplicate class(es): {listed}. Later classes "
            "moved up, so their indices no longer match line numbers in the source.",
            stacklevel=2,
        )
    if not kept:
        raise ValueError(
            f"{source}: the vocabulary is empty. Give at least one class name, e.g. "
            "'cat; dog, puppy; sky' (';' separates classes, ',' separates synonyms), a file with "
            f"one class per line, or a packaged name: {', '.join(available_vocabularies())}."
        )
    return kept


def parse_vocabulary_string(text: str) -> list[str]:
    """Parses an inline vocabulary: ``;`` separates classes, ``,`` separates synonyms.

    ``"cat; dog, puppy; sky"`` gives ``["cat", "dog, puppy", "sky"]``. Empty classes (``";;"``,
    a trailing ``;``) are ignored, so ``"cat;"`` is a one-class vocabulary.

    Raises:
        ValueError: ``text`` is not a string or names no class.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string such as 'cat; dog, puppy; sky', got {type(text)!r}")
    return normalize_vocabulary(text.split(_CLASS_SEPARATOR), source="vocabulary string")


def available_vocabularies() -> list[str]:
    """Names of the packaged vocabularies, sorted (e.g. ``"ade20k_150"``)."""
    return list(_packaged_names())


def load_vocabulary(name_or_path: str) -> list[str]:
    """Loads a packaged vocabulary by name, or a vocabulary file by path.

    Args:
        name_or_path: A name from :func:`available_vocabularies` (e.g. ``"ade20k_847"``), or the
            path of a UTF-8 text file with one class per line (comma-separated synonyms; blank
            lines and lines starting with ``#`` are ignored). A packaged name wins over a file of
            the same name in the working directory; write ``./name`` to mean the file.

    Returns:
        The normalised class entries in label order (a new list on every call).

    Raises:
        ValueError: unknown name and no such file, or an empty vocabulary.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(
            "load_vocabulary needs a packaged vocabulary name or a file path, got "
            f"{name_or_path!r}; packaged: {', '.join(available_vocabularies())}"
        )
    if name_or_path in _packaged_names():
        return list(_load_packaged(name_or_path))
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return normalize_vocabulary(_class_lines(f.read()), source=path)
    raise ValueError(
        f"{name_or_path!r} is neither a packaged vocabulary nor an existing file. Packaged "
        f"vocabularies: {', '.join(available_vocabularies())}. For an inline list of classes, "
        "use parse_vocabulary_string('cat; dog, puppy') (';' between classes)."
    )


def resolve_vocabulary(spec: str | Sequence[str]) -> list[str]:
    """Any vocabulary specification -> normalised class entries.

    Args:
        spec: A sequence of class entries; or a string: a packaged name, a file path, or an
            inline list with ``;`` between classes (``"cat; dog, puppy"``, ``"cat;"``).

    Returns:
        The normalised class entries in label order.
    """
    if isinstance(spec, str):
        if _CLASS_SEPARATOR in spec:
            return parse_vocabulary_string(spec)
        return load_vocabulary(spec)
    return normalize_vocabulary(spec, source="vocabulary list")


# ------------------------------------------------------------------------------ package data
def _class_lines(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(_COMMENT)]


@functools.cache
def _packaged_names() -> tuple[str, ...]:
    folder = importlib.resources.files(_PACKAGE).joinpath(_FOLDER)
    names = [
        item.name[: -len(_SUFFIX)]
        for item in folder.iterdir()
        if item.is_file() and item.name.endswith(_SUFFIX)
    ]
    return tuple(sorted(names))


@functools.cache
def _load_packaged(name: str) -> tuple[str, ...]:
    resource = importlib.resources.files(_PACKAGE).joinpath(_FOLDER).joinpath(name + _SUFFIX)
    # Packaged files hold no duplicate (tests check it), so their labels are their line order.
    entries = normalize_vocabulary(
        _class_lines(resource.read_text(encoding="utf-8")), source=f"packaged vocabulary {name!r}"
    )
    logger.debug("Loaded packaged vocabulary %s (%d classes)", name, len(entries))
    return tuple(entries)
