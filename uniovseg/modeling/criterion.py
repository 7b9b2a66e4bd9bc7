"""Stage-1 criterion: decoder outputs for point/box prompts + per-image targets -> loss dict.

For each prompt type and each decoder layer (final + auxiliary, deep supervision), predictions
are matched to ground-truth masks (:mod:`uniovseg.modeling.matching`) and every matched pair gets

* ``bce_weight * BCE + dice_weight * dice`` on importance-sampled points (Eq. 4), and
* ``iou_weight * (sigmoid(iou_logit) - IoU)^2``, where IoU is the real IoU between the
  prediction thresholded at logit 0 and its gt, both at the logits' stride-4 resolution (the gt
  is area-downsampled, a cell is on when half of it is), detached.

Unmatched predictions get no loss at all: no mask penalty (paper) and no IoU target (there is no
gt to measure them against). Each sum is divided by the number of matched pairs of that prompt
type in the batch, averaged over processes and floored at 1, so no pairs anywhere gives exactly
0 (never NaN). Every loss also carries ``0 * sum(outputs)``: a granularity token that no prompt
of the batch matched still takes part in backward (with exactly zero gradient), so
DistributedDataParallel needs no ``find_unused_parameters``.

Matching per layer (default, ``match_per_layer=True``) follows Mask2Former's deep supervision:
each auxiliary prediction is matched on its own, so an early layer is not forced to imitate the
final layer's choice of granularity. The number of pairs does not depend on the layer (it is
``min(M, n_p)`` per prompt, fixed by containment), so the normalisation is shared. With
``False`` the final layer's pairs are reused for all layers (cheaper, one Hungarian pass).
Box prompts are matched by construction (box g <-> gt g) in both modes.
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import configurable
from detectron2.utils import comm

from .losses import (
    downsample_masks,
    iou_head_loss,
    mask_iou,
    point_sampled_mask_losses,
)
from .matching import PromptMatcher, PromptMatches

__all__ = ["PromptMaskCriterion"]

# Prompt type -> the target key holding that type's prompts (one row per prompt).
_PROMPT_KEYS = {"point": "point_coords", "box": "box_prompts"}


class PromptMaskCriterion:
    """Losses of the promptable mask generator (see the module docstring).

    Call with ``outputs_by_type``: ``{"point": out, "box": out}`` (either key may be absent),
    where ``out`` has ``mask_logits`` [B, P, M, h, w] (stride ``mask_stride`` of the input
    frame), ``iou_logits`` [B, P, M] and ``aux_outputs`` (a list of objects with the same two
    fields, one per earlier decoder layer; may be empty or missing). P may be padded beyond an
    image's own prompt count; the extra rows are ignored. ``targets`` is one dict per image with
    ``gt_masks`` (bool [G, H, W], input frame), ``point_coords`` ([P_b, 2] input pixels) and
    ``box_prompts`` ([G, 4], row g is the box of gt g), as produced by ``SA1BDatasetMapper``.

    Returns a dict of scalar tensors, ALREADY multiplied by their weights (sum them):
    ``loss_mask_bce_{type}``, ``loss_mask_dice_{type}``, ``loss_iou_{type}`` for the final
    layer and the same names suffixed ``_{i}`` for auxiliary layer i.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: PromptMatcher,
        bce_weight: float = 2.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        match_per_layer: bool = True,
        mask_stride: int = 4,
    ) -> None:
        """
        Args:
            matcher: The prompt matcher.
            bce_weight: Weight of the mask BCE loss (release: 2).
            dice_weight: Weight of the mask dice loss (release: 1).
            iou_weight: Weight of the IoU-head loss (release: 1).
            num_points: Importance-sampled points per matched mask (release: 12544).
            oversample_ratio: Candidate oversampling of the point sampler (release: 3).
            importance_sample_ratio: Fraction of points chosen by uncertainty (release: 0.75).
            deep_supervision: Also supervise the auxiliary (earlier-layer) outputs.
            match_per_layer: Match every layer separately (True) or reuse the final pairs.
            mask_stride: Stride of the mask logits w.r.t. the input frame (4).
        """
        self.matcher = matcher
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.deep_supervision = bool(deep_supervision)
        self.match_per_layer = bool(match_per_layer)
        self.mask_stride = int(mask_stride)

    @classmethod
    def from_config(cls, cfg) -> dict:
        loss = cfg.MODEL.UNIOVSEG.LOSS
        return {
            "matcher": PromptMatcher(cfg),
            "bce_weight": loss.MASK_BCE_WEIGHT,
            "dice_weight": loss.MASK_DICE_WEIGHT,
            "iou_weight": loss.IOU_WEIGHT,
            "num_points": loss.NUM_POINTS,
            "oversample_ratio": loss.OVERSAMPLE_RATIO,
            "importance_sample_ratio": loss.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": loss.DEEP_SUPERVISION,
            "match_per_layer": cfg.MODEL.UNIOVSEG.MATCHER.PER_LAYER,
        }

    # ------------------------------------------------------------------ public entry point
    def __call__(
        self, outputs_by_type: dict[str, Any], targets: list[dict]
    ) -> dict[str, torch.Tensor]:
        unknown = set(outputs_by_type) - set(_PROMPT_KEYS)
        if unknown:
            raise ValueError(
                f"unknown prompt type(s) {sorted(unknown)}; "
                f"expected keys among {sorted(_PROMPT_KEYS)}"
            )
        types = sorted(outputs_by_type)  # same order on every process (for the all-reduce)
        final_matches = {}
        for prompt_type in types:
            out = outputs_by_type[prompt_type]
            self._check_shapes(prompt_type, out, targets)
            final_matches[prompt_type] = self._match(prompt_type, out, targets)
        num_pairs = self._normalizers(
            [sum(len(m) for m in final_matches[t]) for t in types],
            device=self._device(outputs_by_type[types[0]]) if types else torch.device("cpu"),
        )

        # IoU targets compare with gts at the logits' resolution; every layer and prompt type
        # shares it, so each image's gts are downsampled once per call, when first needed.
        coarse_gts: dict[tuple[int, int, int], torch.Tensor] = {}
        losses: dict[str, torch.Tensor] = {}
        for prompt_type, normalizer in zip(types, num_pairs, strict=True):
            out = outputs_by_type[prompt_type]
            layers = [("", out, final_matches[prompt_type])]
            if self.deep_supervision:
                for i, aux in enumerate(getattr(out, "aux_outputs", None) or []):
                    matches = final_matches[prompt_type]
                    if self.match_per_layer and prompt_type == "point":
                        matches = self._match(prompt_type, aux, targets)
                    layers.append((f"_{i}", aux, matches))
            for suffix, layer, matches in layers:
                terms = self._layer_losses(layer, targets, matches, normalizer, coarse_gts)
                for name, value in terms.items():
                    losses[f"{name}_{prompt_type}{suffix}"] = value
        return losses

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _device(out: Any) -> torch.device:
        return out.mask_logits.device

    @staticmethod
    def _check_shapes(prompt_type: str, out: Any, targets: list[dict]) -> None:
        logits, ious = out.mask_logits, out.iou_logits
        if logits.dim() != 5 or ious.shape != logits.shape[:3]:
            raise ValueError(
                f"{prompt_type} outputs need mask_logits [B, P, M, h, w] and iou_logits "
                f"[B, P, M], got {tuple(logits.shape)} and {tuple(ious.shape)}"
            )
        if logits.shape[0] != len(targets):
            raise ValueError(f"{logits.shape[0]} output images but {len(targets)} targets")
        key = _PROMPT_KEYS[prompt_type]
        for b, target in enumerate(targets):
            num_prompts = len(target[key])
            if num_prompts > logits.shape[1]:
                raise ValueError(
                    f"image {b} has {num_prompts} {prompt_type} prompts but the outputs hold "
                    f"only {logits.shape[1]} per image"
                )
            if prompt_type == "box" and num_prompts != len(target["gt_masks"]):
                raise ValueError(
                    f"image {b}: {num_prompts} box prompts for {len(target['gt_masks'])} gt "
                    "masks; box prompt g must be the box of gt mask g"
                )

    def _match(self, prompt_type: str, out: Any, targets: list[dict]) -> list[PromptMatches]:
        device = self._device(out)
        matches = []
        for b, target in enumerate(targets):
            if prompt_type == "box":
                matches.append(self.matcher.match_boxes(len(target["box_prompts"]), device))
                continue
            coords = target["point_coords"]
            matches.append(
                self.matcher.match_points(
                    out.mask_logits[b, : len(coords)].detach(),
                    target["gt_masks"].to(device),
                    coords.to(device),
                )
            )
        return matches

    @staticmethod
    def _normalizers(counts: list[int], device: torch.device) -> list[float]:
        """Pairs per prompt type, averaged over processes, floored at 1 (Mask2Former)."""
        if not counts:
            return []
        total = torch.tensor(counts, dtype=torch.float32, device=device)
        world = comm.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(total)
            total = total / world
        return total.clamp(min=1.0).tolist()

    def _layer_losses(
        self,
        out: Any,
        targets: list[dict],
        matches: list[PromptMatches],
        normalizer: float,
        coarse_gts: dict[tuple[int, int, int], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        mask_logits, iou_logits = out.mask_logits, out.iou_logits
        height, width = mask_logits.shape[-2:]
        bce_sum = mask_logits.new_zeros((), dtype=torch.float32)
        dice_sum = bce_sum.clone()
        iou_sum = bce_sum.clone()
        for b, (target, m) in enumerate(zip(targets, matches, strict=True)):
            if len(m) == 0:
                continue
            gt_masks = target["gt_masks"].to(mask_logits.device)
            pred = mask_logits[b, m.prompt_idx, m.token_idx]  # [N, h, w]
            bce, dice = point_sampled_mask_losses(
                pred,
                gt_masks,
                m.gt_idx,
                num_points=self.num_points,
                oversample_ratio=self.oversample_ratio,
                importance_sample_ratio=self.importance_sample_ratio,
                mask_stride=self.mask_stride,
            )
            bce_sum = bce_sum + bce.sum()
            dice_sum = dice_sum + dice.sum()
            with torch.no_grad():
                key = (b, height, width)
                if key not in coarse_gts:
                    coarse_gts[key] = downsample_masks(gt_masks, (height, width), self.mask_stride)
                iou_targets = mask_iou(pred.detach() > 0, coarse_gts[key][m.gt_idx])
            iou_sum = (
                iou_sum + iou_head_loss(iou_logits[b, m.prompt_idx, m.token_idx], iou_targets).sum()
            )
        # Graph connection with exact zero gradient: every token's outputs take part in the
        # backward pass even when no prompt matched that token (or nothing matched at all), so
        # DistributedDataParallel works without find_unused_parameters.
        connect = mask_logits.float().sum() * 0.0
        bce_sum = bce_sum + connect
        dice_sum = dice_sum + connect
        iou_sum = iou_sum + iou_logits.float().sum() * 0.0
        return {
            "loss_mask_bce": bce_sum * (self.bce_weight / normalizer),
            "loss_mask_dice": dice_sum * (self.dice_weight / normalizer),
            "loss_iou": iou_sum * (self.iou_weight / normalizer),
        }
