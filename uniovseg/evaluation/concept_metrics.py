"""Metrics of concept prompts (``UniOVSegPredictor.segment_concepts``) on labelled images.

Every class name of a panoptic dataset is asked as a concept on every image. Per concept:

* **AP50**: COCO-style average precision at mask IoU 0.5 (greedy matching by decreasing score,
  each prediction to the unmatched ground truth it overlaps most; 101-point interpolated
  precision). Thing classes: the ground-truth instances are the panoptic segments of the
  class, the predictions the phrase's instances. Stuff classes: one region per image on both
  sides: the ground truth is the class's region, the prediction the union of the phrase's
  instances that pass the threshold (its best instance alone when none passes), scored by its
  best instance.
* **precision / recall / F1** at a score threshold (the predictions that pass it).
* **image-level answers**: on images *without* the concept, the fraction answered "none found"
  (no instance passes: ``none_found_accuracy``); on images *with* it, the fraction answered
  "found" (``found_rate``); and the accuracy over all image-concept pairs.

Only scores and overlaps are stored, never masks: the predictions are ranked once at threshold
0 and every threshold reads a prefix of that ranking (the concept segmenter's NMS guarantees it:
see :mod:`uniovseg.modeling.concept_segmentation`). Greedy matching in score order is also a
prefix property, so the true/false-positive flags found at threshold 0 hold at every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ConceptEvaluation",
    "average_precision",
    "greedy_matches",
    "mask_ious",
]

IOU_THRESHOLD = 0.5
# COCO's recall points of the interpolated precision-recall curve.
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def mask_ious(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """IoU of every pair of masks.

    Args:
        pred_masks: bool [N, H, W].
        gt_masks: bool [G, H, W].

    Returns:
        float64 [N, G] (0 where both masks are empty).
    """
    pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(f"mask sizes differ: {pred_masks.shape} and {gt_masks.shape}")
    pixels = int(np.prod(pred_masks.shape[1:]))
    pred = pred_masks.reshape(len(pred_masks), pixels).astype(np.float32)
    gt = gt_masks.reshape(len(gt_masks), pixels).astype(np.float32)
    inter = pred @ gt.T
    union = pred.sum(1)[:, None] + gt.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def greedy_matches(ious: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """COCO's matching: predictions (rows, by decreasing score) take, in turn, the unmatched
    ground truth they overlap most, if that IoU is at least the threshold.

    Args:
        ious: [N, G] IoUs, rows sorted by decreasing score.
        iou_threshold: Least IoU of a match.

    Returns:
        bool [N]: whether each prediction is a true positive.
    """
    num_pred, num_gt = ious.shape
    taken = np.zeros(num_gt, dtype=bool)
    tp = np.zeros(num_pred, dtype=bool)
    for i in range(num_pred):
        if num_gt == 0:
            break
        candidates = np.where(taken, -1.0, ious[i])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken[best] = True
            tp[i] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated average precision.

    Args:
        scores: [N] prediction scores (any order).
        tp: bool [N] true-positive flags.
        num_gt: Number of ground-truth objects.

    Returns:
        AP in [0, 1]; NaN when ``num_gt`` is 0 (undefined, as COCO reports -1).
    """
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(tp, dtype=bool)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = tp_cum / num_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    # Interpolated precision: the best precision at any recall at least this one.
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    index = np.searchsorted(recall, _RECALL_POINTS, side="left")
    values = np.array([precision[i] if i < len(precision) else 0.0 for i in index])
    return float(values.mean())


@dataclass
class _ConceptRecords:
    """What one concept's evaluation keeps (no masks)."""

    isthing: bool
    num_gt: int = 0
    # Things: one entry per predicted instance.
    scores: list[float] = field(default_factory=list)
    tp: list[bool] = field(default_factory=list)
    # Per image: (present, instance scores by decreasing score, IoU of the union of the first
    # n instances with the ground-truth region for n = 1..N; stuff only).
    images: list[tuple[bool, np.ndarray, np.ndarray | None]] = field(default_factory=list)


class ConceptEvaluation:
    """Accumulates concept predictions against ground truth, image by image.

    Example::

        evaluation = ConceptEvaluation(["car", "sky"], isthing=[True, False])
        evaluation.add(0, gt_masks, pred_masks, pred_scores)   # concept 0 on one image
        table = evaluation.summarize(score_threshold=0.4)
    """

    def __init__(self, concepts: Sequence[str], isthing: Sequence[bool]) -> None:
        """
        Args:
            concepts: The concept names (one per class).
            isthing: Whether each is a thing class (instances) or stuff (one region).
        """
        if len(concepts) != len(isthing):
            raise ValueError(f"{len(concepts)} concepts but {len(isthing)} isthing flags")
        self.concepts = list(concepts)
        self._records = [_ConceptRecords(isthing=bool(t)) for t in isthing]
        self.num_images = 0

    def add(
        self,
        concept: int,
        gt_masks: np.ndarray,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
    ) -> None:
        """One concept on one image.

        Args:
            concept: Index of the concept.
            gt_masks: bool [G, H, W], its ground-truth segments (G = 0: absent). For stuff,
                they are merged into one region.
            pred_masks: bool [N, H, W], the phrase's instances at threshold 0.
            pred_scores: float [N], their scores.
        """
        record = self._records[concept]
        pred_scores = np.asarray(pred_scores, dtype=np.float64)
        order = np.argsort(-pred_scores, kind="stable")
        pred_masks = np.asarray(pred_masks, dtype=bool)[order]
        pred_scores = pred_scores[order]
        gt_masks = np.asarray(gt_masks, dtype=bool)
        present = len(gt_masks) > 0 and bool(gt_masks.any())
        if record.isthing:
            record.num_gt += len(gt_masks)
            tp = greedy_matches(mask_ious(pred_masks, gt_masks)) if len(pred_masks) else []
            record.scores.extend(pred_scores.tolist())
            record.tp.extend(bool(t) for t in tp)
            record.images.append((present, pred_scores, None))
            return
        record.num_gt += int(present)
        prefix_ious = None
        if len(pred_masks):
            region = gt_masks.any(axis=0) if len(gt_masks) else np.zeros(pred_masks.shape[1:], bool)
            unions = np.logical_or.accumulate(pred_masks, axis=0)
            prefix_ious = mask_ious(unions, region[None])[:, 0]
        record.images.append((present, pred_scores, prefix_ious))

    def next_image(self) -> None:
        """Counts an image (call once per image, after its concepts)."""
        self.num_images += 1

    # ------------------------------------------------------------------ results
    def _detections(self, record: _ConceptRecords, threshold: float):
        """(scores, tp) of the ranking used for AP, and (kept, tp_kept) at ``threshold``."""
        if record.isthing:
            scores = np.asarray(record.scores, dtype=np.float64)
            tp = np.asarray(record.tp, dtype=bool)
            return scores, tp
        scores, tp = [], []
        for present, image_scores, prefix_ious in record.images:
            if not len(image_scores):
                continue
            passing = max(1, int((image_scores >= threshold).sum()))
            scores.append(image_scores[0])
            tp.append(present and prefix_ious[passing - 1] >= IOU_THRESHOLD)
        return np.asarray(scores, dtype=np.float64), np.asarray(tp, dtype=bool)

    def concept_metrics(self, concept: int, score_threshold: float) -> dict:
        """One concept's metrics at ``score_threshold`` (see the module docstring); NaN where
        undefined (no ground truth, no image without the concept...)."""
        record = self._records[concept]
        scores, tp = self._detections(record, score_threshold)
        kept = scores >= score_threshold
        num_tp = int(tp[kept].sum())
        num_kept = int(kept.sum())
        answers = np.array(
            [(present, bool((s >= score_threshold).any())) for present, s, _ in record.images],
            dtype=bool,
        ).reshape(-1, 2)
        present, found = answers[:, 0], answers[:, 1]
        return {
            "concept": self.concepts[concept],
            "isthing": record.isthing,
            "num_gt": record.num_gt,
            "num_images_with": int(present.sum()),
            "ap50": average_precision(scores, tp, record.num_gt),
            "precision": num_tp / num_kept if num_kept else float("nan"),
            "recall": num_tp / record.num_gt if record.num_gt else float("nan"),
            "true_positives": num_tp,
            "detections": num_kept,
            "none_found_accuracy": _mean(~found[~present]),
            "found_rate": _mean(found[present]),
            "image_accuracy": _mean(found == present),
        }

    def summarize(self, score_threshold: float) -> dict:
        """Every concept's metrics and their means at ``score_threshold``.

        Returns:
            ``{"score_threshold", "num_images", "concepts": [per-concept dicts], "mean": {...},
            "things": {...}, "stuff": {...}, "pooled": {precision, recall, f1}}``; means skip
            NaN values (concepts without ground truth).
        """
        rows = [self.concept_metrics(c, score_threshold) for c in range(len(self.concepts))]
        keys = ("ap50", "precision", "recall", "none_found_accuracy", "found_rate",
                "image_accuracy")  # fmt: skip

        def means(selected: list[dict]) -> dict:
            return {k: _nanmean([r[k] for r in selected]) for k in keys}

        return {
            "score_threshold": float(score_threshold),
            "num_images": self.num_images,
            "concepts": rows,
            "mean": means(rows),
            "things": means([r for r in rows if r["isthing"]]),
            "stuff": means([r for r in rows if not r["isthing"]]),
            "pooled": self.pooled(score_threshold),
        }

    def pooled(self, score_threshold: float) -> dict:
        """Precision, recall and F1 over the predictions of every concept together (the
        calibration criterion)."""
        num_tp = num_kept = num_gt = 0
        for record in self._records:
            scores, tp = self._detections(record, score_threshold)
            kept = scores >= score_threshold
            num_tp += int(tp[kept].sum())
            num_kept += int(kept.sum())
            num_gt += record.num_gt
        precision = num_tp / num_kept if num_kept else 0.0
        recall = num_tp / num_gt if num_gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    def calibrate(self, thresholds: Sequence[float]) -> tuple[float, list[dict]]:
        """The threshold with the best pooled F1 (the lowest among ties).

        Returns:
            (best threshold, one ``{"score_threshold", precision, recall, f1}`` per threshold).
        """
        if not len(thresholds):
            raise ValueError("calibrate needs at least one threshold")
        curve = [{"score_threshold": float(t), **self.pooled(float(t))} for t in thresholds]
        best = max(curve, key=lambda row: (row["f1"], -row["score_threshold"]))
        return best["score_threshold"], curve


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _nanmean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
