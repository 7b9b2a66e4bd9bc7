"""What the web app's page reads and shows: the prompt modes, the parsing of its text boxes,
and the views that :class:`~uniovseg.inference.web_session.WebImageSession` returns (pictures,
status lines, files), free of any web framework.

Vocabulary text never names a file: the server's files are not the web user's to read.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from uniovseg.data.vocabulary import (
    available_vocabularies,
    load_vocabulary,
    normalize_vocabulary,
    parse_vocabulary_string,
)

__all__ = [
    "BACKGROUND",
    "BOX_CORNER",
    "FOREGROUND",
    "PROMPT_MODES",
    "EverythingView",
    "LegendRow",
    "PromptView",
    "VocabularyView",
    "parse_thing_classes",
    "parse_vocabulary_text",
]

FOREGROUND, BACKGROUND, BOX_CORNER = "foreground point", "background point", "box corner"
PROMPT_MODES = (FOREGROUND, BACKGROUND, BOX_CORNER)


def parse_vocabulary_text(text: str) -> list[str]:
    """The class entries of the vocabulary box.

    ``"cat; dog, puppy; sky"``: ``;`` separates classes and ``,`` synonyms (the demo's syntax);
    without any ``;``, ``,`` separates classes (``"cat, dog, sky"``); a packaged name
    (``"ade20k_150"``) gives that list. Never a file path.

    Raises:
        ValueError: no class name.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("type class names, e.g. 'cat, dog, sky' or 'cat; dog, puppy; sky'")
    if text in available_vocabularies():
        return load_vocabulary(text)
    if ";" in text:
        return parse_vocabulary_string(text)
    return normalize_vocabulary(text.split(","), source="vocabulary text")


def parse_thing_classes(text: str) -> list[str]:
    """Names of the thing classes box, separated by ``;`` or ``,`` (any synonym works)."""
    return [name.strip() for name in re.split(r"[;,]", text or "") if name.strip()]


@dataclasses.dataclass
class PromptView:
    """The page after a click.

    Attributes:
        canvas: uint8 [H', W', 3]: the photo with each foreground prompt's chosen mask, numbered
            prompts, ``x`` markers on background points, a ``+`` on a box's first corner, and a
            legend beside or under it (its top-left [H, W] block is the photo, in the
            coordinates of the clicks).
        gallery: (picture, caption) of every mask of the last prompt (4 granularities for a
            point, 1 for a box), the chosen one marked with ``*``.
        status: One line saying what happened.
        files: Files of the current result (the JSON), or none.
        chosen: Index of the chosen mask in ``gallery``; None when it is empty.
    """

    canvas: np.ndarray
    gallery: list[tuple[np.ndarray, str]]
    status: str
    files: list[str]
    chosen: int | None = None


@dataclasses.dataclass
class LegendRow:
    """One class of the vocabulary in the result.

    Attributes:
        name: Display name (first synonym).
        color: RGB of the class in the pictures (``visualization.class_color``).
        semantic_share: Fraction of the photo's pixels that semantic segmentation gives it.
        segments: Its number of panoptic segments.
    """

    name: str
    color: tuple[int, int, int]
    semantic_share: float
    segments: int


@dataclasses.dataclass
class VocabularyView:
    """Semantic and panoptic pictures (``draw_semantic``, ``draw_panoptic``), the legend of every
    class, a status line, the files of the result (JSON, label maps, panoptic PNG) and the
    prompts' view with its masks now labelled."""

    semantic: np.ndarray
    panoptic: np.ndarray
    legend: list[LegendRow]
    status: str
    files: list[str]
    prompts: PromptView


@dataclasses.dataclass
class EverythingView:
    """The automatic masks' picture (``draw_masks``), a status line and the JSON."""

    picture: np.ndarray
    status: str
    files: list[str]
