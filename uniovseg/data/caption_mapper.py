"""Dataset mapper for image-caption pairs (stage 2): image + entity phrases.

Each call reads one image of a caption manifest row (see
:func:`uniovseg.data.datasets.captions.load_caption_manifest`), resizes it so that its longest
side is the crop size and pads it bottom/right to a square with grey in pixel space, exactly as a
test image (:mod:`uniovseg.modeling.image_preprocessing`). There is no random crop: the masks
predicted on the image and the entities of the caption must both describe the whole picture (a
crop could cut away a named object). An optional horizontal flip is off by default because
captions may name positions ("on the left").

Entities come from the manifest row (``entity_source="manifest"``, e.g. phrases extracted by an
LLM with ``tools/extract_entities.py --backend llm``, used as they are), from an entity parser run
on the refined caption when present, else on the caption (``entity_source="parser"``; see
:mod:`uniovseg.data.entity_extraction`), or row by row from the manifest when the row carries
``entities`` and from the parser otherwise (``entity_source="auto"``, the default). Each example
says which in its ``entity_source`` key; the trainer logs the mix of every batch
(:class:`uniovseg.data.train_loader.EntitySourceLog`).

Bad rows never crash training: an unreadable image, or (with ``skip_without_entities``) a caption
without entities, makes the mapper return ``None``; the train loader
(:func:`uniovseg.data.train_loader.build_resumable_train_loader`) then maps a replacement image, the
same one for a given index on every run (so a resumed run sees it too). Skips are counted per reason
and logged at the first one and every ``skip_log_period`` after that (per data-loader worker).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from detectron2.config import configurable

from uniovseg.modeling.image_frame import inference_frame
from uniovseg.modeling.image_preprocessing import pad_bottom_right, resize_uint8

from .entity_extraction import PARSER_NAMES, build_entity_parser
from .image_io import read_dataset_image

__all__ = ["CaptionDatasetMapper", "RowEntities"]

logger = logging.getLogger(__name__)

ENTITY_SOURCES = ("auto", "parser", "manifest")


class RowEntities(NamedTuple):
    """The entities of one caption row.

    Attributes:
        text: The text they come from (the refined caption when used).
        entities: Lower-case phrases, possibly empty.
        source: ``"manifest"`` or the parser's name (``"rule"``, ``"spacy:<pipeline>"``).
    """

    text: str
    entities: list[str]
    source: str


class CaptionDatasetMapper:
    """Maps a caption dataset dict to a stage-2 training sample.

    Input dict: ``file_name``, ``image_id``, ``caption``, optional ``refined_caption`` and
    ``entities`` (list[str]); from tar shards
    (:func:`uniovseg.data.datasets.shards.caption_sample_to_dict`) also ``image_bytes``, the
    encoded image, read instead of ``file_name``.

    Output dict:
        - ``image``: uint8 tensor [3, S, S], RGB; the resized image top-left, the rest
          ``pad_value``.
        - ``image_size``: (h, w) of the resized (unpadded) image, longest side S.
        - ``height``, ``width``: original image size.
        - ``caption``: the text the entities come from (refined caption when used).
        - ``entities``: list[str], lower-case phrases, possibly empty.
        - ``entity_source``: where they come from: ``"manifest"`` or the parser's name
          (``"rule"``, ``"spacy:<pipeline>"``).
        - ``file_name``, ``image_id``: copied from the input.
    """

    @configurable
    def __init__(
        self,
        *,
        crop_size: int = 1024,
        entity_source: str = "auto",
        entity_parser: Callable[[str], list[str]] | None = None,
        use_refined: bool = True,
        max_entities: int = 0,
        skip_without_entities: bool = True,
        flip_prob: float = 0.0,
        pad_value: float = 128.0,
        skip_log_period: int = 100,
    ) -> None:
        """
        Args:
            crop_size: Side S of the square input; the longest image side is resized to S.
            entity_source: ``"auto"``, ``"parser"`` or ``"manifest"`` (see the module
                docstring).
            entity_parser: ``caption -> list[str]``; required for ``"parser"`` and ``"auto"``.
            use_refined: Parse ``refined_caption`` when the row has one.
            max_entities: Keep at most this many entities (0 = all).
            skip_without_entities: Return None for captions without entities.
            flip_prob: Probability of a horizontal flip.
            pad_value: Value (0-255) of padded pixels in pixel space (128, as the SA-1B mapper
                and the model's test preprocessing).
            skip_log_period: Log a summary warning every this many skipped images.
        """
        if entity_source not in ENTITY_SOURCES:
            raise ValueError(
                f"INPUT.UNIOVSEG.CAPTION.ENTITY_SOURCE={entity_source!r}: use one of "
                f"{list(ENTITY_SOURCES)}"
            )
        if entity_source != "manifest" and entity_parser is None:
            raise ValueError(f"entity_source={entity_source!r} needs an entity_parser")
        if crop_size <= 0 or max_entities < 0 or not 0.0 <= flip_prob <= 1.0:
            raise ValueError(
                "crop_size must be > 0, max_entities >= 0 and flip_prob in [0, 1], got "
                f"{crop_size}, {max_entities}, {flip_prob}"
            )
        self.crop_size = int(crop_size)
        self.entity_source = entity_source
        self.entity_parser = entity_parser
        self.parser_name = getattr(entity_parser, "name", "parser")
        self.use_refined = bool(use_refined)
        self.max_entities = int(max_entities)
        self.skip_without_entities = bool(skip_without_entities)
        self.flip_prob = float(flip_prob)
        self.pad_value = float(pad_value)
        self.skip_log_period = max(1, int(skip_log_period))
        self.skip_counts: Counter[str] = Counter()

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.INPUT.UNIOVSEG.CAPTION
        if c.PARSER not in PARSER_NAMES:
            raise ValueError(
                f"INPUT.UNIOVSEG.CAPTION.PARSER={c.PARSER!r}: use one of {list(PARSER_NAMES)}"
            )
        parser = None
        if c.ENTITY_SOURCE != "manifest":
            parser = build_entity_parser(
                c.PARSER, spacy_model=c.SPACY_MODEL, max_words=c.MAX_ENTITY_WORDS
            )
        return {
            "crop_size": cfg.INPUT.UNIOVSEG.CROP_SIZE,
            "entity_source": c.ENTITY_SOURCE,
            "entity_parser": parser,
            "use_refined": c.USE_REFINED,
            "max_entities": c.MAX_ENTITIES,
            "skip_without_entities": c.SKIP_WITHOUT_ENTITIES,
            "flip_prob": 0.5 if c.RANDOM_FLIP else 0.0,
            "pad_value": cfg.INPUT.UNIOVSEG.PAD_VALUE,
        }

    def _skip(self, reason: str, file_name: str) -> None:
        self.skip_counts[reason] += 1
        total = sum(self.skip_counts.values())
        if total == 1 or total % self.skip_log_period == 0:
            logger.warning(
                "CaptionDatasetMapper skipped %d image(s) so far in this process %s; latest: %s "
                "(%s)",
                total,
                dict(self.skip_counts),
                file_name,
                reason,
            )

    def entities_of(self, dataset_dict: dict) -> RowEntities:
        """The entities of one row, the text they come from and their source."""
        caption = dataset_dict["caption"]
        if self.use_refined and dataset_dict.get("refined_caption"):
            caption = dataset_dict["refined_caption"]
        from_manifest = self.entity_source == "manifest" or (
            self.entity_source == "auto" and dataset_dict.get("entities") is not None
        )
        if from_manifest:
            raw = dataset_dict.get("entities") or []
            entities = list(dict.fromkeys(" ".join(e.lower().split()) for e in raw if e.strip()))
            source = "manifest"
        else:
            entities = self.entity_parser(caption)
            source = self.parser_name
        if self.max_entities:
            entities = entities[: self.max_entities]
        return RowEntities(caption, entities, source)

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Maps one row; returns None (and counts the reason) for an unusable one."""
        file_name = dataset_dict.get("file_name", "?")
        caption, entities, source = self.entities_of(dataset_dict)
        if not entities and self.skip_without_entities:
            self._skip("no_entities", file_name)
            return None
        try:
            image = read_dataset_image(dataset_dict, format="RGB")
        except (OSError, ValueError, SyntaxError) as e:
            logger.debug("unreadable image %s: %s", file_name, e)
            self._skip("unreadable_image", file_name)
            return None
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            self._skip("empty_image", file_name)
            return None
        # The test-time geometry and resize (the release's): the point-grid masks of stage 2 are
        # predicted on the same kind of input as at inference.
        frame = inference_frame((height, width), self.crop_size)
        new_h, new_w = frame.valid_size
        resized = resize_uint8(image, frame.valid_size)
        if self.flip_prob and random.random() < self.flip_prob:
            resized = resized[:, ::-1]
        out = pad_bottom_right(resized, frame.padded_size, pad_value=self.pad_value)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))),
            "image_size": (new_h, new_w),
            "height": height,
            "width": width,
            "caption": caption,
            "entities": entities,
            "entity_source": source,
            "file_name": file_name,
            "image_id": dataset_dict.get("image_id"),
        }
