"""A held-out signal for stage 2: how well the model names ground-truth regions while it aligns.

The alignment loss (Eq. 8) cannot show a collapse: it *falls* when the adapter moves every region
towards the entities' common direction. This hook measures, on a few labelled images of a
registered dataset (``MODEL.UNIOVSEG.ALIGNMENT.MONITOR.DATASET``), what the paper's Table 4 does
for whole benchmarks: each ground-truth segment's mask is embedded (Eq. 5, through the adapter)
and classified with the dataset's class names. Before training and every ``PERIOD`` iterations
it writes to the event storage (so to ``metrics.json`` and TensorBoard):

* ``align_val/acc``, ``align_val/acc_things``, ``align_val/acc_stuff``: segment accuracy of the
  adapted embeddings (overall, thing segments, stuff segments);
* ``align_val/baseline_acc``: the same with raw CLIP mask pooling (the untrained adapter);
* ``align_val/embed_cos``: mean pairwise cosine similarity of the adapted embeddings of all
  segments; it rises towards 1 when the embeddings collapse to one direction;
* ``align_val/pred_share``: the share of segments given the most frequent predicted class.

A warning is logged whenever the adapted accuracy falls below the baseline's. Segments come
from the panoptic PNG when the dataset has one (one segment per instance), else from the
semantic PNG (one segment per class present). The monitor runs on the main process only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import HookBase
from detectron2.utils import comm

from uniovseg.evaluation.mask_classification import read_gt_segments
from uniovseg.modeling.open_vocab_postprocessing import thing_classes_from_metadata

__all__ = ["AlignmentMonitor", "MonitorImage", "load_monitor_images", "monitor_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorImage:
    """One labelled image: ``image`` uint8 [3, H, W] (RGB), ``masks`` bool [N, H, W], ``labels``
    int64 [N] contiguous class indices."""

    image: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor


def load_monitor_images(dataset_name: str, num_images: int) -> list[MonitorImage]:
    """The first ``num_images`` images of a registered dataset that have a labelled segment."""
    metadata = MetadataCatalog.get(dataset_name)
    out = []
    for record in DatasetCatalog.get(dataset_name):
        if len(out) >= num_images:
            break
        masks, labels = read_gt_segments(record, metadata)
        if not len(labels):
            continue
        image = read_image(record["file_name"], format="RGB")
        out.append(
            MonitorImage(
                torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(masks),
                torch.from_numpy(labels),
            )
        )
    if not out:
        raise ValueError(f"ALIGNMENT.MONITOR.DATASET {dataset_name!r} has no labelled segment")
    return out


def _padded_masks(masks: torch.Tensor, valid: tuple[int, int], size: int) -> torch.Tensor:
    """Original-size bool masks [N, H, W] -> float [N, S, S] in the padded input frame."""
    resized = F.interpolate(masks[None].float(), size=valid, mode="nearest")[0]
    return F.pad(resized, (0, size - valid[1], 0, size - valid[0]))


@torch.no_grad()
def monitor_metrics(model, images: list[MonitorImage], thing_classes: set[int]) -> dict:
    """Segment classification metrics of the adapted and the baseline region embeddings.

    Args:
        model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` with its vocabulary set.
        images: The labelled images.
        thing_classes: Contiguous thing-class indices (the others are stuff).

    Returns:
        ``acc``, ``acc_things``, ``acc_stuff``, ``baseline_acc``, ``embed_cos``, ``pred_share``
        (floats; an accuracy with no segment of its kind is NaN).
    """
    classifier = model.open_vocab.text_classifier
    correct, baseline_correct, labels_all, preds_all, embeds_all = [], [], [], [], []
    for item in images:
        padded, frame = model.preprocess_image(item.image)
        encoding = model.encode(padded, [frame])
        masks = _padded_masks(item.masks.to(padded.device), frame.valid_size, padded.shape[-1])
        adapted = model.region_embeddings(encoding, masks).float()
        baseline = model.region_embeddings(encoding, masks, use_adapter=False)
        labels = item.labels.to(adapted.device)
        preds = classifier.predict(adapted).probs.argmax(dim=1)
        baseline_preds = classifier.predict(baseline.float()).probs.argmax(dim=1)
        correct.append(preds == labels)
        baseline_correct.append(baseline_preds == labels)
        labels_all.append(labels)
        preds_all.append(preds)
        embeds_all.append(F.normalize(adapted, dim=-1))
    correct_t = torch.cat(correct).float()
    labels_t = torch.cat(labels_all)
    is_thing = torch.tensor([int(c) in thing_classes for c in labels_t.tolist()], dtype=torch.bool)
    embeds = torch.cat(embeds_all)
    count = embeds.shape[0]
    cosine = (embeds @ embeds.t()).sum() - count
    preds_t = torch.cat(preds_all)

    def mean(values: torch.Tensor) -> float:
        return float(values.mean()) if values.numel() else float("nan")

    return {
        "acc": mean(correct_t),
        "acc_things": mean(correct_t[is_thing.to(correct_t.device)]),
        "acc_stuff": mean(correct_t[~is_thing.to(correct_t.device)]),
        "baseline_acc": mean(torch.cat(baseline_correct).float()),
        "embed_cos": float(cosine / max(count * (count - 1), 1)),
        "pred_share": float(torch.bincount(preds_t).max()) / max(count, 1),
    }


class AlignmentMonitor(HookBase):
    """Writes :func:`monitor_metrics` to the event storage before training and periodically."""

    @configurable
    def __init__(self, *, dataset_name: str, num_images: int = 16, period: int = 50) -> None:
        """
        Args:
            dataset_name: A registered dataset with panoptic or semantic ground truth and class
                names in its metadata (e.g. ``synthetic_panoptic_val``, ``coco_2017_val_panoptic``).
            num_images: How many of its images are used (the first ones).
            period: Iterations between two measurements (and one after the last iteration).
        """
        if num_images < 1 or period < 1:
            raise ValueError(
                f"ALIGNMENT.MONITOR.NUM_IMAGES and PERIOD must be >= 1, got {num_images}, {period}"
            )
        self.dataset_name = dataset_name
        self.num_images = int(num_images)
        self.period = int(period)
        self._images: list[MonitorImage] | None = None
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, cfg) -> dict:
        m = cfg.MODEL.UNIOVSEG.ALIGNMENT.MONITOR
        return {"dataset_name": m.DATASET, "num_images": m.NUM_IMAGES, "period": m.PERIOD}

    def _measure(self, iteration: int) -> None:
        if not comm.is_main_process():
            return
        model = self.trainer.model
        model = getattr(model, "module", model)
        metadata = MetadataCatalog.get(self.dataset_name)
        if self._images is None:
            self._images = load_monitor_images(self.dataset_name, self.num_images)
        model.set_dataset_metadata(metadata)
        was_training = model.training
        model.eval()
        try:
            metrics = monitor_metrics(model, self._images, thing_classes_from_metadata(metadata))
        finally:
            model.train(was_training)
        self.history.append({"iteration": iteration, **metrics})
        storage = self.trainer.storage
        for key, value in metrics.items():
            storage.put_scalar(f"align_val/{key}", value, smoothing_hint=False)
        logger.info(
            "alignment monitor at iteration %d on %s: segment accuracy %.3f (things %.3f, stuff "
            "%.3f), baseline %.3f, embedding mean cosine %.3f, top class share %.2f",
            iteration,
            self.dataset_name,
            metrics["acc"],
            metrics["acc_things"],
            metrics["acc_stuff"],
            metrics["baseline_acc"],
            metrics["embed_cos"],
            metrics["pred_share"],
        )
        if metrics["acc"] < metrics["baseline_acc"]:
            logger.warning(
                "alignment monitor: the adapted embeddings name %.1f%% of %s's segments, fewer "
                "than raw CLIP mask pooling (%.1f%%): stage 2 is making the model worse "
                "(see MODEL.UNIOVSEG.ALIGNMENT.CONTRASTIVE_WEIGHT)",
                100 * metrics["acc"],
                self.dataset_name,
                100 * metrics["baseline_acc"],
            )

    def before_train(self) -> None:
        self._measure(self.trainer.iter)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter == self.trainer.max_iter:
            self._measure(next_iter)
