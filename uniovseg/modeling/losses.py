"""Stage-1 loss terms as functions: point-sampled mask BCE and dice, and the IoU-head loss.

Every function returns one value per matched pair; the criterion sums them and divides by the
number of pairs (Mask2Former's normalisation), so the weighting lives in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sample_masks_at_points,
)

__all__ = [
    "dice_loss",
    "downsample_masks",
    "iou_head_loss",
    "mask_iou",
    "point_sampled_mask_losses",
    "sigmoid_bce_loss",
]


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over points.

    Args:
        logits: [N, K] prediction logits.
        targets: [N, K] targets in [0, 1].

    Returns:
        [N] mean BCE per row.
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` with ``p = sigmoid``.

    Args:
        logits: [N, K] prediction logits.
        targets: [N, K] targets in [0, 1].

    Returns:
        [N] dice loss per row, in [0, 1).
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def point_sampled_mask_losses(
    mask_logits: torch.Tensor,
    gt_masks: torch.Tensor,
    gt_idx: torch.Tensor,
    *,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    mask_stride: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and dice of matched predictions on importance-sampled points (Mask2Former).

    Points are drawn per prediction with PointRend's uncertainty sampler (uncertainty =
    ``-|logit|``); predictions are sampled bilinearly from the stride-``mask_stride`` logits and
    targets bilinearly from the full-resolution ground truth at the same places.

    Args:
        mask_logits: [N, h, w] logits of the N matched predictions.
        gt_masks: bool [G, H, W] ground truths of the image, in the input frame
            (H <= h * mask_stride, W <= w * mask_stride; the rest of the frame is background).
        gt_idx: int64 [N], the gt matched to each prediction.
        num_points: Points per prediction (release: 12544).
        oversample_ratio: Candidate points per kept point (release: 3).
        importance_sample_ratio: Fraction of points chosen by uncertainty (release: 0.75).
        mask_stride: Stride of the logits w.r.t. the input frame.

    Returns:
        ``(bce, dice)``, each [N], differentiable w.r.t. ``mask_logits``.
    """
    height, width = mask_logits.shape[-2:]
    logits = mask_logits.unsqueeze(1)  # [N, 1, h, w]
    with torch.no_grad():
        coords = get_uncertain_point_coords_with_randomness(
            logits.detach().float(),
            calculate_uncertainty,
            num_points,
            oversample_ratio,
            importance_sample_ratio,
        )
        targets = sample_masks_at_points(
            gt_masks, gt_idx, coords, frame_size=(height * mask_stride, width * mask_stride)
        )
    point_logits = point_sample(logits.float(), coords)[:, 0]  # [N, K]
    return sigmoid_bce_loss(point_logits, targets), dice_loss(point_logits, targets)


@torch.no_grad()
def downsample_masks(
    masks: torch.Tensor, size: tuple[int, int], stride: int, chunk: int = 8
) -> torch.Tensor:
    """Binary masks at a coarser stride: a cell is on when at least half of its pixels are.

    Args:
        masks: bool [G, H, W] in the top-left of a frame of ``size * stride`` pixels.
        size: (h, w) of the output grid.
        stride: Pixels per output cell side.
        chunk: Masks converted to float at a time (bounds memory at 1024 px).

    Returns:
        bool [G, h, w].
    """
    num, height, width = masks.shape
    out_h, out_w = size
    frame_h, frame_w = out_h * stride, out_w * stride
    if height > frame_h or width > frame_w:
        raise ValueError(f"masks {height}x{width} exceed the {frame_h}x{frame_w} frame")
    out = torch.zeros(num, out_h, out_w, dtype=torch.bool, device=masks.device)
    for start in range(0, num, chunk):
        part = masks[start : start + chunk].float()
        part = F.pad(part, (0, frame_w - width, 0, frame_h - height))
        out[start : start + chunk] = F.avg_pool2d(part.unsqueeze(1), stride)[:, 0] >= 0.5
    return out


@torch.no_grad()
def mask_iou(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """IoU of paired binary masks; an empty union gives 0.

    Args:
        pred_masks: bool [N, h, w].
        gt_masks: bool [N, h, w].

    Returns:
        float32 [N] in [0, 1].
    """
    inter = (pred_masks & gt_masks).flatten(1).sum(1).float()
    union = (pred_masks | gt_masks).flatten(1).sum(1).float()
    return inter / union.clamp(min=1.0)


def iou_head_loss(iou_logits: torch.Tensor, iou_targets: torch.Tensor) -> torch.Tensor:
    """Squared error between the predicted IoU ``sigmoid(iou_logit)`` and the real IoU.

    Args:
        iou_logits: [N] IoU-head logits of the matched predictions.
        iou_targets: [N] detached IoU of each thresholded prediction with its gt.

    Returns:
        [N] squared errors.
    """
    return (iou_logits.float().sigmoid() - iou_targets.detach()) ** 2
