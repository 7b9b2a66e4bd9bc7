"""Result types of :class:`~uniovseg.inference.predictor.UniOVSegPredictor` (numpy arrays)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "UNLABELED",
    "ConceptInstance",
    "ConceptPrediction",
    "ConceptResult",
    "MaskLabels",
    "PanopticPrediction",
    "PromptPrediction",
    "SemanticPrediction",
]

# Value of pixels that no automatic mask labels in SemanticPrediction.labels.
UNLABELED = -1


@dataclass
class PromptPrediction:
    """Masks of N prompts with M outputs each (leading N dropped for a single prompt).

    Attributes:
        masks: bool [N, M, H0, W0] at the original size (float32 logits with
            ``return_logits=True``).
        iou_predictions: float32 [N, M], predicted IoU in [0, 1].
        low_res_logits: float32 [N, M, S / 4, S / 4], logits over the padded input frame.
        stability_scores: float32 [N, M] in [0, 1] (see ``mask_postprocessing.stability_score``,
            with the model's automatic-mask offset and centre).
        labels: int64 [N, M] class indices into ``class_names``, or None without a vocabulary.
        scores: float32 [N, M] probability of that class, or None without a vocabulary.
        class_names: Display names of the vocabulary's classes (empty without one).
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray
    stability_scores: np.ndarray
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)


class MaskLabels(NamedTuple):
    """Open-vocabulary labels of K masks.

    Attributes:
        labels: int64 [K] class indices into ``class_names``.
        scores: float32 [K] probability of that class.
        class_names: Display names of the vocabulary's classes.
    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]


class SemanticPrediction(NamedTuple):
    """Semantic segmentation of one image.

    Attributes:
        labels: int64 [H0, W0], the class index of each pixel (Mask2Former's semantic inference
            over the automatic masks); ``UNLABELED`` (-1) everywhere when no mask was found.
        class_names: Display names of the vocabulary's classes.
    """

    labels: np.ndarray
    class_names: list[str]


class PanopticPrediction(NamedTuple):
    """Panoptic segmentation of one image.

    Attributes:
        panoptic_seg: int32 [H0, W0] segment ids, 0 = no segment.
        segments_info: One dict per segment: ``id`` (its value in ``panoptic_seg``),
            ``category_id`` (class index), ``category`` (display name), ``isthing`` (bool),
            ``score`` (float).
    """

    panoptic_seg: np.ndarray
    segments_info: list[dict]


class ConceptInstance(NamedTuple):
    """One instance of a concept phrase.

    Attributes:
        mask: bool [H0, W0] at the original size.
        box: float32 [4] tight XYXY box of ``mask`` in original pixels (pixel edges).
        score: The phrase's probability for this mask, in [0, 1] (see
            :func:`~uniovseg.modeling.concept_segmentation.concept_probs`).
        mask_index: Index of the mask in the image's automatic masks
            (``predictor.generate_automatic_masks()``), e.g. to re-render it at another size.
    """

    mask: np.ndarray
    box: np.ndarray
    score: float
    mask_index: int


@dataclass
class ConceptResult:
    """The answer for one phrase of a concept query.

    Attributes:
        phrase: The phrase entry (synonyms comma-separated, e.g. ``"dog, puppy"``).
        instances: Its instances by decreasing score; empty when none was found.
    """

    phrase: str
    instances: list[ConceptInstance]

    @property
    def found(self) -> bool:
        """Whether the phrase has at least one instance (False: "none found")."""
        return bool(self.instances)

    @property
    def scores(self) -> np.ndarray:
        """float32 [N], the instances' scores."""
        return np.array([i.score for i in self.instances], dtype=np.float32)

    @property
    def boxes(self) -> np.ndarray:
        """float32 [N, 4] XYXY boxes."""
        return np.array([i.box for i in self.instances], dtype=np.float32).reshape(-1, 4)


@dataclass
class ConceptPrediction:
    """The answer to a concept query (``predictor.segment_concepts("red car; dog")``).

    Index it by position or by phrase (any synonym, case-insensitive): ``out["dog"].found``.

    Attributes:
        concepts: One :class:`ConceptResult` per phrase, in query order.
        image_size: (H0, W0) of the image.
        score_threshold: The probability a mask needed (``MODEL.UNIOVSEG.CONCEPTS.SCORE_THRESH``
            unless overridden).
        background: The background entries the phrases competed with.
    """

    concepts: list[ConceptResult]
    image_size: tuple[int, int]
    score_threshold: float
    background: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self):
        return iter(self.concepts)

    def __getitem__(self, key: int | str) -> ConceptResult:
        if isinstance(key, str):
            wanted = " ".join(key.split()).casefold()
            for result in self.concepts:
                names = [" ".join(n.split()).casefold() for n in result.phrase.split(",")]
                if wanted in names:
                    return result
            phrases = [r.phrase for r in self.concepts]
            raise KeyError(f"{key!r} is not a phrase of this query ({phrases})")
        return self.concepts[key]

    def union_mask(self, key: int | str) -> np.ndarray:
        """bool [H0, W0]: every pixel of the phrase's instances (all False when none found)."""
        union = np.zeros(self.image_size, dtype=bool)
        for instance in self[key].instances:
            union |= instance.mask
        return union
