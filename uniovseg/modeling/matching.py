"""Many-to-many matching of prompt predictions to ground-truth masks (Sec. 3.3, Eq. 4).

A point lies inside several SA-1B masks at once (a part, the object, a region around it). SAM
back-propagates only the best of its 3 outputs against one sampled mask; Uni-OVSeg instead lets
every point supervise all the masks that contain it. The authors released no training code, so
the exact strategy is ours; this is what we chose and why:

* Candidates. For a point prompt p, the candidate ground truths are every gt mask that contains
  the point (the mask pixel under ``floor(x), floor(y)``). A point inside no mask gets no pair
  at all (SA-1B leaves much of an image unlabelled, so "no mask" is not a negative label).
* Assignment. The prompt's M predictions (granularity tokens) are matched to its n candidates by
  the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on a cost of sigmoid-BCE +
  dice, so each prompt gets ``min(M, n)`` one-to-one pairs. With n > M (deeply nested masks) the
  assignment keeps the M candidates that the current predictions fit at the lowest total cost;
  the rest are left to other points inside them. With n < M, M - n tokens stay unmatched and get
  NO loss (paper: "no penalty to the remaining unmatched mask predictions"), which lets them
  specialise in other granularities. We rejected the alternatives "each token takes its best gt"
  (several tokens collapse onto the same easy mask) and "each gt takes its best token" (a token
  can receive two targets).
* Cost. As in Mask2Former, the cost is computed on ``num_points`` uniformly random points per
  image (release: 6000), shared by all predictions and masks of the image, so the full
  [P, M, G] cost tensor is two matrix products; only candidate entries are used.
* Box prompts are generated from the gt masks, so box prompt g is matched to gt g (its single
  prediction, token 0): no cost is needed.

The cost tensor is batched over all prompts; only the assignment loops in Python, on CPU, over
prompts with two or more candidates (scipy has no batched solver and each problem is at most
M x n with M = 4; one-candidate prompts are solved by an argmin over the tokens, without a
loop). At 100 prompts per image, all with several candidates, the containment
test and assignments take ~2.5 ms on one CPU core.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment

from .point_sampling import point_sample, sample_masks_at_points

__all__ = [
    "PromptMatcher",
    "PromptMatches",
    "batch_dice_cost",
    "batch_sigmoid_bce_cost",
    "point_containment",
]


class PromptMatches(NamedTuple):
    """Matched (prompt, token, gt) triples of one image; all int64 [N] on the same device.

    Attributes:
        prompt_idx: Index of the prompt (row of ``mask_logits[b]``).
        token_idx: Index of the prediction of that prompt (the M axis).
        gt_idx: Index of the ground-truth mask (row of ``gt_masks``).
    """

    prompt_idx: torch.Tensor
    token_idx: torch.Tensor
    gt_idx: torch.Tensor

    def __len__(self) -> int:  # number of pairs, not the tuple's arity
        return int(self.prompt_idx.numel())

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> PromptMatches:
        e = torch.zeros(0, dtype=torch.long, device=device)
        return cls(e, e.clone(), e.clone())


def point_containment(gt_masks: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Which gt masks contain which points.

    Args:
        gt_masks: bool [G, H, W].
        point_coords: float [P, 2], (x, y) pixels of the masks' frame; the pixel at
            ``(floor(y), floor(x))`` decides. Points outside the masks are in no mask.

    Returns:
        bool [P, G].
    """
    num_gt, height, width = gt_masks.shape
    xs = torch.floor(point_coords[:, 0]).long()
    ys = torch.floor(point_coords[:, 1]).long()
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    values = gt_masks[:, ys.clamp(0, height - 1), xs.clamp(0, width - 1)]  # [G, P]
    return (values.bool() & inside.unsqueeze(0)).t()


def batch_sigmoid_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid BCE between every prediction and every target, on shared points.

    Args:
        logits: [Q, K] prediction logits at K points.
        targets: [G, K] target values in [0, 1] at the same points.

    Returns:
        [Q, G] mean BCE over the K points.
    """
    num_points = logits.shape[1]
    # BCE(x, t) = softplus(-x) * t + softplus(x) * (1 - t): linear in t, hence two matmuls.
    pos = torch.nn.functional.softplus(-logits)
    neg = torch.nn.functional.softplus(logits)
    return (pos @ targets.t() + neg @ (1.0 - targets).t()) / max(num_points, 1)


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (with +1 smoothing) between every prediction and every target.

    Args:
        logits: [Q, K] prediction logits at K points.
        targets: [G, K] target values in [0, 1].

    Returns:
        [Q, G] values in [0, 1).
    """
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.t()
    denominator = probs.sum(-1, keepdim=True) + targets.sum(-1).unsqueeze(0)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class PromptMatcher:
    """Matches each prompt's M predictions to ground-truth masks (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        num_points: int = 6000,
        cost_bce: float = 2.0,
        cost_dice: float = 1.0,
        mask_stride: int = 4,
    ) -> None:
        """
        Args:
            num_points: Uniform random points per image for the cost (release: 6000).
            cost_bce: Weight of the sigmoid-BCE cost.
            cost_dice: Weight of the dice cost.
            mask_stride: Stride of the mask logits w.r.t. the input frame (4).
        """
        if num_points <= 0 or mask_stride <= 0:
            raise ValueError(
                f"num_points and mask_stride must be positive, got {num_points}, {mask_stride}"
            )
        self.num_points = int(num_points)
        self.cost_bce = float(cost_bce)
        self.cost_dice = float(cost_dice)
        self.mask_stride = int(mask_stride)

    @classmethod
    def from_config(cls, cfg) -> dict:
        m = cfg.MODEL.UNIOVSEG.MATCHER
        return {"num_points": m.NUM_POINTS, "cost_bce": m.COST_BCE, "cost_dice": m.COST_DICE}

    @torch.no_grad()
    def pairwise_cost(self, mask_logits: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
        """Matching cost between every prediction and every gt mask of one image.

        Args:
            mask_logits: [Q, h, w] prediction logits at ``mask_stride`` of the input frame.
            gt_masks: bool [G, H, W] in the input frame (H <= h * stride, W <= w * stride).

        Returns:
            float32 [Q, G] cost ``cost_bce * BCE + cost_dice * dice`` on random points.
        """
        num_q, height, width = mask_logits.shape
        device = mask_logits.device
        coords = torch.rand(1, self.num_points, 2, device=device)
        # All Q maps as channels of one image: one grid_sample, no copy of the maps.
        pred = point_sample(mask_logits.float().reshape(1, num_q, height, width), coords)[0]
        gt_idx = torch.arange(gt_masks.shape[0], device=device)
        frame = (height * self.mask_stride, width * self.mask_stride)
        gt = sample_masks_at_points(
            gt_masks, gt_idx, coords.expand(gt_masks.shape[0], -1, -1), frame_size=frame
        )
        # Sums over thousands of points overflow float16 under AMP: keep the products in fp32.
        with torch.autocast(device_type=device.type, enabled=False):
            cost = self.cost_bce * batch_sigmoid_bce_cost(pred.float(), gt.float())
            return cost + self.cost_dice * batch_dice_cost(pred.float(), gt.float())

    @torch.no_grad()
    def match_points(
        self, mask_logits: torch.Tensor, gt_masks: torch.Tensor, point_coords: torch.Tensor
    ) -> PromptMatches:
        """Many-to-many matching of point prompts of one image.

        Args:
            mask_logits: [P, M, h, w] logits of the P point prompts' M predictions.
            gt_masks: bool [G, H, W] ground truths in the input frame.
            point_coords: [P, 2] (x, y) input pixels of the prompts.

        Returns:
            :class:`PromptMatches`, sorted by (prompt, token); ``min(M, n_p)`` pairs for a
            prompt inside ``n_p`` masks.
        """
        num_prompts, num_tokens = mask_logits.shape[:2]
        device = mask_logits.device
        if point_coords.shape != (num_prompts, 2):
            raise ValueError(
                f"point_coords must be [{num_prompts}, 2] to match mask_logits "
                f"{tuple(mask_logits.shape)}, got {tuple(point_coords.shape)}"
            )
        if num_prompts == 0 or gt_masks.shape[0] == 0:
            return PromptMatches.empty(device)
        contain = point_containment(gt_masks.to(device), point_coords.to(device))  # [P, G]
        num_cand = contain.sum(1)
        active = torch.nonzero(num_cand > 0).squeeze(1)  # prompts inside at least one mask
        if active.numel() == 0:
            return PromptMatches.empty(device)
        logits = mask_logits[active].flatten(0, 1)  # [A*M, h, w]
        cost = self.pairwise_cost(logits, gt_masks.to(device))
        cost = cost.view(active.numel(), num_tokens, -1)  # [A, M, G]
        contain_a = contain[active]
        single = num_cand[active] == 1

        prompts, tokens, gts = [], [], []
        # One candidate: the assignment is the token with the lowest cost for it.
        rows = torch.nonzero(single).squeeze(1)
        if rows.numel():
            gt_single = contain_a[rows].float().argmax(1)
            token_single = cost[rows, :, gt_single].argmin(1)
            prompts.append(active[rows])
            tokens.append(token_single)
            gts.append(gt_single)
        # Several candidates: Hungarian assignment per prompt (tiny problems, on CPU).
        rows = torch.nonzero(~single).squeeze(1)
        if rows.numel():
            cost_np = cost[rows].cpu().numpy()
            contain_np = contain_a[rows].cpu().numpy()
            p_list, t_list, g_list = [], [], []
            for k, prompt in enumerate(active[rows].tolist()):
                cand = np.flatnonzero(contain_np[k])
                tok, col = linear_sum_assignment(cost_np[k][:, cand])
                p_list.extend([prompt] * len(tok))
                t_list.extend(tok.tolist())
                g_list.extend(cand[col].tolist())
            prompts.append(torch.tensor(p_list, dtype=torch.long, device=device))
            tokens.append(torch.tensor(t_list, dtype=torch.long, device=device))
            gts.append(torch.tensor(g_list, dtype=torch.long, device=device))

        prompt_idx = torch.cat(prompts)
        token_idx = torch.cat(tokens)
        gt_idx = torch.cat(gts)
        order = torch.argsort(prompt_idx * num_tokens + token_idx)
        return PromptMatches(prompt_idx[order], token_idx[order], gt_idx[order])

    @staticmethod
    def match_boxes(num_boxes: int, device: torch.device | str | None = None) -> PromptMatches:
        """One-to-one matching of box prompts: box g, token 0 <-> gt g."""
        idx = torch.arange(num_boxes, dtype=torch.long, device=device)
        return PromptMatches(idx, torch.zeros_like(idx), idx.clone())
