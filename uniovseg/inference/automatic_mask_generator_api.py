"""``AutomaticMaskGenerator``: segment-anything's ``SamAutomaticMaskGenerator`` interface on
Uni-OVSeg, so that code written for SAM runs unchanged::

    generator = AutomaticMaskGenerator(predictor, points_per_side=20)
    records = generator.generate(image)          # list of SAM records, by decreasing IoU

It calls only the predictor (segment-anything's layout): the predictor's session encodes each
image (or crop) once and runs the model's automatic masks (point grid, IoU and stability
filters, containment-aware NMS: :class:`~uniovseg.modeling.automatic_mask_engine.
AutomaticMaskGenerationEngine`). When the predictor has a vocabulary, every record also gets
its class.

``generate`` is safe on a predictor shared by several threads (see the predictor's "Thread
safety"): each call works on its own image.

Every argument of SAM's constructor is accepted, under its name and in its position. Image
crops (``crop_n_layers`` > 0) work as in SAM: each crop is segmented as an image of its own
(its own predictor session), masks cut by a crop edge are dropped, and box NMS at
``crop_nms_thresh`` removes masks found again in another crop, preferring smaller crops.

Differences from SAM: no custom ``point_grids``; NMS within an image or crop is on masks, not
boxes, and also removes masks mostly contained in a better one (``nms_containment_thresh``, the
release's rule); records are always by decreasing predicted IoU. Defaults are the release's,
not SAM's (``pred_iou_thresh`` 0.619 on sigmoid IoU, ``stability_score_thresh`` 0.92,
``box_nms_thresh`` 0.5).
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from uniovseg.inference.image_crops import (
    ImageCrop,
    build_image_crops,
    cat_results,
    crop_nms,
    masks_near_crop_edge,
    uncrop_result,
)
from uniovseg.inference.predictions import MaskLabels
from uniovseg.inference.predictor import UniOVSegPredictor
from uniovseg.inference.sam_records import SAM_OUTPUT_MODES, to_sam_records
from uniovseg.modeling.automatic_mask_engine import (
    AutomaticMaskGenerationEngine,
    AutomaticMaskResult,
    check_integer,
    check_number,
    check_threshold,
)
from uniovseg.modeling.point_grid import layer_points_per_side

__all__ = ["AutomaticMaskGenerator", "automatic_records"]

logger = logging.getLogger(__name__)


def automatic_records(
    result: AutomaticMaskResult,
    output_mode: str = "binary_mask",
    labels=None,
) -> list[dict]:
    """SAM records of automatic masks, with open-vocabulary labels when given.

    Args:
        result: Automatic masks of one image.
        output_mode: ``"binary_mask"`` (bool [H, W] arrays), ``"uncompressed_rle"`` or
            ``"coco_rle"`` (JSON-ready dicts, see :func:`~uniovseg.inference.sam_records.
            to_sam_records`).
        labels: Optional :class:`~uniovseg.inference.predictor.MaskLabels` of the K masks.

    Returns:
        One dict per mask with SAM's keys ``segmentation``, ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH
        of the image crop the mask was found in); with labels also ``category_id`` (class
        index), ``category`` (display name) and ``score`` (its probability).
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
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        nms_containment_thresh: float = 0.7,
        stability_score_center: float = 0.0,
        nms_scale: float = 0.5,
        crop_edge_margin: float = 20.0,
    ) -> None:
        """
        Args:
            model_or_predictor: A :class:`~uniovseg.inference.predictor.UniOVSegPredictor` (its
                vocabulary, if any, labels the masks) or a UniOVSeg model (wrapped in one).
            points_per_side: The grid of the whole image has ``points_per_side**2`` point
                prompts.
            points_per_batch: Points decoded per network call (memory only).
            pred_iou_thresh: Keep masks whose predicted IoU (sigmoid) is at least this.
            stability_score_thresh: Keep masks whose stability score is at least this.
            stability_score_offset: Half-width of the stability band, in logits.
            box_nms_thresh: NMS within an image or crop removes a mask whose mask IoU with a
                better one is >= this (SAM's name; the NMS here is on masks, not boxes).
            crop_n_layers: Also segment crops of the image: layer ``i`` (1..``crop_n_layers``)
                splits it into ``2**i x 2**i`` overlapping crops, each run as an image of its
                own; 0: the whole image only.
            crop_nms_thresh: Between crops, box NMS removes a mask whose box IoU with a kept
                mask from a smaller (or earlier) crop is above this.
            crop_overlap_ratio: Overlap of neighbouring layer-1 crops as a fraction of the
                image's short side, in [0, 1); layer ``i`` overlaps by this / ``2**(i - 1)``.
            crop_n_points_downscale_factor: Crops of layer ``i`` use a grid of
                ``points_per_side // crop_n_points_downscale_factor**i`` points per side.
            point_grids: Must be None (the regular grid of ``points_per_side``).
            min_mask_region_area: Fill holes and remove islands below this many pixels.
            output_mode: ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``.
            nms_containment_thresh: NMS also removes a mask when this fraction of it lies
                inside a better one.
            stability_score_center: Centre of the stability band, in logits.
            nms_scale: Resolution of the NMS frame relative to the input.
            crop_edge_margin: A crop's mask whose box comes within this many pixels of a crop
                edge that is not an image edge is dropped (cut by the crop; SAM: 20).

        Raises:
            ValueError: An unsupported option, or a number that is not finite or out of its
                range (thresholds >= 0, where above 1 keeps no mask or turns an NMS rule off;
                ``points_per_side`` >= 1; ``crop_overlap_ratio`` in [0, 1); the deepest crop
                layer's grid at least 1 point per side; ...); the message names the argument
                and the range.
        """
        if point_grids is not None:
            raise ValueError("custom point_grids are not supported; set points_per_side")
        if output_mode not in SAM_OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {SAM_OUTPUT_MODES}, got {output_mode!r}")
        # The engine checks the other numbers under the same names; these two it names otherwise.
        check_threshold("box_nms_thresh", box_nms_thresh, above_one="turns the rule off")
        check_integer("min_mask_region_area", min_mask_region_area, low=0)
        self.crop_n_layers = check_integer("crop_n_layers", crop_n_layers, low=0)
        self.crop_nms_thresh = check_threshold(
            "crop_nms_thresh", crop_nms_thresh, above_one="turns the rule off"
        )
        self.crop_overlap_ratio = check_number(
            "crop_overlap_ratio", crop_overlap_ratio, low=0, high=1
        )
        if self.crop_overlap_ratio == 1:
            raise ValueError(
                "crop_overlap_ratio must be a number in [0, 1) (neighbouring crops overlap by "
                f"this fraction of the short side), got {crop_overlap_ratio!r}"
            )
        self.crop_n_points_downscale_factor = check_integer(
            "crop_n_points_downscale_factor", crop_n_points_downscale_factor, low=1
        )
        self.crop_edge_margin = check_number("crop_edge_margin", crop_edge_margin, low=0)
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
        deepest = layer_points_per_side(
            engine.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )
        if deepest < 1:
            raise ValueError(
                f"points_per_side={engine.points_per_side} with crop_n_points_downscale_factor="
                f"{self.crop_n_points_downscale_factor} leaves no point in the crops of layer "
                f"{self.crop_n_layers} (points_per_side // factor**layer must be >= 1): raise "
                "points_per_side or lower crop_n_layers or the factor"
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
        instead of SAM-style keyword arguments (no crops); what ``demo/demo.py`` uses."""
        generator = cls(predictor, output_mode=output_mode)
        generator.engine = generator.predictor.model.mask_generator
        return generator

    def generate(self, image: np.ndarray) -> list[dict]:
        """Masks of a whole image as SAM records.

        Args:
            image: uint8 [H, W, 3] RGB.

        Returns:
            One dict per mask, by decreasing predicted IoU (see :func:`automatic_records`), in
            the whole image's pixels whichever crop it came from (``crop_box``);
            ``category_id``/``category``/``score`` are present when the predictor has a
            vocabulary.
        """
        result, labels = self.generate_result(image)
        return automatic_records(result, self.output_mode, labels)

    def generate_result(self, image: np.ndarray):
        """Like :meth:`generate`, returning the tensors instead of records.

        Each crop (the whole image first) is set in its own
        :meth:`~uniovseg.inference.predictor.UniOVSegPredictor.session`: the calling thread's
        current image on the predictor is the same before and after, and threads sharing the
        predictor never see each other's images.

        Returns:
            ``(AutomaticMaskResult, MaskLabels or None)``; with crops, the result's
            ``crop_boxes`` says which crop each mask came from.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise ValueError(
                "generate expects a uint8 [H, W, 3] numpy array, got "
                f"{getattr(image, 'shape', type(image).__name__)}"
            )
        image_size = (int(image.shape[0]), int(image.shape[1]))
        crops = build_image_crops(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        parts = []
        for crop in crops:
            x0, y0, x1, y1 = crop.box
            with self.predictor.session(image[y0:y1, x0:x1]):
                parts.append(self._crop_result(crop, image_size))
        if len(parts) == 1:
            return parts[0]
        return self._merge(parts)

    def result_for_current_image(self):
        """``(AutomaticMaskResult, MaskLabels or None)`` for the image that the calling thread
        set on the predictor (features are not recomputed). Needs ``crop_n_layers=0``: crops
        need the image itself, use :meth:`generate_result`."""
        if self.crop_n_layers > 0:
            raise ValueError(
                f"crop_n_layers={self.crop_n_layers}: crops are segmented from the image "
                "itself, call generate(image) or generate_result(image)"
            )
        size = self.predictor.original_size
        if size is None:
            raise ValueError(
                "no image is set in this thread: call predictor.set_image(image) first, or "
                "generate(image)"
            )
        return self._crop_result(ImageCrop((0, 0, size[1], size[0]), 0), size)

    def _crop_result(self, crop: ImageCrop, image_size: tuple[int, int]):
        """Masks of the thread's current image, which is ``crop`` of the original image, in the
        original image's frame, and their labels (or None)."""
        result = self.predictor.generate_automatic_masks(self._layer_engine(crop.layer))
        cut = masks_near_crop_edge(result.boxes, crop.box, image_size, self.crop_edge_margin)
        if bool(cut.any()):
            result = result.select(~cut)
        labels = None
        if self.predictor.has_vocabulary:
            labels = self.predictor.classify_masks(result.mask_logits_lowres)
        logger.debug("automatic mask generation: %d masks in crop %s", len(result), crop.box)
        return uncrop_result(result, crop.box, image_size), labels

    def _layer_engine(self, layer: int) -> AutomaticMaskGenerationEngine:
        points = layer_points_per_side(
            self.engine.points_per_side, layer, self.crop_n_points_downscale_factor
        )
        if points == self.engine.points_per_side:
            return self.engine
        engine = copy.copy(self.engine)
        engine.points_per_side = points
        return engine

    def _merge(self, parts):
        """One result and labels from the crops' ``(result, labels)``, de-duplicated."""
        results = [result for result, _ in parts]
        labels = [label for _, label in parts]
        merged = cat_results(results)
        keep = crop_nms(merged, self.crop_nms_thresh)
        merged = merged.select(keep)
        if all(label is None for label in labels):
            return merged, None
        # The vocabulary belongs to the model: another thread may change it between crops.
        if any(label is None for label in labels) or any(
            label.class_names != labels[0].class_names for label in labels
        ):
            raise RuntimeError(
                "the predictor's vocabulary changed while this image's crops were labelled; "
                "set the vocabulary before generating and run generate again"
            )
        index = keep.cpu().numpy()
        merged_labels = MaskLabels(
            np.concatenate([label.labels for label in labels])[index],
            np.concatenate([label.scores for label in labels])[index],
            labels[0].class_names,
        )
        return merged, merged_labels
