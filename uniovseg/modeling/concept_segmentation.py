"""Concept prompts: every instance of each phrase of a query such as ``"red car; dog"``, or an
explicit "none found", from an image's automatic masks.

Not in the paper (its inference labels every mask with the best class of a closed vocabulary,
Sec. 3.3); built from the same two steps, the point-grid masks and the zero-shot text
classifier, plus a rejection that the paper's closed-set inference does not need:

1. every automatic mask (region embedding ``r'_i``) is scored against each phrase **and** a
   background vocabulary (``MODEL.UNIOVSEG.CONCEPTS.BACKGROUND_VOCABULARY``: the classes a
   mask may show instead, e.g. the vocabulary the model was evaluated on, or a generic list);
2. a phrase's score for a mask is its softmax probability among ``[phrase, background...]``
   (CLIP's temperature-scaled cosine logits, best synonym per entry, as the text classifier
   computes them). Each phrase is scored on its own, so the answer for "dog" does not depend on
   the other phrases of the query; background entries sharing a name with the phrase are left
   out of its softmax (a phrase never competes with itself), while a broader background class
   stays ("car" in the background makes "red car" win only on red cars);
3. masks whose score reaches ``SCORE_THRESH`` are the phrase's candidates: a threshold on a
   probability, calibrated on held-out labelled images (``tools/eval_concepts.py
   --calibrate``), not a logit constant;
4. containment-aware mask NMS among each phrase's candidates (``NMS_IOU_THRESH``,
   ``NMS_CONTAINMENT_THRESH``), by decreasing score, so that an object and its parts (a car
   and its wheels, both matching "car") give one instance.

Because NMS visits masks by decreasing score, the instances kept at a threshold ``t`` are the
instances kept at threshold 0 whose score is ``>= t``: one pass at threshold 0 gives the
whole precision-recall curve (the evaluation relies on it).

Example::

    segmenter = ConceptSegmenter(background_vocabulary="coco_panoptic_133", score_threshold=0.5)
    phrases = parse_concepts("red car; dog")
    probs = segmenter.phrase_probs(region_embeds, phrases, classifier)   # [K, 2]
    found = segmenter.select(result, probs)                              # 2 ConceptInstances
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from detectron2.config import configurable

from uniovseg.data.vocabulary import (
    class_synonyms,
    normalize_vocabulary,
    parse_vocabulary_string,
    resolve_vocabulary,
)
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult, check_threshold
from uniovseg.modeling.inference_stages import stage
from uniovseg.modeling.mask_postprocessing import mask_nms
from uniovseg.modeling.text_classifier import TextClassifier

__all__ = [
    "ConceptInstances",
    "ConceptSegmenter",
    "background_exclusions",
    "concept_probs",
    "parse_concepts",
]

logger = logging.getLogger(__name__)

_KEEPS_NONE = "keeps no mask: every phrase answers none found"
_NO_RULE = "disables the rule"
_EXAMPLE = "'red car; dog' (';' between phrases, ',' between synonyms of one phrase)"


def parse_concepts(concepts: str | Sequence[str]) -> list[str]:
    """A concept query -> its phrases, normalised as vocabulary entries.

    Args:
        concepts: ``"red car; dog"`` (``;`` between phrases, ``,`` between synonyms of one
            phrase: ``"dog, puppy"``), or a list of phrases. A string is always phrases, never
            a packaged vocabulary name or a file.

    Returns:
        The phrases (``"dog, puppy"`` entries), in order, each once (a repeated phrase is
        dropped with a warning).

    Raises:
        ValueError: no phrase (an empty or blank query, only ``;``), a phrase with no visible
            character or a control character, or one name in two phrases.
    """
    if isinstance(concepts, str):
        if not any(part.strip(" ,\t\r\n") for part in concepts.split(";")):
            raise ValueError(
                f"the concept query {concepts!r} holds no phrase; give e.g. {_EXAMPLE}"
            )
        return parse_vocabulary_string(concepts)
    if concepts is None or isinstance(concepts, bytes) or not isinstance(concepts, Sequence):
        raise ValueError(f"concepts must be a string such as {_EXAMPLE} or a list of phrases")
    if not any(isinstance(c, str) and c.strip(" ,\t\r\n") for c in concepts):
        raise ValueError(
            f"the concept list {list(concepts)!r} holds no phrase; give e.g. {_EXAMPLE}"
        )
    return normalize_vocabulary(concepts, source="concept list")


def _name_keys(entry: str) -> set[str]:
    return {name.casefold() for name in class_synonyms(entry)}


def background_exclusions(phrases: Sequence[str], background: Sequence[str]) -> torch.Tensor:
    """Which background entries each phrase leaves out of its softmax.

    Args:
        phrases: P phrase entries.
        background: B background entries.

    Returns:
        bool [P, B]: True where the background entry shares a name (any synonym, ignoring
        case) with the phrase.
    """
    background_keys = [_name_keys(entry) for entry in background]
    rows = []
    for phrase in phrases:
        keys = _name_keys(phrase)
        rows.append([bool(keys & other) for other in background_keys])
    return torch.tensor(rows, dtype=torch.bool).reshape(len(phrases), len(background))


def concept_probs(
    phrase_logits: torch.Tensor, background_logits: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """Each phrase's probability among itself and its background, per mask.

    ``p[k, i] = exp(l[k, i]) / (exp(l[k, i]) + sum_b exp(bg[k, b]))`` over the background
    entries ``b`` that phrase ``i`` does not exclude.

    Args:
        phrase_logits: [K, P] logits of the masks against the phrases.
        background_logits: [K, B] logits against the background entries (same temperature).
        excluded: bool [P, B] (see :func:`background_exclusions`).

    Returns:
        float [K, P] in (0, 1]; 1 where a phrase has no background left.
    """
    num_masks, num_phrases = phrase_logits.shape
    if background_logits.shape[0] != num_masks or excluded.shape != (
        num_phrases,
        background_logits.shape[1],
    ):
        raise ValueError(
            f"shapes do not fit: phrase logits {tuple(phrase_logits.shape)}, background logits "
            f"{tuple(background_logits.shape)}, exclusions {tuple(excluded.shape)}"
        )
    background = background_logits[:, None, :].expand(num_masks, num_phrases, -1)
    background = background.masked_fill(excluded.to(background.device)[None], float("-inf"))
    joint = torch.cat([phrase_logits[..., None], background], dim=-1)  # [K, P, 1 + B]
    return joint.softmax(dim=-1)[..., 0]


class ConceptInstances(NamedTuple):
    """The instances found for one phrase, by decreasing score.

    Attributes:
        mask_indices: int64 [N], indices into the automatic masks (``AutomaticMaskResult``).
        scores: float32 [N], the phrase's probability for each (see :func:`concept_probs`).
    """

    mask_indices: torch.Tensor
    scores: torch.Tensor


class ConceptSegmenter:
    """Phrase scores of automatic masks, calibrated rejection and per-phrase de-duplication
    (see the module docstring). A plain object: no parameters, no state besides its settings.
    """

    @configurable
    def __init__(
        self,
        *,
        background_vocabulary: str | Sequence[str] = "coco_panoptic_133",
        score_threshold: float = 0.5,
        nms_iou_threshold: float = 0.5,
        nms_containment_threshold: float = 0.7,
    ) -> None:
        """
        Args:
            background_vocabulary: What a mask may show instead of a phrase: a packaged
                vocabulary name, a file, an inline ``"a; b, c"`` string or a list of entries
                (``MODEL.UNIOVSEG.CONCEPTS.BACKGROUND_VOCABULARY``).
            score_threshold: Keep masks whose phrase probability is ``>=`` this, in [0, 1]
                (``SCORE_THRESH``).
            nms_iou_threshold, nms_containment_threshold: Mask NMS among one phrase's
                candidates (see :func:`~uniovseg.modeling.mask_postprocessing.mask_nms`).
        """
        check_threshold("CONCEPTS.SCORE_THRESH", score_threshold, above_one=_KEEPS_NONE)
        check_threshold("CONCEPTS.NMS_IOU_THRESH", nms_iou_threshold, above_one=_NO_RULE)
        check_threshold(
            "CONCEPTS.NMS_CONTAINMENT_THRESH", nms_containment_threshold, above_one=_NO_RULE
        )
        # Validated now: a bad background fails at build time, not at the first query.
        self.background = resolve_vocabulary(background_vocabulary)
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.nms_containment_threshold = float(nms_containment_threshold)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.UNIOVSEG.CONCEPTS
        return {
            "background_vocabulary": c.BACKGROUND_VOCABULARY,
            "score_threshold": c.SCORE_THRESH,
            "nms_iou_threshold": c.NMS_IOU_THRESH,
            "nms_containment_threshold": c.NMS_CONTAINMENT_THRESH,
        }

    @torch.no_grad()
    def phrase_probs(
        self,
        region_embeds: torch.Tensor,
        phrases: Sequence[str],
        classifier: TextClassifier,
        background: str | Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Each phrase's probability for each mask.

        Args:
            region_embeds: [K, D] region embeddings of the masks (CLIP space).
            phrases: P phrase entries (:func:`parse_concepts`).
            classifier: The model's text classifier (templates, temperature, text cache).
            background: Replaces the configured background vocabulary for this call.

        Returns:
            float32 [K, P] on the embeddings' device.
        """
        background = self.background if background is None else resolve_vocabulary(background)
        excluded = background_exclusions(phrases, background)
        alone = [p for p, row in zip(phrases, excluded, strict=True) if bool(row.all())]
        if alone:
            warnings.warn(
                f"the background vocabulary names only {alone} itself: nothing is rejected for "
                "it (every mask scores 1); set MODEL.UNIOVSEG.CONCEPTS.BACKGROUND_VOCABULARY to "
                "a list of other classes",
                stacklevel=2,
            )
        embeds = region_embeds.float()
        # Float32 whatever the inference precision, as UniOVSeg.classify_masks; the phrases and
        # the background are two vocabularies so that the (long, fixed) background's text
        # embeddings stay in the classifier's cache across queries.
        with torch.autocast(device_type=embeds.device.type, enabled=False):
            with stage("classification"):
                phrase_logits = classifier.classify(embeds, list(phrases))
                background_logits = classifier.classify(embeds, background)
            return concept_probs(phrase_logits, background_logits, excluded)

    @torch.no_grad()
    def select(
        self,
        result: AutomaticMaskResult,
        probs: torch.Tensor,
        *,
        score_threshold: float | None = None,
    ) -> list[ConceptInstances]:
        """Each phrase's instances: masks scoring at least the threshold, de-duplicated.

        Args:
            result: The automatic masks (``masks`` bool [K, H0, W0] are compared by NMS).
            probs: float [K, P] phrase probabilities (:meth:`phrase_probs`).
            score_threshold: Replaces the configured ``SCORE_THRESH`` (0 keeps every mask
            that NMS keeps: the full ranking, for evaluation).

        Returns:
            P :class:`ConceptInstances` (empty ones for phrases with no instance).
        """
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        check_threshold("score_threshold", threshold, above_one=_KEEPS_NONE)
        if probs.dim() != 2 or probs.shape[0] != len(result):
            raise ValueError(f"probs must be [{len(result)}, P], got {tuple(probs.shape)}")
        found = []
        with stage("mask_postprocess"):
            for phrase in range(probs.shape[1]):
                scores = probs[:, phrase].float()
                candidates = torch.nonzero(scores >= threshold).flatten()
                keep = mask_nms(
                    result.masks[candidates.to(result.masks.device)],
                    scores[candidates],
                    self.nms_iou_threshold,
                    self.nms_containment_threshold,
                ).to(candidates.device)
                indices = candidates[keep]
                found.append(ConceptInstances(indices.cpu(), scores[indices].cpu()))
        return found
