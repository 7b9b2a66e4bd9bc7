"""Result types of :class:`~uniovseg.inference.predictor.UniOVSegPredictor` (numpy arrays)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "UNLABELED",
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
