"""Uni-OVSeg's own results as printed in the paper (ConvNeXt-L CLIP; 30% of SA-1B and 1.3M
image-text pairs), to print beside measured ones.

Keys are the paper's column names, the ones datasets carry in their metadata as ``paper_column``
(:mod:`uniovseg.data.datasets.benchmarks`). Values are percentages, as printed. Where each
number comes from:

* Table 1 (open-vocabulary semantic segmentation, mIoU), row "Uni-OVSeg (Ours)": A-847, PC-459,
  A-150, PC-59, PAS-21, PAS-20, Citys.
* Table 2 (open-vocabulary panoptic segmentation, PQ / SQ / RQ), row "Uni-OVSeg (Ours)": COCO,
  ADE20K, Cityscapes.
* Table 3 (ablation of mask-text alignment), last row (refinement, GPT parser, multi-scale: the
  full model): COCO mIoU 42.7, the only semantic COCO number (its COCO PQ 18.0 and PC-59 mIoU
  50.9 are Tables 1 and 2's).
* Table 4 (classification of ground-truth masks by CLIP mask pooling, top-1 accuracy and seconds
  per sample) by input size or size ensemble: ADE20K, COCO.

The promptable results (Fig. 3, 7-9: 1-point and 1-box IoU) are bar charts without printed
values, so none is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "MASK_CLASSIFICATION",
    "PAPER_RESULTS",
    "PaperNumber",
    "paper_mask_classification",
    "paper_result",
]


class PaperNumber(NamedTuple):
    """A number of the paper: ``value`` (percent, or seconds for times) and ``source`` (the
    table it is printed in, e.g. ``"Table 1"``)."""

    value: float
    source: str


def _row(source: str, values: dict[tuple[str, str], float]) -> dict[tuple[str, str], PaperNumber]:
    return {key: PaperNumber(value, source) for key, value in values.items()}


# (paper column, metric) -> the paper's number. Metrics are named as detectron2's evaluators name
# them ("mIoU" of SemSegEvaluator; "PQ", "SQ", "RQ" of COCOPanopticEvaluator).
PAPER_RESULTS: dict[tuple[str, str], PaperNumber] = {
    **_row(
        "Table 1",
        {
            ("A-847", "mIoU"): 13.5,
            ("PC-459", "mIoU"): 18.5,
            ("A-150", "mIoU"): 32.6,
            ("PC-59", "mIoU"): 50.9,
            ("PAS-21", "mIoU"): 78.9,
            ("PAS-20", "mIoU"): 91.9,
            ("Citys", "mIoU"): 39.7,
        },
    ),
    **_row("Table 3", {("COCO", "mIoU"): 42.7}),
    **_row(
        "Table 2",
        {
            ("COCO", "PQ"): 18.0,
            ("COCO", "SQ"): 72.6,
            ("COCO", "RQ"): 24.3,
            ("ADE20K", "PQ"): 14.1,
            ("ADE20K", "SQ"): 66.1,
            ("ADE20K", "RQ"): 19.0,
            ("Cityscapes", "PQ"): 17.5,
            ("Cityscapes", "SQ"): 65.2,
            ("Cityscapes", "RQ"): 23.5,
        },
    ),
}

# Table 4: input sizes (one, or an ensemble) -> top-1 accuracy (%) on ADE20K and COCO, and the
# time per sample (seconds; the paper's GPU, not stated).
MASK_CLASSIFICATION: dict[tuple[int, ...], dict[str, float]] = {
    (768,): {"ADE20K": 45.2, "COCO": 49.0, "seconds": 0.10},
    (896,): {"ADE20K": 48.3, "COCO": 53.4, "seconds": 0.13},
    (1024,): {"ADE20K": 50.0, "COCO": 55.5, "seconds": 0.16},
    (768, 896): {"ADE20K": 49.2, "COCO": 55.2, "seconds": 0.20},
    (896, 1024): {"ADE20K": 51.3, "COCO": 58.3, "seconds": 0.26},
    (768, 896, 1024): {"ADE20K": 51.6, "COCO": 58.4, "seconds": 0.35},
}
# Table 4's ADE20K column: ADE20K-150's masks, registered as a panoptic set (paper column
# "ADE20K") and as a semantic one ("A-150").
_MASK_CLASSIFICATION_COLUMNS = {"ADE20K": "ADE20K", "A-150": "ADE20K", "COCO": "COCO"}


def paper_result(column: str | None, metric: str) -> PaperNumber | None:
    """The paper's number for a dataset's column and a metric, or None when it reports none.

    Args:
        column: The dataset's paper column (metadata ``paper_column``), or None.
        metric: ``"mIoU"``, ``"PQ"``, ``"SQ"`` or ``"RQ"`` (anything else: None).
    """
    if column is None:
        return None
    return PAPER_RESULTS.get((column, metric))


def paper_mask_classification(
    column: str | None, sizes: Iterable[int]
) -> tuple[PaperNumber, PaperNumber] | None:
    """Table 4's (top-1 accuracy %, seconds per sample) for a dataset column and input sizes.

    Args:
        column: The dataset's paper column (``"COCO"``, ``"ADE20K"`` or ``"A-150"`` have one).
        sizes: The input sizes of one row, in any order (e.g. ``[896, 1024]``).

    Returns:
        The two numbers, or None when Table 4 has no such dataset or size set.
    """
    dataset = _MASK_CLASSIFICATION_COLUMNS.get(column or "")
    row = MASK_CLASSIFICATION.get(tuple(sorted(int(s) for s in sizes)))
    if dataset is None or row is None:
        return None
    return PaperNumber(row[dataset], "Table 4"), PaperNumber(row["seconds"], "Table 4")
