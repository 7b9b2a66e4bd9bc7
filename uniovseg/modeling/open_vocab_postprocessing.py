"""Semantic and panoptic outputs from K classified masks, in detectron2's formats.

Inputs are the masks of one image at its original size (soft probabilities in [0, 1]; see
:func:`resize_mask_logits` for logits predicted on the padded network input), their class
probabilities ``[K, C]`` (e.g. from :meth:`~uniovseg.modeling.text_classifier.TextClassifier.
predict`) and optionally their quality scores (the predicted IoU). Outputs:

* ``sem_seg``: ``[C, H, W]`` per-class scores, ``sum_k mask_prob_k x class_prob_k`` (Mask2Former's
  semantic inference), optionally weighted by each mask's quality score;
* ``panoptic_seg``: ``(int32 [H, W] segment ids, segments_info)``, Mask2Former's panoptic
  inference with thing/stuff from the dataset's metadata, a score threshold, an overlap
  threshold and stuff merged per class.

Classes are contiguous indices into the vocabulary (``category_id`` too); detectron2's evaluators
map them to dataset ids through the metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from .mask_postprocessing import mask_areas, resize_and_crop

__all__ = [
    "OpenVocabPostprocessor",
    "panoptic_inference",
    "resize_mask_logits",
    "semantic_inference",
    "semantic_labels",
    "thing_classes_from_metadata",
]

logger = logging.getLogger(__name__)

# A pixel belongs to a mask's original region when its probability is >= this (Mask2Former).
_MASK_BINARIZE_THRESHOLD = 0.5


def resize_mask_logits(
    mask_logits: torch.Tensor,
    *,
    valid_size: tuple[int, int],
    output_size: tuple[int, int],
    padded_size: tuple[int, int] | None = None,
    chunk_size: int = 32,
) -> torch.Tensor:
    """Mask logits predicted on the (padded) network input -> logits at the original image size.

    Two geometries, bilinear in logit space (``align_corners=False``) in both:

    * the release's (the valid region's longest side fills a square padded input, as
      ``MODEL.UNIOVSEG.TEST.RESIZE_MODE: longest_side`` makes it): upsample to the padded
      square, scale that square uniformly to the original's longest side ``L`` and keep the
      top-left ``(H0, W0)``, as the release's ``sem_seg_postprocess`` does. Its masks are then
      ours, pixel for pixel; cropping the valid region first (below) would stretch it by its
      rounding, up to ~0.7 px at the far edge of a 4:3 photo;
    * otherwise (``shortest_edge`` test resizing, no padding): detectron2's
      ``sem_seg_postprocess`` as Mask2Former and FC-CLIP use it: upsample to the padded input,
      crop the valid region, resize it to the original size.

    Args:
        mask_logits: [K, h, w] float logits covering the whole padded input (any stride).
        valid_size: (h, w) of the resized image inside the padded input, in input pixels
            (an :class:`~uniovseg.modeling.image_frame.ImageFrame`'s ``valid_size``).
        output_size: (H, W) of the original image.
        padded_size: (S_h, S_w) of the padded input; None when there is no padding
            (``valid_size`` is then the size the logits cover).
        chunk_size: Masks resized at a time (bounds the memory of the padded-size step).

    Returns:
        [K, H, W] logits at the original size (apply ``sigmoid`` for probabilities).
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [K, h, w], got {tuple(mask_logits.shape)}")
    padded = tuple(padded_size) if padded_size is not None else tuple(valid_size)
    if valid_size[0] > padded[0] or valid_size[1] > padded[1]:
        raise ValueError(f"valid_size {valid_size} does not fit in padded_size {padded}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    release_geometry = padded[0] == padded[1] and max(valid_size) == padded[0]
    out = mask_logits.new_empty((mask_logits.shape[0], *output_size))
    for start in range(0, mask_logits.shape[0], chunk_size):
        chunk = mask_logits[start : start + chunk_size]
        if release_geometry:
            chunk = _scale_square_and_crop(chunk, padded[0], tuple(output_size))
        else:
            chunk = resize_and_crop(chunk, padded, valid_size)
            if tuple(valid_size) != tuple(output_size):  # else the second resize is the identity
                chunk = F.interpolate(
                    chunk[:, None], size=tuple(output_size), mode="bilinear", align_corners=False
                )[:, 0]
        out[start : start + chunk_size] = chunk
    return out


def _scale_square_and_crop(
    mask_logits: torch.Tensor, side: int, output_size: tuple[int, int]
) -> torch.Tensor:
    """[K, h, w] logits over a ``side`` x ``side`` padded input -> [K, H0, W0]: the release's
    ``interpolate(interpolate(x, (side, side)), (L, L))[:, :H0, :W0]`` with L = max(H0, W0),
    bit for bit, computing only the rows and columns that the crop keeps (for a 4:3 photo a
    quarter of the L x L square is padding).

    Bilinear output o reads input ``floor((o + 0.5) / s - 0.5)`` and the next one, s = L / side.
    The second resize is ATen's ``upsample_bilinear2d`` with an explicit output size *and* the
    scale: ``F.interpolate`` accepts only one of them, and derives the scale from a cut input's
    size (``size=``) or rounds it differently (``scale_factor=``), which moves pixels."""
    height, width = output_size
    longest = max(height, width)
    scale = longest / side

    def rows_read(extent: int) -> int:
        last_read = int(np.floor((extent - 0.5) / scale - 0.5)) + 1
        return min(side, last_read + 2)  # one spare row against rounding at the edge

    rows, cols = rows_read(height), rows_read(width)
    square = resize_and_crop(mask_logits, (side, side), (rows, cols))
    # ATen turns a given scale into 1 / scale (in double, then float32); without it, it uses
    # float32(side) / float32(L). Pass the scale whose inverse is exactly that float.
    aten_scale = 1.0 / float(np.float32(side) / np.float32(longest))
    # Where a dimension's input and output sizes are equal ATen copies it and ignores the scale:
    # ask for one more output row/column there and drop it.
    out_rows = height + (rows == height and longest != side)
    out_cols = width + (cols == width and longest != side)
    return torch.ops.aten.upsample_bilinear2d(
        square[:, None], [out_rows, out_cols], False, aten_scale, aten_scale
    )[:, 0, :height, :width]


def semantic_inference(
    mask_probs: torch.Tensor,
    class_probs: torch.Tensor,
    *,
    mask_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class score maps: ``sem_seg[c] = sum_k w_k x class_probs[k, c] x mask_probs[k]``.

    Args:
        mask_probs: [K, H, W] mask probabilities in [0, 1] at the output size.
        class_probs: [K, C] class probabilities of the masks.
        mask_scores: Optional [K] quality scores (e.g. predicted IoU) used as weights ``w_k``;
            None: ``w_k = 1`` (Mask2Former).

    Returns:
        [C, H, W] float scores (detectron2's ``sem_seg``; ``argmax(0)`` gives labels). All zeros
        when K = 0. Memory is C x H x W floats; use :func:`semantic_labels` for labels only.
    """
    weights = _check_inputs(mask_probs, class_probs, mask_scores)
    return torch.einsum("kc,khw->chw", weights, mask_probs.to(weights.dtype))


def semantic_labels(
    mask_probs: torch.Tensor,
    class_probs: torch.Tensor,
    *,
    mask_scores: torch.Tensor | None = None,
    class_chunk_size: int = 64,
) -> torch.Tensor:
    """``semantic_inference(...).argmax(0)`` without materialising ``[C, H, W]``.

    Classes are scored ``class_chunk_size`` at a time (ADE20K-847 at 800 x 1333 would need
    3.6 GB for the full score map). Ties go to the lower class index, as ``argmax``.

    Returns:
        [H, W] int64 class indices (all 0 when K = 0).
    """
    weights = _check_inputs(mask_probs, class_probs, mask_scores)
    if class_chunk_size < 1:
        raise ValueError(f"class_chunk_size must be >= 1, got {class_chunk_size}")
    height, width = mask_probs.shape[-2:]
    masks = mask_probs.to(weights.dtype)
    best_score = weights.new_full((height, width), float("-inf"))
    best_label = torch.zeros((height, width), dtype=torch.long, device=weights.device)
    for start in range(0, weights.shape[1], class_chunk_size):
        scores = torch.einsum("kc,khw->chw", weights[:, start : start + class_chunk_size], masks)
        chunk_best, chunk_label = scores.max(dim=0)
        better = chunk_best > best_score
        best_score = torch.where(better, chunk_best, best_score)
        best_label = torch.where(better, chunk_label + start, best_label)
    return best_label


def panoptic_inference(
    mask_probs: torch.Tensor,
    class_probs: torch.Tensor,
    *,
    thing_classes: Collection[int],
    mask_scores: torch.Tensor | None = None,
    void_probs: torch.Tensor | None = None,
    score_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """Mask2Former's panoptic assembly of K classified masks.

    1. Each mask's label is its most probable class and its score that probability, times its
       quality score when ``mask_scores`` is given. Masks whose void probability beats every
       class, or whose score is not above ``score_threshold``, are dropped.
    2. Each pixel goes to the kept mask with the highest ``score x mask_prob`` (ties: the earlier
       mask); it is painted only where that mask's probability is >= 0.5.
    3. A mask is kept when the pixels it wins (``argmax == k``) cover at least
       ``overlap_threshold`` of its original area (``mask_prob >= 0.5``), and it paints at least
       one pixel. Masks are visited in input order.
    4. Stuff classes get one segment per class (later masks of the class join the first one's
       segment); every thing mask is its own segment (instance).

    Args:
        mask_probs: [K, H, W] mask probabilities in [0, 1] at the original image size.
        class_probs: [K, C] class probabilities (rows may sum to < 1 when a void class took
            the rest).
        thing_classes: Contiguous indices of the thing classes (see
            :func:`thing_classes_from_metadata`); every other class is stuff.
        mask_scores: Optional [K] quality scores (predicted IoU) multiplied into the scores.
        void_probs: Optional [K] no-class probabilities (``RegionClassification.void_probs``).
        score_threshold: Keep masks with score > this (Mask2Former's object-mask threshold).
        overlap_threshold: Minimum fraction of a mask's area that must survive step 2.

    Returns:
        ``panoptic_seg``: int32 [H, W], 0 = no segment, segments numbered 1, 2, ... and
        ``segments_info``: one dict per segment with ``id`` (int, its value in
        ``panoptic_seg``), ``category_id`` (int, contiguous class index), ``isthing`` (bool)
        and ``score`` (float; for merged stuff, the best score of its masks). K = 0 (or no mask
        kept) gives all zeros and ``[]``.
    """
    weights = _check_inputs(mask_probs, class_probs, None)
    if not 0.0 <= overlap_threshold <= 1.0:
        raise ValueError(f"overlap_threshold must be in [0, 1], got {overlap_threshold}")
    num_masks, num_classes = class_probs.shape
    thing_set = {int(c) for c in thing_classes}
    if any(not 0 <= c < num_classes for c in thing_set):
        raise ValueError(
            f"thing_classes {sorted(thing_set)} must be class indices in [0, {num_classes})"
        )
    height, width = mask_probs.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    if num_masks == 0 or num_classes == 0:
        return panoptic_seg, []

    scores, labels = weights.max(dim=-1)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if void_probs is not None:
        if void_probs.shape != (num_masks,):
            raise ValueError(f"void_probs must be [K]={num_masks}, got {tuple(void_probs.shape)}")
        keep &= void_probs.to(scores.dtype) <= scores
    if mask_scores is not None:
        scores = scores * _check_scores(mask_scores, num_masks).to(scores.dtype)
    keep &= scores > score_threshold
    if not bool(keep.any()):
        return panoptic_seg, []

    kept_scores, kept_labels = scores[keep], labels[keep]
    kept_masks = mask_probs[keep].to(kept_scores.dtype)
    num_kept = kept_masks.shape[0]
    winner = (kept_scores[:, None, None] * kept_masks).argmax(dim=0)  # [H, W]
    # Per-mask pixel counts without a loop over masks: winners are unique per pixel, so
    # "pixels mask k wins" and "pixels it wins where its own probability is >= 0.5 (the
    # region it paints)" are bincounts of ``winner``.
    original_area = mask_areas(kept_masks >= _MASK_BINARIZE_THRESHOLD)
    paints = kept_masks.gather(0, winner[None])[0] >= _MASK_BINARIZE_THRESHOLD  # [H, W]
    won_area = torch.bincount(winner.flatten(), minlength=num_kept)
    region_area = torch.bincount(winner[paints], minlength=num_kept)
    accepted = (
        (original_area > 0)
        & (region_area > 0)
        & (won_area.double() / original_area.clamp(min=1).double() >= overlap_threshold)
    )

    # Segment ids in mask order; a stuff class keeps the id of its first accepted mask.
    segment_of_mask = [0] * num_kept
    segments_info: list[dict] = []
    stuff_segments: dict[int, dict] = {}
    labels_list, scores_list = kept_labels.tolist(), kept_scores.tolist()
    for k in torch.nonzero(accepted).flatten().tolist():
        label, score = int(labels_list[k]), float(scores_list[k])
        is_thing = label in thing_set
        if not is_thing and label in stuff_segments:
            segment = stuff_segments[label]
            segment["score"] = max(segment["score"], score)
        else:
            segment = {"id": len(segments_info) + 1, "category_id": label, "isthing": is_thing}
            segment["score"] = score
            segments_info.append(segment)
            if not is_thing:
                stuff_segments[label] = segment
        segment_of_mask[k] = segment["id"]
    segment_ids = torch.tensor(segment_of_mask, dtype=torch.int32, device=mask_probs.device)
    panoptic_seg = torch.where(paints, segment_ids[winner], panoptic_seg)
    return panoptic_seg, segments_info


def thing_classes_from_metadata(metadata) -> set[int]:
    """Contiguous thing-class indices of a detectron2 dataset's metadata.

    Reads ``thing_dataset_id_to_contiguous_id`` (its values, Mask2Former's convention for
    panoptic datasets, where thing and stuff classes share one contiguous index space); a
    dataset without it (semantic-only) has no thing class.
    """
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
    return {int(v) for v in mapping.values()}


class OpenVocabPostprocessor:
    """The thresholds of ``MODEL.UNIOVSEG.OPEN_VOCAB`` applied to one image's masks."""

    @configurable
    def __init__(
        self,
        *,
        score_threshold: float = 0.0,
        overlap_threshold: float = 0.8,
        semantic_use_mask_scores: bool = False,
        panoptic_use_mask_scores: bool = False,
    ):
        """
        Args:
            score_threshold: Panoptic: keep masks with score > this.
            overlap_threshold: Panoptic: minimum surviving fraction of a mask's area.
            semantic_use_mask_scores: Weight ``sem_seg`` by the masks' quality scores.
            panoptic_use_mask_scores: Multiply panoptic scores by the masks' quality scores.
        """
        if not 0.0 <= overlap_threshold <= 1.0:
            raise ValueError(f"overlap_threshold must be in [0, 1], got {overlap_threshold}")
        self.score_threshold = float(score_threshold)
        self.overlap_threshold = float(overlap_threshold)
        self.semantic_use_mask_scores = bool(semantic_use_mask_scores)
        self.panoptic_use_mask_scores = bool(panoptic_use_mask_scores)

    @classmethod
    def from_config(cls, cfg) -> dict:
        ov = cfg.MODEL.UNIOVSEG.OPEN_VOCAB
        return {
            "score_threshold": ov.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": ov.OVERLAP_THRESHOLD,
            "semantic_use_mask_scores": ov.SEMANTIC_USE_MASK_SCORES,
            "panoptic_use_mask_scores": ov.PANOPTIC_USE_MASK_SCORES,
        }

    def semantic(
        self,
        mask_probs: torch.Tensor,
        class_probs: torch.Tensor,
        mask_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sem_seg`` [C, H, W]; see :func:`semantic_inference`."""
        scores = mask_scores if self.semantic_use_mask_scores else None
        return semantic_inference(mask_probs, class_probs, mask_scores=scores)

    def semantic_labels(
        self,
        mask_probs: torch.Tensor,
        class_probs: torch.Tensor,
        mask_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``semantic(...).argmax(0)``, int64 [H, W], without the [C, H, W] map; see
        :func:`semantic_labels`."""
        scores = mask_scores if self.semantic_use_mask_scores else None
        return semantic_labels(mask_probs, class_probs, mask_scores=scores)

    def panoptic(
        self,
        mask_probs: torch.Tensor,
        class_probs: torch.Tensor,
        *,
        thing_classes: Collection[int],
        mask_scores: torch.Tensor | None = None,
        void_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """``panoptic_seg`` (ids, segments_info); see :func:`panoptic_inference`."""
        return panoptic_inference(
            mask_probs,
            class_probs,
            thing_classes=thing_classes,
            mask_scores=mask_scores if self.panoptic_use_mask_scores else None,
            void_probs=void_probs,
            score_threshold=self.score_threshold,
            overlap_threshold=self.overlap_threshold,
        )


def _check_scores(mask_scores: torch.Tensor, num_masks: int) -> torch.Tensor:
    if mask_scores.shape != (num_masks,):
        raise ValueError(f"mask_scores must be [K]={num_masks}, got {tuple(mask_scores.shape)}")
    return mask_scores


def _check_inputs(
    mask_probs: torch.Tensor, class_probs: torch.Tensor, mask_scores: torch.Tensor | None
) -> torch.Tensor:
    """Validates shapes; returns the per-mask class weights [K, C] (float)."""
    if mask_probs.dim() != 3 or class_probs.dim() != 2:
        raise ValueError(
            "expected mask_probs [K, H, W] and class_probs [K, C], got "
            f"{tuple(mask_probs.shape)} and {tuple(class_probs.shape)}"
        )
    if mask_probs.shape[0] != class_probs.shape[0]:
        raise ValueError(
            f"mask_probs has {mask_probs.shape[0]} masks but class_probs {class_probs.shape[0]}"
        )
    weights = class_probs if class_probs.is_floating_point() else class_probs.float()
    if mask_scores is not None:
        weights = weights * _check_scores(mask_scores, class_probs.shape[0]).to(weights)[:, None]
    return weights
