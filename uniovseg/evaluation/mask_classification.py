"""Classification of ground-truth masks at several input sizes (the paper's Table 4).

What the paper measures (Sec. 4.3, Table 4): the image is resized to an input size and goes
through the frozen CLIP visual encoder; each ground-truth mask pools the dense CLIP features,
the pooled feature is projected into CLIP space (Eq. 5, ``r_i = F_v(P(x^v, m_i))``) and
classified against the text embeddings of the dataset's class names. The metric is the top-1
accuracy over all ground-truth segments, with the forward time per sample. Rows with several
sizes are the multi-scale ensemble of the mask-text matching (Eq. 7): the per-size scores are
averaged. The measurement is the raw CLIP mask pooling that the ensemble uses, not the stage-2
adapted embeddings, so it needs only the CLIP weights.

How it is computed here, with the model's own steps:

* the image goes through the model's test preprocessing (:meth:`UniOVSeg.preprocess_image`)
  into its padded square canvas (make ``MODEL.UNIOVSEG.TEST.INPUT_SIZE`` the largest size);
* :func:`~uniovseg.modeling.region_embedding.clip_dense_at_sizes` resizes that canvas to each
  input size and runs CLIP, as the training ensemble does;
* the ground-truth masks, brought into the canvas frame, are pooled and projected by
  :func:`~uniovseg.modeling.region_embedding.embed_regions` (no adapter);
* the model's text classifier (the dataset's vocabulary, prompt templates and synonyms, set by
  :meth:`UniOVSeg.set_dataset_metadata`) gives class logits; a size set's class probabilities
  are the mean of its sizes' ``softmax(logits)`` (Eq. 7 averages per-scale matrices; here the
  classifier's probabilities play the cost's role), and the top-1 class is their argmax.

Times are per image, on the model's device: the preprocessing plus, for each size of the set,
CLIP at that size, pooling, projection and classification (each size is computed once per image
and its time counted in every set that contains it). Text embeddings are built, and the first
image is run once, before timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

from uniovseg.evaluation.paper_numbers import paper_mask_classification
from uniovseg.modeling import region_embedding
from uniovseg.modeling.open_vocab_postprocessing import thing_classes_from_metadata

__all__ = [
    "GroundTruthSegments",
    "SegmentClassification",
    "classify_segments",
    "default_size_sets",
    "evaluate_mask_classification",
    "panoptic_dataset_records",
    "read_gt_segments",
]

logger = logging.getLogger(__name__)

# Masks brought into the canvas frame at a time (bounds the float copies at canvas size).
_MASK_CHUNK = 16
# The masks are kept at this stride of the canvas: finer than every CLIP map (stride 32), and
# area-resized from there, so pooling weights stay exact fractions of covered pixels.
_MASK_STRIDE = 4


class GroundTruthSegments(NamedTuple):
    """One image's labelled segments: ``masks`` bool [N, H, W] (original size), ``labels`` int64
    [N] contiguous class indices (the vocabulary's order)."""

    masks: np.ndarray
    labels: np.ndarray


def read_gt_segments(record: dict, metadata) -> GroundTruthSegments:
    """The labelled segments of one detectron2 dataset dict.

    From the panoptic PNG when the dict has one (``pan_seg_file_name`` and ``segments_info``,
    contiguous ``category_id``; one segment per instance, crowd regions left out), else from the
    semantic PNG (``sem_seg_file_name``; one segment per class present, ``ignore_label`` left
    out). Empty segments are dropped.

    Raises:
        ValueError: the dict has neither kind of ground truth.
        OSError: a label file cannot be read.
    """
    if "pan_seg_file_name" in record and "segments_info" in record:
        from panopticapi.utils import rgb2id

        ids = rgb2id(read_image(record["pan_seg_file_name"], format="RGB").astype(np.int64))
        segments = [s for s in record["segments_info"] if not s.get("iscrowd", 0)]
        masks = [ids == s["id"] for s in segments]
        labels = [int(s["category_id"]) for s in segments]
        height, width = ids.shape
    elif "sem_seg_file_name" in record:
        sem = read_image(record["sem_seg_file_name"]).astype(np.int64)
        sem = sem[..., 0] if sem.ndim == 3 else sem
        ignore = int(metadata.get("ignore_label", 255))
        labels = [int(c) for c in np.unique(sem) if c != ignore]
        masks = [sem == c for c in labels]
        height, width = sem.shape
    else:
        raise ValueError(
            f"dataset {metadata.name!r} has neither panoptic nor semantic ground truth "
            "(pan_seg_file_name / sem_seg_file_name) in its dicts"
        )
    keep = [i for i, m in enumerate(masks) if m.any()]
    if not keep:
        return GroundTruthSegments(np.zeros((0, height, width), bool), np.zeros((0,), np.int64))
    return GroundTruthSegments(
        np.stack([masks[i] for i in keep]), np.array([labels[i] for i in keep], np.int64)
    )


def _panoptic_datasets() -> list[str]:
    return sorted(
        name
        for name in DatasetCatalog.list()
        if MetadataCatalog.get(name).get("evaluator_type", None) == "coco_panoptic_seg"
    )


def panoptic_dataset_records(dataset_name: str) -> list[dict]:
    """The dicts of a registered dataset with panoptic ground truth.

    Raises:
        ValueError: the name is not registered, the dataset cannot be loaded (missing files),
            is empty, or has no panoptic annotations (``pan_seg_file_name``/``segments_info``).
            The message lists the registered panoptic datasets.
    """
    known = ", ".join(_panoptic_datasets()) or "none"
    if dataset_name not in DatasetCatalog.list():
        raise ValueError(
            f"dataset {dataset_name!r} is not registered; registered panoptic datasets: {known}"
        )
    try:
        records = DatasetCatalog.get(dataset_name)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"cannot load dataset {dataset_name!r}: {e} (datasets/README.md says how to prepare "
            "each benchmark)"
        ) from e
    if not records:
        raise ValueError(f"dataset {dataset_name!r} has no image")
    if "pan_seg_file_name" not in records[0] or "segments_info" not in records[0]:
        raise ValueError(
            f"dataset {dataset_name!r} has no panoptic annotations (pan_seg_file_name and "
            f"segments_info): use a panoptic dataset, e.g. one of: {known}"
        )
    return records


def default_size_sets(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every size alone, then every run of two or more consecutive sizes (sorted): for
    768, 896, 1024 exactly Table 4's rows."""
    ordered = sorted({int(s) for s in sizes})
    sets = []
    for length in range(1, len(ordered) + 1):
        for start in range(len(ordered) - length + 1):
            sets.append(tuple(ordered[start : start + length]))
    return sets


class SegmentClassification(NamedTuple):
    """One image's segments classified at each input size.

    Attributes:
        probs: input size -> float32 [N, C] class probabilities (``softmax`` of the logits).
        seconds: input size -> seconds spent at that size (CLIP, pooling, classification).
        preprocess_seconds: seconds of the test preprocessing (shared by every size).
        canvas_side: side of the padded canvas the sizes are resized from.
    """

    probs: dict[int, torch.Tensor]
    seconds: dict[int, float]
    preprocess_seconds: float
    canvas_side: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _canvas_masks(masks: torch.Tensor, frame, canvas_side: int) -> torch.Tensor:
    """Original-size bool masks [N, H0, W0] -> float [N, S/4, S/4] over the padded canvas
    (area-resized, so a mask smaller than a canvas cell keeps its fractional weight)."""
    lowres = max(1, canvas_side // _MASK_STRIDE)
    out = []
    for start in range(0, masks.shape[0], _MASK_CHUNK):
        chunk = masks[start : start + _MASK_CHUNK].float()[None]
        chunk = region_embedding.resize_masks(chunk, frame.valid_size)
        height, width = frame.valid_size
        chunk = F.pad(chunk, (0, canvas_side - width, 0, canvas_side - height))
        out.append(region_embedding.resize_masks(chunk, (lowres, lowres))[0])
    return torch.cat(out) if out else masks.new_zeros((0, lowres, lowres), dtype=torch.float32)


@torch.no_grad()
def classify_segments(
    model, image: torch.Tensor, masks: torch.Tensor, sizes: Iterable[int]
) -> SegmentClassification:
    """Classifies one image's ground-truth masks at every input size (raw CLIP mask pooling).

    Args:
        model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` in eval mode whose vocabulary is
            set.
        image: uint8 [3, H, W] RGB.
        masks: bool [N, H, W] masks of the same image.
        sizes: Input sides, multiples of the backbone's stride.

    Returns:
        A :class:`SegmentClassification`.
    """
    device = model.device
    classifier = model.open_vocab.text_classifier
    _synchronize(device)
    start = time.perf_counter()
    canvas, frame = model.preprocess_image(image)
    _synchronize(device)
    preprocess_seconds = time.perf_counter() - start
    canvas_masks = _canvas_masks(masks.to(device), frame, canvas.shape[-1])
    probs, seconds = {}, {}
    for size in sizes:
        start = time.perf_counter()
        with model.inference_precision():
            (dense,) = region_embedding.clip_dense_at_sizes(model.backbone, canvas, (int(size),))
            embeds = region_embedding.embed_regions(
                model.backbone, dense, canvas_masks[None].to(dense.dtype)
            )[0]
        # Classification in float32 whatever the inference precision (as classify_masks).
        with torch.autocast(device_type=device.type, enabled=False):
            probs[int(size)] = classifier.classify(embeds.float()).softmax(dim=-1)
        _synchronize(device)
        seconds[int(size)] = time.perf_counter() - start
    return SegmentClassification(probs, seconds, preprocess_seconds, int(canvas.shape[-1]))


@dataclass
class _SetScore:
    """Running counts of one size set."""

    correct: int = 0
    total: int = 0
    correct_things: int = 0
    total_things: int = 0
    seconds: float = 0.0


def _fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def _check_sizes(model, sizes: Sequence[int], size_sets: Sequence[Sequence[int]]) -> None:
    stride = model.backbone.size_divisibility
    bad = [s for s in sizes if int(s) <= 0 or int(s) % stride]
    if not sizes or bad:
        raise ValueError(
            f"input sizes {list(sizes)}: give one or more positive multiples of {stride} (the "
            "backbone's stride), e.g. --sizes 768 896 1024"
        )
    outside = [list(s) for s in size_sets if not s or set(s) - {int(x) for x in sizes}]
    if outside:
        raise ValueError(f"size sets {outside} are empty or use sizes not in {list(sizes)}")


def evaluate_mask_classification(
    model,
    dataset_name: str,
    *,
    sizes: Sequence[int],
    size_sets: Sequence[Sequence[int]] | None = None,
    max_images: int | None = None,
    metadata=None,
    records: Sequence[dict] | None = None,
) -> dict:
    """Table 4 on a registered panoptic dataset: top-1 accuracy of its ground-truth masks.

    Args:
        model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` in eval mode. Its test canvas
            (``MODEL.UNIOVSEG.TEST.INPUT_SIZE``) should be the largest size: smaller sizes are
            downscaled from it, larger ones upscaled (a warning says so).
        dataset_name: A registered dataset with panoptic ground truth and class names in its
            metadata (``vocabulary`` or ``stuff_classes``).
        sizes: Input sides computed for every image.
        size_sets: The rows to report, each a set of ``sizes`` whose probabilities are averaged;
            None: :func:`default_size_sets`.
        max_images: Only the first this many images of the dataset (None: all).
        metadata: The dataset's metadata to classify with (default: the registered one; e.g. a
            copy with another vocabulary).
        records: The dataset's dicts when the caller already has them (from
            :func:`panoptic_dataset_records`); None: loaded here.

    Returns:
        A JSON-ready dict: ``dataset``, ``paper_column`` (or None), ``num_classes``,
        ``num_images`` (images classified), ``num_segments``, ``num_thing_segments``,
        ``images_without_segments``, ``skipped_images`` (list of ``{"file_name", "error"}``
        for images or labels that failed to load), and ``results``: one dict per size set with
        ``sizes``, ``top1_accuracy``, ``top1_accuracy_things``, ``top1_accuracy_stuff``
        (fractions in [0, 1], None without segments of that kind), ``seconds_per_image``, and
        the paper's ``paper_top1_accuracy_percent`` and ``paper_seconds_per_image`` (None when
        Table 4 has no such row or dataset).

    Raises:
        ValueError: bad sizes, or a dataset that is unknown, unloadable or not panoptic (see
            :func:`panoptic_dataset_records`).
    """
    sizes = sorted({int(s) for s in sizes}) if sizes else []
    size_sets = [tuple(sorted({int(s) for s in ss})) for ss in size_sets or ()] or (
        default_size_sets(sizes) if sizes else []
    )
    _check_sizes(model, sizes, size_sets)
    records = panoptic_dataset_records(dataset_name) if records is None else list(records)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        records = records[:max_images]
    metadata = MetadataCatalog.get(dataset_name) if metadata is None else metadata
    model.set_dataset_metadata(metadata)
    classifier = model.open_vocab.text_classifier
    classifier.class_embeddings()  # built (or read from the cache) before anything is timed
    things = thing_classes_from_metadata(metadata)
    scores = {s: _SetScore() for s in size_sets}
    warned_upscale = False
    num_images = images_without_segments = 0
    skipped: list[dict] = []
    for record in records:
        file_name = record.get("file_name", "?")
        try:
            segments = read_gt_segments(record, metadata)
            if not len(segments.labels):
                images_without_segments += 1
                continue
            image = read_image(file_name, format="RGB")
            if image.shape[:2] != segments.masks.shape[1:]:
                raise ValueError(
                    f"image is {image.shape[1]}x{image.shape[0]} but its panoptic PNG is "
                    f"{segments.masks.shape[2]}x{segments.masks.shape[1]}"
                )
        except (OSError, ValueError) as e:
            logger.warning("%s: skipping %s: %s", dataset_name, file_name, e)
            skipped.append({"file_name": file_name, "error": str(e)})
            continue
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        masks_t = torch.from_numpy(segments.masks)
        if num_images == 0:
            # Untimed warm-up: the first calls at each size allocate memory and pick kernels.
            classify_segments(model, image_t, masks_t, sizes)
        result = classify_segments(model, image_t, masks_t, sizes)
        if max(sizes) > result.canvas_side and not warned_upscale:
            logger.warning(
                "input size %d is larger than the test canvas %d: it is upscaled from it "
                "(set MODEL.UNIOVSEG.TEST.INPUT_SIZE %d)",
                max(sizes),
                result.canvas_side,
                max(sizes),
            )
            warned_upscale = True
        labels = torch.from_numpy(segments.labels).to(model.device)
        is_thing = torch.tensor([int(c) in things for c in segments.labels.tolist()])
        is_thing = is_thing.to(model.device)
        num_images += 1
        for size_set, score in scores.items():
            probs = torch.stack([result.probs[s] for s in size_set]).mean(dim=0)
            correct = probs.argmax(dim=1) == labels
            score.correct += int(correct.sum())
            score.total += int(correct.numel())
            score.correct_things += int(correct[is_thing].sum())
            score.total_things += int(is_thing.sum())
            score.seconds += result.preprocess_seconds + sum(result.seconds[s] for s in size_set)
    if skipped:
        logger.warning("%s: %d images skipped (see skipped_images)", dataset_name, len(skipped))
    column = metadata.get("paper_column", None)
    rows = []
    for size_set, score in scores.items():
        paper = paper_mask_classification(column, size_set)
        rows.append(
            {
                "sizes": list(size_set),
                "top1_accuracy": _fraction(score.correct, score.total),
                "top1_accuracy_things": _fraction(score.correct_things, score.total_things),
                "top1_accuracy_stuff": _fraction(
                    score.correct - score.correct_things, score.total - score.total_things
                ),
                "seconds_per_image": score.seconds / num_images if num_images else None,
                "paper_top1_accuracy_percent": None if paper is None else paper[0].value,
                "paper_seconds_per_image": None if paper is None else paper[1].value,
            }
        )
    first = next(iter(scores.values()), _SetScore())
    return {
        "dataset": dataset_name,
        "paper_column": column,
        "num_classes": classifier.num_classes,
        "num_images": num_images,
        "num_segments": first.total,
        "num_thing_segments": first.total_things,
        "images_without_segments": images_without_segments,
        "skipped_images": skipped,
        "results": rows,
    }
