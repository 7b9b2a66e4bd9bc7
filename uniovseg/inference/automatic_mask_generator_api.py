"""``AutomaticMaskGenerator``: segment-anything's ``SamAutomaticMaskGenerator`` interface on
Uni-OVSeg, so that code written for SAM runs unchanged::

    generator = AutomaticMaskGenerator(predictor, points_per_side=20)
    records = generator.generate(image)          # list of SAM records, by decreasing IoU

The work is done by :class:`~uniovseg.inference.automatic_mask_generator.
AutomaticMaskGenerationEngine` (point grid, IoU and stability filters, containment-aware NMS)
on features computed once per image by :class:`~uniovseg.inference.predictor.
UniOVSegPredictor`. When the predictor has a vocabulary, every record also gets its class.

``generate`` is safe on a predictor shared by several threads (see the predictor's "Thread
safety"): each call works on its own image.

Differences from SAM: no crops (``crop_n_layers`` must be 0; ``crop_box`` is the whole image),
no custom ``point_grids``, and NMS also removes masks mostly contained in a better one
(``nms_containment_thresh``, the release's rule). Defaults are the release's, not SAM's
(``pred_iou_thresh`` 0.619 on sigmoid IoU, ``stability_score_thresh`` 0.92).
"""

from __future__ import annotations

import logging

import numpy as np

from uniovseg.inference.automatic_mask_generator import (
    AutomaticMaskGenerationEngine,
    AutomaticMaskResult,
    check_integer,
    check_threshold,
    to_sam_records,
)

__all__ = ["AutomaticMaskGenerator", "automatic_records"]

logger = logging.getLogger(__name__)

_OUTPUT_MODES = ("binary_mask", "coco_rle")


def automatic_records(
    result: AutomaticMaskResult,
    output_mode: str = "binary_mask",
    labels=None,
) -> list[dict]:
    """SAM records of automatic masks, with open-vocabulary labels when given.

    Args:
        result: Automatic masks of one image.
        output_mode: ``"binary_mask"`` (bool [H, W] arrays) or ``"coco_rle"`` (JSON-ready).
        labels: Optional :class:`~uniovseg.inference.predictor.MaskLabels` of the K masks.

    Returns:
        One dict per mask with SAM's keys ``segmentation``, ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box``; with
        labels also ``category_id`` (class index), ``category`` (display name) and ``score``
        (its probability).
    """
    records = to_sam_records(result, output_mode)
    if labels is None:
        return records
    if len(labels.labels) != len(records):
        raise ValueError(f"got {len(labels.labels)} labels for {len(records)} masks")
    for record, label, score in zip(records, labels.labels, labels.scores, strict=True):
        record["category_id"] = int(label)
        record["category"] = labels.class_names[int(label)]
        record["score"] = float(score)
    return records


class AutomaticMaskGenerator:
    """Whole-image mask generation from a point grid, with SAM's constructor and records."""

    def __init__(
        self,
        model_or_predictor,
        points_per_side: int = 20,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.619,
        stability_score_thresh: float = 0.92,
        stability_score_offset: float = 0.1,
        box_nms_thresh: float = 0.5,
        crop_n_layers: int = 0,
        point_grids: None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        nms_containment_thresh: float = 0.7,
        stability_score_center: float = 0.0,
        nms_scale: float = 0.5,
    ) -> None:
        """
        Args:
            model_or_predictor: A :class:`~uniovseg.inference.predictor.UniOVSegPredictor` (its
                vocabulary, if any, labels the masks) or a UniOVSeg model (wrapped in one).
            points_per_side: The grid has ``points_per_side**2`` point prompts.
            points_per_batch: Points decoded per network call (memory only).
            pred_iou_thresh: Keep masks whose predicted IoU (sigmoid) is at least this.
            stability_score_thresh: Keep masks whose stability score is at least this.
            stability_score_offset: Half-width of the stability band, in logits.
            box_nms_thresh: NMS removes a mask whose mask IoU with a better one is >= this
                (SAM's name; the NMS here is on masks, not boxes).
            crop_n_layers: Must be 0 (no image crops).
            point_grids: Must be None (the regular grid of ``points_per_side``).
            min_mask_region_area: Fill holes and remove islands below this many pixels.
            output_mode: ``"binary_mask"`` or ``"coco_rle"``.
            nms_containment_thresh: NMS also removes a mask when this fraction of it lies
                inside a better one.
            stability_score_center: Centre of the stability band, in logits.
            nms_scale: Resolution of the NMS frame relative to the input.

        Raises:
            ValueError: An unsupported option, or a number that is not finite or out of its
                range (thresholds >= 0, where above 1 keeps no mask or turns an NMS rule off;
                ``points_per_side`` >= 1; ...); the message names the argument and the range.
        """
        from uniovseg.inference.predictor import UniOVSegPredictor

        if crop_n_layers != 0:
            raise ValueError(
                f"crop_n_layers={crop_n_layers}: image crops are not supported, use 0 (the "
                "grid covers the whole image at the model's input size)"
            )
        if point_grids is not None:
            raise ValueError("custom point_grids are not supported; set points_per_side")
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {_OUTPUT_MODES}, got {output_mode!r}")
        # The engine checks the other numbers under the same names; these two it names otherwise.
        check_threshold("box_nms_thresh", box_nms_thresh, above_one="turns the rule off")
        check_integer("min_mask_region_area", min_mask_region_area, low=0)
        # Built first, so that a bad number fails before the model is wrapped.
        engine = AutomaticMaskGenerationEngine(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            stability_score_center=stability_score_center,
            nms_iou_thresh=box_nms_thresh,
            nms_containment_thresh=nms_containment_thresh,
            nms_scale=nms_scale,
            min_region_area=min_mask_region_area,
        )
        if isinstance(model_or_predictor, UniOVSegPredictor):
            self.predictor = model_or_predictor
        else:
            self.predictor = UniOVSegPredictor(model_or_predictor)
        self.output_mode = output_mode
        self.engine = engine

    @classmethod
    def from_predictor_config(cls, predictor, output_mode: str = "binary_mask"):
        """A generator that uses the model's configured engine (``MODEL.UNIOVSEG.AUTOMATIC``)
        instead of SAM-style keyword arguments; what ``demo/demo.py`` uses."""
        generator = cls(predictor, output_mode=output_mode)
        generator.engine = generator.predictor.model.mask_generator
        return generator

    def generate(self, image: np.ndarray) -> list[dict]:
        """Masks of a whole image as SAM records.

        Args:
            image: uint8 [H, W, 3] RGB.

        Returns:
            One dict per mask, by decreasing predicted IoU (see :func:`automatic_records`);
            ``category_id``/``category``/``score`` are present when the predictor has a
            vocabulary.
        """
        result, labels = self.generate_result(image)
        return automatic_records(result, self.output_mode, labels)

    def generate_result(self, image: np.ndarray):
        """Like :meth:`generate`, returning the tensors instead of records.

        The image is set in a :meth:`~uniovseg.inference.predictor.UniOVSegPredictor.session`:
        the calling thread's current image on the predictor is the same before and after, and
        threads sharing the predictor never see each other's images.

        Returns:
            ``(AutomaticMaskResult, MaskLabels or None)``.
        """
        with self.predictor.session(image):
            return self.result_for_current_image()

    def result_for_current_image(self):
        """``(AutomaticMaskResult, MaskLabels or None)`` for the image that the calling thread
        set on the predictor (features are not recomputed)."""
        result = self.predictor.generate_automatic_masks(self.engine)
        labels = None
        if self.predictor.has_vocabulary:
            labels = self.predictor.classify_masks(result.mask_logits_lowres)
        logger.debug("automatic mask generation: %d masks", len(result))
        return result, labels
