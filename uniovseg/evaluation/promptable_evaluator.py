"""1-point and 1-box mask IoU of a promptable segmenter, averaged over ground-truth instances.

Every ground-truth mask gives one box prompt (its tight box: the ground-truth box), and the point
prompts follow one of two protocols (``MODEL.UNIOVSEG.TEST.PROMPTABLE_POINTS``, see
:class:`uniovseg.data.promptable_eval_mapper.PromptableEvalMapper`):

* ``"centre"`` (SAM-style): one point per ground-truth mask at its distance-transform centre.
  The model returns several masks per point (4 granularities) with predicted IoUs; we report
  ``1pt_oracle_iou``, the IoU of the best of the point's masks against its ground truth (SAM's
  "oracle" choice), and ``1pt_top_iou``, that of the mask with the highest *predicted* IoU;
* ``"grid"`` (the paper's, App. B, Fig. 3 and 8): a uniform grid of points (20 x 20) over the
  image; each ground-truth mask is scored by the best-matching of *all* the grid's masks (every
  point, every granularity). The paper calls this "1-pt IoU (Oracle)": it is reported as
  ``1pt_oracle_iou``, with ``point_grid_size`` (the grid's points per side) saying which
  protocol gave it; there is no ``1pt_top_iou``.

Both report ``1box_iou``, the IoU of the box prompt's single mask (the paper's 1-box IoU), and
``num_instances``. IoUs are averaged over all instances of the dataset (not per image first), in
percent.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["EVALUATOR_TYPE", "PromptableEvaluator", "best_mask_iou", "mask_iou"]

logger = logging.getLogger(__name__)

# The `evaluator_type` of a dataset's metadata that selects this evaluator.
EVALUATOR_TYPE = "promptable"


def mask_iou(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted mask with its ground-truth mask.

    Args:
        pred_masks: bool tensor [G, M, h, w] (M candidate masks per instance).
        gt_masks: bool tensor [G, h, w].

    Returns:
        float64 tensor [G, M] in [0, 1]; 0 where both masks are empty.
    """
    gt = gt_masks[:, None]
    inter = (pred_masks & gt).flatten(2).sum(-1, dtype=torch.float64)
    union = (pred_masks | gt).flatten(2).sum(-1, dtype=torch.float64)
    return inter / union.clamp(min=1.0)


def best_mask_iou(
    candidate_masks: torch.Tensor, gt_masks: torch.Tensor, *, chunk_size: int = 64
) -> torch.Tensor:
    """The IoU of each ground-truth mask with its best-matching candidate (the oracle choice).

    Intersections are counted with a matrix product, ``chunk_size`` candidates at a time (the
    paper's 20 x 20 grid gives 1600 candidate masks of up to 1024 x 1024 pixels).

    Args:
        candidate_masks: bool tensor [K, h, w].
        gt_masks: bool tensor [G, h, w].
        chunk_size: Candidates per product (bounds memory: 4 bytes x chunk_size x h x w).

    Returns:
        float64 tensor [G] in [0, 1]: ``max_k IoU(candidate_k, gt_g)``; 0 without candidates.
    """
    num_gt = gt_masks.shape[0]
    best = torch.zeros(num_gt, dtype=torch.float64, device=gt_masks.device)
    if num_gt == 0 or candidate_masks.shape[0] == 0:
        return best
    # float32 sums of 0/1 products are exact below 2**24 pixels; float64 beyond.
    dtype = torch.float32 if gt_masks[0].numel() < 2**24 else torch.float64
    gt = gt_masks.flatten(1).to(dtype)
    gt_area = gt.sum(1, dtype=torch.float64)
    for start in range(0, candidate_masks.shape[0], chunk_size):
        chunk = candidate_masks[start : start + chunk_size].to(gt.device).flatten(1).to(dtype)
        inter = (gt @ chunk.T).double()  # [G, C]
        union = gt_area[:, None] + chunk.sum(1, dtype=torch.float64)[None] - inter
        best = torch.maximum(best, (inter / union.clamp(min=1.0)).max(dim=1).values)
    return best


class PromptableEvaluator(DatasetEvaluator):
    """Accumulates per-instance promptable IoUs and reports their dataset means.

    Expects the inputs of :class:`~uniovseg.data.promptable_eval_mapper.PromptableEvalMapper`
    (``gt_masks`` [G, h, w]; ``point_protocol`` "centre", the default, or "grid" with its
    ``point_grid_size``, else taken as the square root of P) and, per
    image, model outputs ``{"prompt_eval": {"point_masks": bool [P, M, h, w], "point_iou":
    [P, M], "box_masks": bool [G, 1, h, w]}}`` in the same resized, unpadded frame, where P = G
    for "centre" (point g was placed on mask g) and P = the number of grid points for "grid".
    """

    def __init__(self, dataset_name: str | None = None, *, distributed: bool = True) -> None:
        """
        Args:
            dataset_name: Only used in log messages.
            distributed: Gather the instances of every process before averaging (detectron2's
                ``comm``); only the main process returns results then.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        # Per instance: (oracle, top, box) IoU, NaN where the protocol has none (grid: no top
        # mask); a few floats per instance, so gathering is cheap.
        self._ious: list[np.ndarray] = []
        # Points per side of the grid protocol's grids (0: the centre protocol).
        self._grid_sizes: set[int] = set()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            gt = inp["gt_masks"]
            if gt.shape[0] == 0:
                continue
            if "prompt_eval" not in out:
                raise ValueError(
                    "model outputs lack 'prompt_eval': run the model in promptable-evaluation "
                    "mode (inputs built by PromptableEvalMapper) with this evaluator"
                )
            pred = out["prompt_eval"]
            point_masks, point_iou, box_masks = (
                pred["point_masks"],
                pred["point_iou"],
                pred["box_masks"],
            )
            gt = gt.to(point_masks.device)
            num, height, width = gt.shape
            grid = inp.get("point_protocol", "centre") == "grid"
            if (
                point_masks.dim() != 4
                or (point_masks.shape[0] != num and not grid)
                or point_masks.shape[2:] != (height, width)
                or point_iou.shape != point_masks.shape[:2]
                or box_masks.shape != (num, 1, height, width)
            ):
                points = "P" if grid else "G"
                raise ValueError(
                    f"prompt_eval outputs must be point_masks [{points}, M, h, w], point_iou "
                    f"[{points}, M] and box_masks [G, 1, h, w] with G, h, w = {num}, {height}, "
                    f"{width} (the resized, unpadded frame of 'image_size'); got "
                    f"{tuple(point_masks.shape)}, {tuple(point_iou.shape)}, "
                    f"{tuple(box_masks.shape)}"
                )
            box = mask_iou(box_masks.bool(), gt)[:, 0]
            if grid:
                # The paper's oracle: the best of every mask of every grid point.
                oracle = best_mask_iou(point_masks.bool().flatten(0, 1), gt)
                top = torch.full_like(oracle, math.nan)
                size = inp.get("point_grid_size", math.isqrt(point_masks.shape[0]))
                self._grid_sizes.add(int(size))
            else:
                point_ious = mask_iou(point_masks.bool(), gt)  # [G, M]
                chosen = point_iou.argmax(dim=1, keepdim=True).to(point_ious.device)
                oracle = point_ious.max(dim=1).values
                top = point_ious.gather(1, chosen)[:, 0]
                self._grid_sizes.add(0)
            rows = torch.stack([oracle, top, box], dim=1)
            self._ious.append(rows.cpu().numpy())

    def evaluate(self) -> dict:
        ious, grid_sizes = self._ious, self._grid_sizes
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((ious, grid_sizes), dst=0)
            if not comm.is_main_process():
                return {}
            ious = [a for part, _ in gathered for a in part]
            grid_sizes = set().union(*(sizes for _, sizes in gathered))
        if len(grid_sizes) > 1:
            raise ValueError(
                f"PromptableEvaluator({self._dataset_name}): images were evaluated with different "
                "point protocols (centre points and grids, or grids of several sizes); their "
                "1-point IoUs cannot be averaged together"
            )
        grid_size = next(iter(grid_sizes), 0)
        table = np.concatenate(ious) if ious else np.zeros((0, 3))
        num = int(table.shape[0])
        if num == 0:
            logger.warning(
                "PromptableEvaluator(%s): no ground-truth instance was evaluated",
                self._dataset_name,
            )
            means = [math.nan] * 3
        else:
            means = (100.0 * table.mean(axis=0)).tolist()
        results = {"1pt_oracle_iou": means[0], "1pt_top_iou": means[1], "1box_iou": means[2]}
        if grid_size:
            del results["1pt_top_iou"]  # the grid protocol has no point of its own per mask
            results["point_grid_size"] = grid_size
        results["num_instances"] = num
        logger.info("Promptable evaluation on %s: %s", self._dataset_name, results)
        return {"promptable": results}
