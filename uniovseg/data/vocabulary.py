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
synonym, as are zero-width/format/control characters at its ends; empty synonyms and empty
classes are dropped; repeated synonyms inside one class are kept once; classes whose synonym
lists are equal (ignoring case) are kept once, with a warning naming them (label indices of the
later classes then shift, which the warning says).

Errors: a name with no visible character (e.g. only a zero-width space) or with a control
character, and a name given to two different classes (``"dog; dog, cat"``: which class is
"dog"?), are refused with a ValueError naming them. The packaged benchmark lists are exempt from
the second rule: some of them share synonyms between classes, as their benchmarks define them.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence

__all__ = [
    "available_vocabularies",
    "class_display_names",
    "class_synonyms",
    "load_vocabulary",
    "normalize_vocabulary",
    "parse_vocabulary_string",
    "resolve_vocabulary",
    "thing_class_indices",
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
    synonyms = []
    for part in entry.split(_SYNONYM_SEPARATOR):
        synonym = _strip_edges(_WHITESPACE.sub(" ", part))
        if synonym or part.strip():  # blank parts (", ,", a trailing ",") are simply dropped
            _check_visible(synonym, part, entry)
            synonyms.append(synonym)
    return list(dict.fromkeys(synonyms))


def _strip_edges(name: str) -> str:
    """``name`` without spaces and zero-width/format/control characters at its ends (a
    zero-width space copied along with a name would make it a different, unmatched name)."""
    start, end = 0, len(name)
    while start < end and _is_edge_noise(name[start]):
        start += 1
    while end > start and _is_edge_noise(name[end - 1]):
        end -= 1
    return name[start:end]


def _is_edge_noise(char: str) -> bool:
    # Cf: format (zero-width space and joiners, BOM, soft hyphen, bidi marks); Cc: control.
    return char.isspace() or unicodedata.category(char) in ("Cf", "Cc")


def _check_visible(name: str, part: str, entry: str) -> None:
    """Refuses a name that shows nothing or holds a control character."""
    # A visible name has a letter, number, punctuation mark or symbol; marks, format,
    # separator, private-use and unassigned characters alone print as nothing (or as boxes).
    if not any(unicodedata.category(c)[0] in "LNPS" for c in name):
        raise ValueError(
            f"class name {part.strip()!r} in entry {entry.strip()!r} is invisible (only "
            "zero-width, format, control or combining characters); remove it or type it again"
        )
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(
            f"class name {name!r} in entry {entry.strip()!r} holds a control character; remove it"
        )


def _name_key(name: str) -> str:
    """What makes two (whitespace-normalised) names the same name: case and Unicode form."""
    return unicodedata.normalize("NFC", name).casefold()


def class_display_names(vocabulary: Sequence[str]) -> list[str]:
    """The first synonym of each entry: the names to show or store as ``stuff_classes``."""
    names = []
    for entry in vocabulary:
        synonyms = class_synonyms(entry)
        if not synonyms:
            raise ValueError(f"class entry {entry!r} holds no name")
        names.append(synonyms[0])
    return names


def normalize_vocabulary(
    entries: Iterable[str], *, source: str = "vocabulary", allow_shared_names: bool = False
) -> list[str]:
    """Normalises class entries: whitespace, empty classes, repeated synonyms and classes.

    Args:
        entries: Class entries (comma-separated synonyms each), in label order.
        source: What the entries came from, for messages (a file path, ``"string"``...).
        allow_shared_names: Accept a synonym that names two different classes. Only the
            packaged benchmark lists do this (they keep their benchmark's class names); in any
            other vocabulary it is a mistake that makes the two classes hard to tell apart.

    Returns:
        Entries re-joined as ``"syn1, syn2"``, in the original order, each class once.

    Raises:
        ValueError: no class is left (an empty vocabulary cannot classify anything); a name is
            invisible (:func:`class_synonyms`); or a name is in two classes (compared ignoring
            case), unless ``allow_shared_names``.
    """
    if isinstance(entries, str):
        raise ValueError(
            f"{source}: expected a list of class entries, got one string; use "
            "parse_vocabulary_string() for inline strings such as 'cat; dog, puppy; sky'"
        )
    if not isinstance(entries, Iterable):
        raise ValueError(f"{source}: expected a list of class entries, got {entries!r}")
    kept: list[str] = []
    first_index: dict[tuple[str, ...], int] = {}
    owner: dict[str, int] = {}  # name key -> the class it names
    duplicates: list[str] = []
    for entry in entries:
        try:
            synonyms = class_synonyms(entry)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        if not synonyms:
            continue
        key = tuple(_name_key(s) for s in synonyms)
        if key in first_index:
            duplicates.append(f"{', '.join(synonyms)!r} (same as class {first_index[key]})")
            continue
        if not allow_shared_names:
            for synonym, name_key in zip(synonyms, key, strict=True):
                other = owner.setdefault(name_key, len(kept))
                if other != len(kept):  # "dog, Dog" in one class is no clash
                    raise ValueError(
                        f"{source}: the name {synonym!r} is in class {other} "
                        f"({kept[other]!r}) and class {len(kept)} ({', '.join(synonyms)!r}); a "
                        "name can belong to one class only: remove it from one of them or "
                        "merge the two classes"
                    )
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
    if spec is None or isinstance(spec, (bytes, Mapping)) or not isinstance(spec, Iterable):
        raise ValueError(
            "a vocabulary is a packaged name (e.g. 'ade20k_150'), a file path, an inline string "
            f"such as 'cat; dog, puppy; sky' or a list of class entries; got {spec!r}"
        )
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
    # Some benchmark lists give one synonym to two classes (ADE20K-150's raw names: "screen" in
    # classes 58 and 63); they are kept as the benchmarks define them.
    entries = normalize_vocabulary(
        _class_lines(resource.read_text(encoding="utf-8")),
        source=f"packaged vocabulary {name!r}",
        allow_shared_names=True,
    )
    logger.debug("Loaded packaged vocabulary %s (%d classes)", name, len(entries))
    return tuple(entries)


def thing_class_indices(entries: Sequence[str], thing_classes: Collection[int | str]) -> list[int]:
    """Thing classes given as indices or names (any synonym, case-insensitive) -> indices.

    Raises:
        ValueError: a name that is not in the vocabulary (the message lists the classes).
    """
    by_name: dict[str, int] = {}
    for index, entry in enumerate(entries):
        for synonym in class_synonyms(entry):
            by_name.setdefault(synonym.casefold(), index)
    indices = []
    for item in thing_classes:
        if isinstance(item, str):
            key = " ".join(item.split()).casefold()
            if key not in by_name:
                raise ValueError(
                    f"thing class {item!r} is not in the vocabulary "
                    f"({', '.join(class_display_names(entries))})"
                )
            indices.append(by_name[key])
        else:
            indices.append(int(item))
    return indices
