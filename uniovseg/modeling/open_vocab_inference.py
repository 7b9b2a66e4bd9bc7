"""Open-vocabulary inference (paper Sec. 3.3 "Open-vocabulary inference"): the masks of the
point grid are embedded in CLIP space (through the feature adapter when the model has one),
classified against the text embeddings of a vocabulary, and assembled into detectron2's
``sem_seg`` and ``panoptic_seg`` outputs at the original image size.

The vocabulary and the thing classes come from a dataset's metadata (``set_metadata``, called by
the trainer before each evaluation dataset) or are set directly (``set_vocabulary``, used by the
demo and the Python API).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from detectron2.config import configurable

from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult
from uniovseg.modeling.concept_segmentation import ConceptSegmenter
from uniovseg.modeling.image_frame import ImageFrame
from uniovseg.modeling.inference_stages import stage
from uniovseg.modeling.open_vocab_postprocessing import (
    OpenVocabPostprocessor,
    resize_mask_logits,
    thing_classes_from_metadata,
)
from uniovseg.modeling.text_classifier import RegionClassification, TextClassifier

_OUTPUTS = ("sem_seg", "panoptic_seg")
# Also computable on request (the predictor's labels), never by an evaluator: the argmax of
# ``sem_seg`` without its [C, H, W] map.
_EXTRA_OUTPUTS = ("semantic_labels",)
# Which outputs each evaluator needs: computing only those saves time and memory (a
# [C, H, W] semantic map for 847 classes at 800 x 1333 is 3.6 GB).
_OUTPUTS_BY_EVALUATOR = {"sem_seg": ("sem_seg",), "coco_panoptic_seg": ("panoptic_seg",)}


def soft_masks(result: AutomaticMaskResult, frame: ImageFrame) -> torch.Tensor:
    """The automatic masks' probabilities [K, H0, W0] at the original size: the generator's
    ``mask_probs`` when it returned them, else its low-res logits resized (padding cropped)."""
    if result.mask_probs is not None:
        return result.mask_probs
    return resize_mask_logits(
        result.mask_logits_lowres,
        valid_size=frame.valid_size,
        output_size=result.original_size,
        padded_size=frame.padded_size,
    ).sigmoid()


class OpenVocabInference:
    """Classifies automatic masks with a vocabulary and assembles semantic/panoptic outputs."""

    @configurable
    def __init__(
        self,
        *,
        text_classifier: TextClassifier,
        postprocessor: OpenVocabPostprocessor,
        vocabulary: str | Sequence[str] = "",
        thing_classes: Collection[int] = (),
        outputs: Sequence[str] = _OUTPUTS,
        concepts: ConceptSegmenter | None = None,
    ) -> None:
        """
        Args:
            text_classifier: Vocabulary -> cached text embeddings -> region logits.
            postprocessor: Semantic and panoptic assembly with the configured thresholds.
            vocabulary: Default vocabulary (a packaged name, a file, an inline "a; b" string or a
                list of class entries); empty: none until ``set_vocabulary``/``set_metadata``.
            thing_classes: Contiguous indices of the vocabulary's "thing" classes (panoptic:
                one segment per mask; other classes are stuff, merged per class).
            outputs: Subset of ("sem_seg", "panoptic_seg") to compute.
            concepts: Concept prompts' scoring and rejection (``MODEL.UNIOVSEG.CONCEPTS``);
                None: the defaults of :class:`ConceptSegmenter`.
        """
        self.text_classifier = text_classifier
        self.postprocessor = postprocessor
        self.concepts = concepts if concepts is not None else ConceptSegmenter()
        self.thing_classes: set[int] = set()
        self.set_outputs(outputs)
        if vocabulary:
            self.set_vocabulary(vocabulary, thing_classes=thing_classes)

    @classmethod
    def from_config(cls, cfg, text_encoder) -> dict:
        return {
            "text_classifier": TextClassifier(cfg, text_encoder=text_encoder),
            "postprocessor": OpenVocabPostprocessor(cfg),
            "vocabulary": cfg.MODEL.UNIOVSEG.OPEN_VOCAB.VOCABULARY,
            "outputs": tuple(cfg.MODEL.UNIOVSEG.TEST.OPEN_VOCAB_OUTPUTS),
            "concepts": ConceptSegmenter(cfg),
        }

    @property
    def enabled(self) -> bool:
        """True when a vocabulary is set and at least one output is requested."""
        return self.text_classifier.num_classes > 0 and bool(self.outputs)

    @property
    def class_names(self) -> list[str]:
        """The current vocabulary's class entries (synonyms comma-separated)."""
        return self.text_classifier.vocabulary

    def set_outputs(self, outputs: Sequence[str]) -> None:
        unknown = set(outputs) - set(_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown open-vocabulary outputs {sorted(unknown)}; use {_OUTPUTS}")
        self.outputs = tuple(outputs)

    def set_vocabulary(
        self, vocabulary: str | Sequence[str], *, thing_classes: Collection[int] = ()
    ) -> None:
        """Sets the classes (validated now, so a bad vocabulary fails before any image).

        Args:
            vocabulary: Packaged name, file, inline "cat; dog, puppy" string or list of entries.
            thing_classes: Indices of thing classes for panoptic output (default: none, every
                class is stuff).
        """
        num_classes = len(self.text_classifier.set_vocabulary(vocabulary))
        bad = [c for c in thing_classes if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"thing class indices {bad} are outside the {num_classes} classes")
        self.thing_classes = {int(c) for c in thing_classes}

    def set_metadata(self, metadata) -> None:
        """Takes vocabulary, thing classes and needed outputs from a dataset's metadata
        (``vocabulary`` key, else ``stuff_classes``; ``thing_dataset_id_to_contiguous_id``;
        ``evaluator_type``)."""
        vocabulary = metadata.get("vocabulary", None) or metadata.get("stuff_classes", None)
        if not vocabulary:
            raise ValueError(
                f"dataset {metadata.name!r} has neither a 'vocabulary' nor 'stuff_classes' in its "
                "metadata: open-vocabulary evaluation needs class names"
            )
        evaluator_type = metadata.get("evaluator_type", None)
        if evaluator_type in _OUTPUTS_BY_EVALUATOR:
            self.set_outputs(_OUTPUTS_BY_EVALUATOR[evaluator_type])
        self.set_vocabulary(vocabulary, thing_classes=thing_classes_from_metadata(metadata))

    @torch.no_grad()
    def __call__(
        self,
        result: AutomaticMaskResult,
        classification: RegionClassification,
        *,
        frame: ImageFrame,
        outputs: Sequence[str] | None = None,
    ) -> dict:
        """
        Args:
            result: The automatic masks of one image (``mask_logits_lowres`` cover the padded
                input; ``iou_scores`` are their quality). Its ``mask_probs``, when present,
                are used as the soft masks; otherwise they are resized from the low-res logits.
            classification: Their class probabilities ([K, C]).
            frame: The image's frame (the low-res logits cover its padded input).
            outputs: What to compute among ``"sem_seg"``, ``"panoptic_seg"`` and
                ``"semantic_labels"``; None: the configured outputs.

        Returns:
            ``mask_class_probs`` [K, C], plus the requested ones of ``sem_seg`` float
            [C, H0, W0], ``semantic_labels`` int64 [H0, W0] (its argmax, see
            :meth:`OpenVocabPostprocessor.semantic_labels`) and ``panoptic_seg`` (int32
            [H0, W0], segments_info).
        """
        outputs = self.outputs if outputs is None else tuple(outputs)
        unknown = set(outputs) - set(_OUTPUTS) - set(_EXTRA_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown open-vocabulary outputs {sorted(unknown)}")
        with stage("mask_resize"):  # the generator's, if it returned them
            mask_probs = soft_masks(result, frame)
        probs = classification.probs
        out = {"mask_class_probs": probs}
        if "sem_seg" in outputs:
            with stage("semantic_assembly"):
                out["sem_seg"] = self.postprocessor.semantic(
                    mask_probs, probs, mask_scores=result.iou_scores
                )
        if "semantic_labels" in outputs:
            with stage("semantic_assembly"):
                out["semantic_labels"] = self.postprocessor.semantic_labels(
                    mask_probs, probs, mask_scores=result.iou_scores
                )
        if "panoptic_seg" in outputs:
            with stage("panoptic_assembly"):
                out["panoptic_seg"] = self.postprocessor.panoptic(
                    mask_probs,
                    probs,
                    thing_classes=self.thing_classes,
                    mask_scores=result.iou_scores,
                    void_probs=classification.void_probs,
                )
        return out
