"""Point sampling of mask logits and binary masks (PointRend / Mask2Former style).

Mask losses and matching costs are computed on a few thousand points per mask instead of every
pixel. Coordinates are normalised to [0, 1] over a frame, (x, y) order, with the
``align_corners=False`` convention: 0 is the left edge of the first pixel, 1 the right edge of
the last one, so the same normalised point addresses the same place in a stride-4 logit map and
in a full-resolution mask of the same frame.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "point_sample",
    "sample_masks_at_points",
]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly samples feature maps at normalised points (``grid_sample`` wrapper).

    Args:
        input: [N, C, H, W] maps.
        point_coords: [N, P, 2] (x, y) in [0, 1] over the map's frame.
        **kwargs: Passed to ``F.grid_sample`` (``align_corners`` defaults to False; points
            outside the frame read zeros).

    Returns:
        [N, C, P] sampled values (differentiable w.r.t. ``input``).
    """
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(f"point_coords must be [N, P, 2], got {tuple(point_coords.shape)}")
    kwargs.setdefault("align_corners", False)
    grid = (2.0 * point_coords - 1.0).unsqueeze(2).to(input.dtype)  # [N, P, 1, 2] in [-1, 1]
    return F.grid_sample(input, grid, **kwargs).squeeze(3)


def sample_masks_at_points(
    masks: torch.Tensor,
    mask_idx: torch.Tensor,
    point_coords: torch.Tensor,
    frame_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Bilinearly samples selected masks of a stack at points, without copying whole masks.

    Equivalent to ``point_sample(masks[mask_idx, None].float(), coords)`` but reads only the 4
    neighbour pixels of each point, so it works on full-resolution bool ground truths (e.g. 40
    masks of 1024x1024 matched by hundreds of predictions) without materialising [N, H, W] floats.

    Args:
        masks: [T, H, W] bool or float masks.
        mask_idx: int64 [N], which mask each row samples.
        point_coords: [N, K, 2] normalised (x, y) in [0, 1] over ``frame_size``.
        frame_size: (H_f, W_f) of the frame the coordinates are normalised to, when larger than
            the masks (masks sit at the top-left of the frame; outside them reads 0). Defaults
            to the masks' own (H, W).

    Returns:
        float32 [N, K] values in [0, 1] for binary masks.
    """
    height, width = masks.shape[-2:]
    frame_h, frame_w = frame_size if frame_size is not None else (height, width)
    if frame_h < height or frame_w < width:
        raise ValueError(
            f"frame {frame_h}x{frame_w} is smaller than the masks {height}x{width}; masks must "
            "be in the frame of the prediction (pad them, never crop)"
        )
    flat = masks.reshape(-1)
    x = point_coords[..., 0].float() * frame_w - 0.5  # pixel-centre coordinates
    y = point_coords[..., 1].float() * frame_h - 0.5
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    x0 = x0.long()
    y0 = y0.long()
    base = mask_idx.long().view(-1, 1) * (height * width)
    out = torch.zeros(point_coords.shape[:-1], dtype=torch.float32, device=masks.device)
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            xi = x0 + dx
            yi = y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = base + yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            values = flat[index].float() * inside
            out = out + values * (wx * wy)
    return out


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: ``-|logit|`` (highest at the decision boundary)."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Samples points biased towards uncertain regions (PointRend's training-time sampler).

    Draws ``num_points * oversample_ratio`` uniform candidates, keeps the
    ``importance_sample_ratio * num_points`` most uncertain of them and fills the rest with fresh
    uniform points.

    Args:
        coarse_logits: [N, 1, H, W] mask logits (detach them: no gradient is needed here).
        uncertainty_func: Maps sampled logits [N, 1, P] to uncertainties [N, 1, P].
        num_points: Points per mask, K.
        oversample_ratio: >= 1, candidates per kept point.
        importance_sample_ratio: In [0, 1], fraction of K chosen by uncertainty.

    Returns:
        float [N, K, 2] normalised (x, y) coordinates in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and importance_sample_ratio in [0, 1], got "
            f"{oversample_ratio}, {importance_sample_ratio}"
        )
    num_masks = coarse_logits.shape[0]
    device = coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_sampled, 2, device=device)
    uncertainty = uncertainty_func(point_sample(coarse_logits, candidates))  # [N, 1, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1).indices  # [N, k]
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(num_masks, num_random, 2, device=device)], dim=1)
    return chosen
