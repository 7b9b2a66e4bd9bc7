"""1-point and 1-box mask IoU of a promptable segmenter, averaged over ground-truth instances.

Protocol (the paper's promptable evaluation, SAM-style): every ground-truth mask gives one point
prompt at its distance-transform centre and one box prompt (its tight box), see
:class:`uniovseg.data.promptable_eval_mapper.PromptableEvalMapper`. For the point, the model
returns several masks (4 granularities) with predicted IoUs; we report

    * ``1pt_oracle_iou``: IoU of the best of the point's masks against the ground truth (the
      "oracle" choice of SAM's paper, which the Uni-OVSeg paper reports);
    * ``1pt_top_iou``: IoU of the mask with the highest *predicted* IoU (no oracle);
    * ``1box_iou``: IoU of the box prompt's single mask;

each averaged over all instances of the dataset (not per image first), in percent.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["EVALUATOR_TYPE", "PromptableEvaluator", "mask_iou"]

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


class PromptableEvaluator(DatasetEvaluator):
    """Accumulates per-instance promptable IoUs and reports their dataset means.

    Expects the inputs of :class:`~uniovseg.data.promptable_eval_mapper.PromptableEvalMapper`
    (``gt_masks`` [G, h, w]) and, per image, model outputs
    ``{"prompt_eval": {"point_masks": bool [G, M, h, w], "point_iou": [G, M],
    "box_masks": bool [G, 1, h, w]}}`` in the same resized, unpadded frame.
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
        # Per instance: (oracle, top, box) IoU; a few floats per instance, so gathering is cheap.
        self._ious: list[np.ndarray] = []

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
            if (
                point_masks.dim() != 4
                or point_masks.shape[0] != num
                or point_masks.shape[2:] != (height, width)
                or point_iou.shape != point_masks.shape[:2]
                or box_masks.shape != (num, 1, height, width)
            ):
                raise ValueError(
                    f"prompt_eval outputs must be point_masks [G, M, h, w], point_iou [G, M] and "
                    f"box_masks [G, 1, h, w] with G, h, w = {num}, {height}, {width} (the "
                    "resized, unpadded frame of 'image_size'); got "
                    f"{tuple(point_masks.shape)}, {tuple(point_iou.shape)}, "
                    f"{tuple(box_masks.shape)}"
                )
            point_ious = mask_iou(point_masks.bool(), gt)  # [G, M]
            top = point_iou.argmax(dim=1, keepdim=True).to(point_ious.device)
            rows = torch.stack(
                [
                    point_ious.max(dim=1).values,
                    point_ious.gather(1, top)[:, 0],
                    mask_iou(box_masks.bool(), gt)[:, 0],
                ],
                dim=1,
            )
            self._ious.append(rows.cpu().numpy())

    def evaluate(self) -> dict:
        ious = self._ious
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(ious, dst=0)
            if not comm.is_main_process():
                return {}
            ious = [a for part in gathered for a in part]
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
        results = {
            "1pt_oracle_iou": means[0],
            "1pt_top_iou": means[1],
            "1box_iou": means[2],
            "num_instances": num,
        }
        logger.info("Promptable evaluation on %s: %s", self._dataset_name, results)
        return {"promptable": results}
