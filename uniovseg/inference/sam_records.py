"""Automatic masks as segment-anything / SA-1B records (``SamAutomaticMaskGenerator``'s output
format): binary masks or RLEs plus areas, boxes and scores, one dict per mask."""

from __future__ import annotations

import numpy as np
import torch

from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult
from uniovseg.modeling.mask_postprocessing import encode_masks_rle

__all__ = ["SAM_OUTPUT_MODES", "to_sam_records", "uncompressed_rle"]

SAM_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def to_sam_records(result: AutomaticMaskResult, output_mode: str = "binary_mask") -> list[dict]:
    """Converts a result into SAM / SA-1B style per-mask records.

    Args:
        result: Automatic masks (``AutomaticMaskGenerationEngine.generate``, or
            ``AutomaticMaskGenerator.generate_result``, crops included).
        output_mode: ``"binary_mask"`` (``segmentation`` is a bool numpy array [H0, W0]),
            ``"uncompressed_rle"`` (``{"size": [H0, W0], "counts": [int, ...]}``: run lengths
            of the column-major (Fortran-order) flattened mask, starting with a run of zeros,
            which is 0 when the first pixel is set; pycocotools' ``frPyObjects`` reads it) or
            ``"coco_rle"`` (a compressed COCO RLE dict with ``str`` counts). Both RLEs are
            JSON-ready.

    Returns:
        One dict per mask, in the result's order, with keys ``segmentation``, ``area``
        (int pixels), ``bbox`` (XYWH ints, original pixels), ``predicted_iou`` (float),
        ``point_coords`` (``[[x, y]]``, original pixels), ``stability_score`` (float) and
        ``crop_box`` (XYWH ints, original pixels: the image crop the mask was found in;
        ``[0, 0, W0, H0]`` for the whole image).
    """
    if output_mode not in SAM_OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {SAM_OUTPUT_MODES}, got {output_mode!r}")
    masks = result.masks.cpu().numpy()
    if output_mode == "coco_rle":
        segmentations = encode_masks_rle(masks)
    elif output_mode == "uncompressed_rle":
        segmentations = [uncompressed_rle(mask) for mask in masks]
    else:
        segmentations = list(masks)
    areas = masks.sum(axis=(1, 2))
    boxes_xywh = _xyxy_to_xywh(result.boxes.cpu().round().long())
    height, width = result.original_size
    if result.crop_boxes is None:
        crop_boxes = [[0, 0, int(width), int(height)]] * len(segmentations)
    else:
        crop_boxes = _xyxy_to_xywh(result.crop_boxes.cpu().long())
    records = []
    for i, segmentation in enumerate(segmentations):
        records.append(
            {
                "segmentation": segmentation,
                "area": int(areas[i]),
                "bbox": boxes_xywh[i],
                "predicted_iou": float(result.iou_scores[i]),
                "point_coords": [[float(v) for v in result.point_coords[i].tolist()]],
                "stability_score": float(result.stability_scores[i]),
                "crop_box": list(crop_boxes[i]),
            }
        )
    return records


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[int]]:
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def uncompressed_rle(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as an uncompressed COCO RLE (what SAM's ``"uncompressed_rle"`` gives).

    Returns:
        ``{"size": [H, W], "counts": [int, ...]}``: alternating run lengths of 0s and 1s over
        the mask flattened in column-major order, starting with 0s (a first count of 0 when
        pixel (0, 0) is set); the counts sum to H * W.
    """
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": counts}
