"""Tensor-level post-processing of predicted binary masks: quality scores, NMS, clean-up, export.

Everything here is model-agnostic: it takes mask logits or boolean masks and returns scores,
indices or new masks. The automatic mask generator (``uniovseg.inference``) chains these steps
on the masks that survive its predicted-IoU filter only, never on every prediction.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util

__all__ = [
    "encode_masks_rle",
    "mask_areas",
    "mask_nms",
    "masks_to_boxes",
    "pairwise_mask_intersections",
    "remove_small_regions",
    "resize_and_crop",
    "stability_score",
    "suppress_outside_boxes",
]

logger = logging.getLogger(__name__)


# Logit given to pixels outside a box prompt's box: sigmoid() of it is ~0, and it stays finite
# in float16 and bfloat16.
OUTSIDE_BOX_LOGIT = -1.0e4


def suppress_outside_boxes(mask_logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mask logits with every pixel whose centre lies outside its prompt's box turned off.

    A box prompt says the object lies inside the box, so a mask pixel outside it is an error.

    Args:
        mask_logits: float [N, ..., H, W] logits of N box prompts, in a pixel frame.
        boxes: float [N, 4] XYXY boxes in the same frame (pixel i covers [i, i + 1)).

    Returns:
        A new tensor like ``mask_logits``, :data:`OUTSIDE_BOX_LOGIT` outside the boxes.
    """
    if boxes.shape != (mask_logits.shape[0], 4):
        raise ValueError(
            f"need one XYXY box per mask row: boxes {tuple(boxes.shape)} for logits "
            f"{tuple(mask_logits.shape)}"
        )
    height, width = mask_logits.shape[-2:]
    boxes = boxes.to(mask_logits.device, torch.float32)
    ys = torch.arange(height, device=mask_logits.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=mask_logits.device, dtype=torch.float32) + 0.5
    in_y = (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4])  # [N, H]
    in_x = (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3])  # [N, W]
    inside = in_y[:, :, None] & in_x[:, None, :]
    inside = inside.view(inside.shape[0], *([1] * (mask_logits.dim() - 3)), height, width)
    return mask_logits.masked_fill(~inside, OUTSIDE_BOX_LOGIT)


def stability_score(mask_logits: torch.Tensor, offset: float, center: float = 0.0) -> torch.Tensor:
    """How much a mask changes when its binarisation threshold moves by ``+/- offset``.

    ``score = area(logits > center + offset) / area(logits > center - offset)``: the first mask is
    always inside the second, so the ratio is also their IoU, in [0, 1]; 1 means the mask edge is
    sharp. A mask that is empty even at the low threshold gets 0.

    Release note: the authors' demo computes ``area(logits > 0.6) / area(logits > 0.4)`` on the
    mask *logits*, i.e. ``center=0.5, offset=0.1`` here: a band of probabilities between
    sigmoid(0.4) = 0.599 and sigmoid(0.6) = 0.646, which does not straddle the threshold (logit 0,
    probability 0.5) that binarises the returned masks. Read as probabilities, 0.4 / 0.6 would be
    logits -0.405 / +0.405. We centre the band on the binarisation threshold (``center=0``, the
    default); ``center=0.5, offset=0.1`` reproduces the release exactly.

    Args:
        mask_logits: float tensor [..., H, W] of mask logits.
        offset: Half-width of the threshold band in logit units, >= 0.
        center: Centre of the band in logit units (the mask binarisation threshold).

    Returns:
        float32 tensor [...] of scores in [0, 1].
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0 (a half-width in logit units), got {offset}")
    # int32 sums: exact, and half the memory of the default int64 on large batches of masks.
    high = (mask_logits > center + offset).sum(dim=(-2, -1), dtype=torch.int32)
    low = (mask_logits > center - offset).sum(dim=(-2, -1), dtype=torch.int32)
    return high.float() / low.clamp(min=1).float()


def resize_and_crop(
    maps: torch.Tensor, frame_size: tuple[int, int], crop_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear resize of [K, h, w] maps covering a padded frame to ``frame_size``, then the
    top-left ``crop_size`` (the unpadded region).

    Equal to ``F.interpolate(maps[:, None], frame_size, mode="bilinear",
    align_corners=False)[:, 0, :crop_h, :crop_w]`` to the bit, with less work: when the frame
    height is an integer multiple of the maps' (stride-4 logits of a padded input), only the
    input rows that the crop reads are resized. Bilinear weights depend only on the scale, which
    such a crop keeps; it saves the bottom padding (a quarter of the pixels for a 4:3 image in a
    square input). Columns are not cropped: PyTorch's CPU kernel vectorises along the width and
    a narrower output can take a path that rounds differently (1 ulp).

    Args:
        maps: float [K, h, w].
        frame_size: (H, W) the maps cover, e.g. the padded input.
        crop_size: (H_c, W_c) <= frame_size, the region kept.

    Returns:
        float [K, H_c, W_c]; a view of ``maps`` itself when they already have the frame's size.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be [K, h, w], got {tuple(maps.shape)}")
    if crop_size[0] > frame_size[0] or crop_size[1] > frame_size[1]:
        raise ValueError(f"crop_size {tuple(crop_size)} does not fit in frame {tuple(frame_size)}")
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *crop_size))
    if tuple(maps.shape[-2:]) == tuple(frame_size):
        return maps[:, : crop_size[0], : crop_size[1]]  # the identity resize
    rows, out_rows = _input_rows(maps.shape[1], frame_size[0], crop_size[0])
    if rows < maps.shape[1]:
        maps = maps[:, :rows].contiguous()  # the resampling kernel is slower on strided views
    resized = F.interpolate(
        maps[:, None], size=(out_rows, frame_size[1]), mode="bilinear", align_corners=False
    )[:, 0]
    return resized[:, : crop_size[0], : crop_size[1]]


def _input_rows(size_in: int, frame: int, crop: int) -> tuple[int, int]:
    """(input rows to resize, output rows to ask for), see :func:`resize_and_crop`."""
    if frame % size_in != 0:
        return size_in, frame  # a fractional scale: resize everything
    factor = frame // size_in
    # Output o reads input floor((o + 0.5) / factor - 0.5) and the next one: the last output
    # kept, crop - 1, needs input rows up to that + 1.
    last = int(np.floor((crop - 0.5) / factor - 0.5)) + 1
    rows = min(size_in, max(1, last + 1))
    return rows, rows * factor


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of boolean masks, in pixel-edge coordinates.

    A mask covering columns ``c0..c1`` and rows ``r0..r1`` (inclusive) gets the box
    ``(c0, r0, c1 + 1, r1 + 1)``: box width and height are pixel counts, as in COCO's ``bbox``.

    Args:
        masks: bool tensor [K, H, W].

    Returns:
        float32 tensor [K, 4] on the masks' device; all zeros for an empty mask.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {tuple(masks.shape)}")
    num, height, width = masks.shape
    if num == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    rows = masks.any(dim=2)  # [K, H]
    cols = masks.any(dim=1)  # [K, W]
    # First True index from the left / from the right, via argmax on the (flipped) bool rows.
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    nonempty = rows.any(dim=1)
    return boxes * nonempty[:, None]


def mask_areas(masks: torch.Tensor, pixels_per_block: int = 1 << 24) -> torch.Tensor:
    """Pixel counts of bool masks [K, H, W] -> int64 [K].

    Summing a bool tensor converts it to the sum's dtype first; on the 1,600 candidates of a
    20 x 20 grid at 512 x 384 that would be a 2.4 GB int64 copy. On CPU the masks are therefore
    multiplied, reinterpreted as int8 (no copy), by a column of ones (exact int32 counts);
    elsewhere they are summed a block of at most ``pixels_per_block`` pixels (a 128 MB copy by
    default) at a time.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(masks.shape[0], -1)
    if flat.shape[1] < 2**24:  # the int8 path returns float32 counts: exact below 2**24
        ones = torch.ones((1, flat.shape[1]), dtype=torch.bool, device=masks.device)
        counts = _int8_intersections(flat, ones)
        if counts is not None:
            return counts[:, 0].to(torch.int64)
    rows = max(1, pixels_per_block // max(1, flat.shape[1]))
    return torch.cat([block.sum(dim=1, dtype=torch.int64) for block in flat.split(rows)])


def pairwise_mask_intersections(
    masks_a: torch.Tensor, masks_b: torch.Tensor | None = None, chunk_pixels: int = 1 << 16
) -> torch.Tensor:
    """Pixel counts of every pairwise intersection, as a matrix product of flattened masks.

    ``inter = A @ B.T`` with ``A``, ``B`` the [N, H*W] 0/1 matrices. On CPU the bool masks are
    reinterpreted as int8 (no copy) and multiplied by an int8 x int8 -> int32 kernel: exact, and
    about 10x faster than converting them to float. Elsewhere (or without that kernel) the float
    product is accumulated over blocks of ``chunk_pixels`` columns so that only
    [N, chunk_pixels] float copies exist at a time. float32 holds every count exactly while it is
    below 2**24 (a 4096 x 4096 frame).

    Args:
        masks_a: bool tensor [A, H, W].
        masks_b: bool tensor [B, H, W]; ``None`` means ``masks_a`` (then the diagonal = areas).
        chunk_pixels: Pixels per block of the product (memory bound).

    Returns:
        float32 tensor [A, B] on the masks' device.
    """
    if masks_b is None:
        masks_b = masks_a
    if masks_a.dim() != 3 or masks_b.dim() != 3 or masks_a.shape[1:] != masks_b.shape[1:]:
        raise ValueError(
            "masks must be [N, H, W] with the same H, W, got "
            f"{tuple(masks_a.shape)} and {tuple(masks_b.shape)}"
        )
    if chunk_pixels < 1:
        raise ValueError(f"chunk_pixels must be >= 1, got {chunk_pixels}")
    flat_a = masks_a.reshape(masks_a.shape[0], -1)
    flat_b = masks_b.reshape(masks_b.shape[0], -1)
    exact = _int8_intersections(flat_a, flat_b)
    if exact is not None:
        return exact
    inter = torch.zeros(
        flat_a.shape[0], flat_b.shape[0], dtype=torch.float32, device=masks_a.device
    )
    for start in range(0, flat_a.shape[1], chunk_pixels):
        block_a = flat_a[:, start : start + chunk_pixels].to(torch.float32)
        block_b = block_a if masks_b is masks_a else flat_b[:, start : start + chunk_pixels]
        inter.addmm_(block_a, block_b.to(torch.float32).T)
    return inter


def _int8_intersections(flat_a: torch.Tensor, flat_b: torch.Tensor) -> torch.Tensor | None:
    """float32 [A, B] intersection counts from bool [A, N], [B, N] by ``torch._int_mm`` on CPU,
    or None where that kernel is missing or refuses the shapes (the caller then uses floats)."""
    if flat_a.device.type != "cpu" or not hasattr(torch, "_int_mm"):
        return None
    if flat_a.shape[0] == 0 or flat_b.shape[0] == 0 or flat_a.shape[1] >= 2**31:
        return None
    try:
        counts = torch._int_mm(
            flat_a.contiguous().view(torch.int8), flat_b.contiguous().view(torch.int8).T
        )
    except RuntimeError:  # a build without the CPU kernel, or shape limits
        return None
    return counts.to(torch.float32)


def _suppression(
    inter: torch.Tensor,
    areas_high: torch.Tensor,
    areas_low: torch.Tensor,
    iou_threshold: float,
    containment_threshold: float,
) -> torch.Tensor:
    """[A, B] bool: does higher-scored mask ``a`` suppress lower-scored mask ``b``?"""
    union = areas_high[:, None] + areas_low[None, :] - inter
    iou = inter / union.clamp(min=1.0)
    inside = inter / areas_low[None, :].clamp(min=1.0)  # fraction of b lying inside a
    return (iou >= iou_threshold) | (inside >= containment_threshold)


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    containment_threshold: float,
    block_size: int = 128,
    chunk_pixels: int = 1 << 16,
) -> torch.Tensor:
    """Greedy, containment-aware non-maximum suppression of binary masks.

    Masks are visited by decreasing score; a visited mask that is still alive removes every
    lower-scored mask ``j`` with ``IoU(i, j) >= iou_threshold`` **or**
    ``|i & j| / |j| >= containment_threshold`` (most of ``j`` lies inside ``i``). The second rule
    removes a small part inside a bigger, better-scored whole, which IoU alone would keep
    (release: IoU 0.5, containment 0.7, on masks at half the input resolution). A mask is never
    removed by a lower-scored one, even if it lies inside it.

    Exact greedy NMS only ever needs the overlaps of each candidate with the masks that are
    *kept*, so candidates are processed in score-ordered blocks of ``block_size``: one matrix
    product gives the block's intersections with every mask kept so far (a candidate suppressed
    there is gone), a second one the intersections inside the block. The pixel work is then about
    K x (kept + block_size) x H x W instead of K x K x H x W for the full matrix, a large saving
    when many grid prompts find the same few objects. Only the decisions inside a block are a
    Python loop: whether mask ``i`` may suppress others depends on whether ``i`` itself survived,
    so greedy NMS is inherently sequential (torchvision's box NMS has the same loop in C++). The
    loop runs on a CPU copy of the block's [B, B] boolean matrix with one vectorised row update
    per surviving mask that suppresses something.

    Args:
        masks: bool tensor [K, H, W].
        scores: float tensor [K]; higher is better. Ties keep the input order.
        iou_threshold: Suppress when the mask IoU is at least this (in [0, 1]).
        containment_threshold: Suppress when at least this fraction of the lower-scored mask lies
            inside the higher-scored one (in [0, 1]; > 1 disables the rule).
        block_size: Candidates per block (the result does not depend on it).
        chunk_pixels: Pixel block of the intersection products (memory bound).

    Returns:
        int64 tensor [K'] of kept indices into ``masks``, by decreasing score, on the masks'
        device. Empty masks are never suppressed by the containment rule (their area is 0).
    """
    if masks.dim() != 3 or scores.shape != masks.shape[:1]:
        raise ValueError(
            f"masks must be [K, H, W] and scores [K], got {tuple(masks.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    num = masks.shape[0]
    if num == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = torch.argsort(scores, descending=True, stable=True)
    areas = mask_areas(masks).to(torch.float32)
    thresholds = (iou_threshold, containment_threshold)

    kept = torch.zeros(0, dtype=torch.long, device=masks.device)  # original indices
    for start in range(0, num, block_size):
        block = order[start : start + block_size]
        if kept.numel():
            # Candidates suppressed by an already kept (hence higher-scored) mask are gone.
            inter = pairwise_mask_intersections(masks[kept], masks[block], chunk_pixels)
            alive = ~_suppression(inter, areas[kept], areas[block], *thresholds).any(dim=0)
            block = block[alive]
            if block.numel() == 0:
                continue
        inter = pairwise_mask_intersections(masks[block], chunk_pixels=chunk_pixels)
        suppress = _suppression(inter, areas[block], areas[block], *thresholds)
        # Inside the block, only an earlier (higher-scored) mask may suppress a later one.
        suppress = torch.triu(suppress, diagonal=1).cpu().numpy()
        removed = np.zeros(block.numel(), dtype=bool)
        for i in np.flatnonzero(suppress.any(axis=1)):
            if not removed[i]:
                removed |= suppress[i]
        survivors = torch.from_numpy(np.flatnonzero(~removed)).to(block.device)
        kept = torch.cat([kept, block[survivors]])
    return kept


def remove_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fills holes and removes islands smaller than ``min_area`` pixels (8-connectivity).

    Holes are background components smaller than ``min_area`` (including small background
    pockets at the image border); islands are foreground components smaller than ``min_area``.
    If every island is small, the largest one is kept so that a non-empty mask never vanishes.

    Args:
        mask: bool array [H, W].
        min_area: Area threshold in pixels; <= 0 returns the mask unchanged.

    Returns:
        ``(new_mask, changed)``: a bool array [H, W] (a new array) and whether any pixel changed.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D [H, W] array, got shape {mask.shape}")
    mask = mask.astype(bool, copy=True)
    if min_area <= 0:
        return mask, False
    changed = False
    for fill_holes in (True, False):
        region = (~mask if fill_holes else mask).astype(np.uint8)
        num_labels, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the complement of `region`
        small = np.flatnonzero(areas < min_area) + 1
        if small.size == 0:
            continue
        if fill_holes:
            mask[np.isin(labels, small)] = True
        else:
            if small.size == num_labels - 1:  # every island is small: keep the largest one
                small = small[small != int(np.argmax(areas)) + 1]
            if small.size == 0:
                continue
            mask[np.isin(labels, small)] = False
        changed = True
    return mask, changed


def encode_masks_rle(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """COCO run-length encoding of boolean masks (pycocotools), ready for JSON.

    Args:
        masks: bool tensor or array [K, H, W].

    Returns:
        K dicts ``{"size": [H, W], "counts": str}`` (compressed COCO RLE; ``counts`` decoded from
        bytes to ``str`` so that ``json.dump`` accepts it; pycocotools decodes either form).
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants a Fortran-ordered uint8 [H, W, K] array.
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
