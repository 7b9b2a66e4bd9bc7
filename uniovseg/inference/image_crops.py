"""Image crops for automatic mask generation (segment-anything's ``crop_n_layers``).

Crop layer 0 is the whole image; layer ``i >= 1`` splits it into ``2**i x 2**i`` overlapping
crops. Each crop is segmented as an image of its own; its masks that run into a cut (a crop
edge that is not an image edge) are dropped, the others are brought back to the whole image,
and masks found again in several crops are removed by box NMS that prefers smaller crops.

Boxes here are XYXY in original-image pixels with exclusive ends (``x1`` = last column + 1), the
same convention as :attr:`AutomaticMaskResult.boxes`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import product
from typing import NamedTuple

import torch
import torchvision

from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult

__all__ = [
    "ImageCrop",
    "build_image_crops",
    "cat_results",
    "crop_nms",
    "masks_near_crop_edge",
    "uncrop_result",
]


class ImageCrop(NamedTuple):
    """One crop of an image.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in original pixels, ends exclusive: the crop is
            ``image[y0:y1, x0:x1]``.
        layer: Crop layer, 0 for the whole image.
    """

    box: tuple[int, int, int, int]
    layer: int


def build_image_crops(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> list[ImageCrop]:
    """The whole image, then the crops of layers 1..``n_layers``, as segment-anything makes them.

    In layer ``i`` there are ``n = 2**i`` crops per side, overlapping by
    ``int(overlap_ratio * short_side * 2 / n)`` pixels (the overlap shrinks as crops get
    smaller); each crop is ``ceil((overlap * (n - 1) + side) / n)`` long, starts at
    ``k * (length - overlap)`` and is clipped to the image. Crops are listed column by column
    (x outer, y inner), as in segment-anything.

    Args:
        image_size: ``(H, W)`` of the original image.
        n_layers: Number of crop layers after the whole image, >= 0.
        overlap_ratio: Overlap of two neighbouring layer-1 crops as a fraction of the image's
            short side, in [0, 1).

    Returns:
        ``1 + sum(4**i for i in 1..n_layers)`` crops at most; crops that would be empty (on an
        image only a few pixels wide) are left out.
    """
    height, width = int(image_size[0]), int(image_size[1])
    crops = [ImageCrop((0, 0, width, height), 0)]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        x_starts = [(crop_w - overlap) * k for k in range(per_side)]
        y_starts = [(crop_h - overlap) * k for k in range(per_side)]
        for x0, y0 in product(x_starts, y_starts):
            box = (x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height))
            if box[0] < box[2] and box[1] < box[3]:
                crops.append(ImageCrop(box, layer))
    return crops


def masks_near_crop_edge(
    boxes: torch.Tensor,
    crop_box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    margin: float,
) -> torch.Tensor:
    """Which masks of a crop come within ``margin`` pixels of a cut (segment-anything's rule).

    A box side within ``margin`` of the crop's side of the same name, where that side is not
    within ``margin`` of the image's, marks a mask that the cut probably truncated. For the
    whole-image crop no mask is marked.

    Args:
        boxes: float [K, 4] XYXY mask boxes in the crop's pixels (ends exclusive).
        crop_box: XYXY of the crop in original pixels.
        image_size: ``(H, W)`` of the original image.
        margin: Tolerance in pixels, >= 0 (segment-anything: 20).

    Returns:
        bool [K], True for the masks to drop.
    """
    x0, y0, _, _ = crop_box
    offset = torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=boxes.device)
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.tensor(
        [0, 0, image_size[1], image_size[0]], dtype=torch.float32, device=boxes.device
    )
    # segment-anything compares its inclusive boxes (x1 = last column) with the crop's
    # exclusive ends; both sides exclusive here, so the tolerance is the same on every side.
    boxes = boxes.float() + offset
    near_cut = ((boxes - crop).abs() <= margin) & ~((boxes - image).abs() <= margin)
    return near_cut.any(dim=1)


def uncrop_result(
    result: AutomaticMaskResult, crop_box: tuple[int, int, int, int], image_size: tuple[int, int]
) -> AutomaticMaskResult:
    """A crop's masks in the whole image's frame.

    Masks (and ``mask_probs``) are zero-padded to ``image_size``, boxes and point prompts
    shifted by the crop's origin, and ``crop_boxes`` set. The whole-image crop's result is
    returned as it is.

    Args:
        result: Masks of the crop image ``image[y0:y1, x0:x1]``.
        crop_box: XYXY of the crop in original pixels.
        image_size: ``(H, W)`` of the original image.
    """
    height, width = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return result
    if tuple(result.original_size) != (y1 - y0, x1 - x0):
        raise ValueError(
            f"a result of size {result.original_size} cannot come from the crop {crop_box}"
        )
    device = result.masks.device

    def pad(crop_masks: torch.Tensor) -> torch.Tensor:
        full = crop_masks.new_zeros((crop_masks.shape[0], height, width))
        full[:, y0:y1, x0:x1] = crop_masks
        return full

    offset = torch.tensor([x0, y0], dtype=result.point_coords.dtype, device=device)
    crop_boxes = torch.tensor([list(crop_box)], dtype=torch.long, device=device)
    return replace(
        result,
        masks=pad(result.masks),
        mask_probs=pad(result.mask_probs) if result.mask_probs is not None else None,
        boxes=result.boxes + offset.repeat(2).to(result.boxes.dtype),
        point_coords=result.point_coords + offset,
        crop_boxes=crop_boxes.expand(len(result), 4).clone(),
        original_size=(height, width),
    )


def cat_results(results: list[AutomaticMaskResult]) -> AutomaticMaskResult:
    """The masks of several crops of one image, one result (in the given order).

    Every result must be in the whole image's frame (see :func:`uncrop_result`); the
    whole-image result gets its ``crop_boxes`` filled in.
    """
    height, width = results[0].original_size
    whole = [0, 0, width, height]
    filled = []
    for result in results:
        if tuple(result.original_size) != (height, width):
            raise ValueError("results must all be in the whole image's frame")
        if result.crop_boxes is None:
            boxes = torch.tensor([whole], dtype=torch.long, device=result.masks.device)
            result = replace(result, crop_boxes=boxes.expand(len(result), 4).clone())
        filled.append(result)
    with_probs = [r.mask_probs is not None for r in filled]
    if any(with_probs) and not all(with_probs):
        raise ValueError("either every result has mask_probs or none has")
    per_mask = {
        name: torch.cat([getattr(r, name) for r in filled])
        for name in (
            "masks",
            "iou_scores",
            "stability_scores",
            "point_coords",
            "boxes",
            "mask_logits_lowres",
            "point_indices",
            "granularity_indices",
            "crop_boxes",
        )
    }
    if all(with_probs):
        per_mask["mask_probs"] = torch.cat([r.mask_probs for r in filled])
    return replace(filled[0], **per_mask)


def crop_nms(result: AutomaticMaskResult, iou_threshold: float) -> torch.Tensor:
    """Removes masks found again in another crop: greedy box NMS over all crops' masks.

    As in segment-anything, masks from smaller crops come first (they saw the object at a
    higher resolution), and a box whose IoU with an earlier kept box is above
    ``iou_threshold`` is removed. Between crops of the same area the earlier crop comes first,
    and within a crop the result's order (decreasing predicted IoU).

    Args:
        result: Masks of all crops, with ``crop_boxes`` (see :func:`cat_results`).
        iou_threshold: Box IoU above which a mask is removed; above 1 removes none.

    Returns:
        int64 indices of the kept masks, by decreasing predicted IoU (ties in priority order).
    """
    device = result.boxes.device
    if len(result) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    crop_boxes = result.crop_boxes.float()
    crop_areas = (crop_boxes[:, 2] - crop_boxes[:, 0]) * (crop_boxes[:, 3] - crop_boxes[:, 1])
    priority = torch.sort(crop_areas, stable=True).indices
    # Distinct scores in priority order: torchvision does not specify how it orders ties.
    scores = torch.empty(len(result), dtype=torch.float32, device=device)
    scores[priority] = torch.arange(len(result), 0, -1, dtype=torch.float32, device=device)
    keep = torchvision.ops.nms(result.boxes.float(), scores, float(iou_threshold))
    order = torch.sort(result.iou_scores[keep], descending=True, stable=True).indices
    return keep[order]
