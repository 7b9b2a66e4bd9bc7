"""The paper's result tables (Tables 1 and 2, promptable IoU) from detectron2 evaluation results.

Input: per method (a row label such as ``"Uni-OVSeg (this run)"`` or ``"baseline"``), the
results of ``DefaultTrainer.test`` by dataset name: ``{"sem_seg": {"mIoU": ...}}`` (detectron2's
``SemSegEvaluator``), ``{"panoptic_seg": {"PQ", "SQ", "RQ", ...}}`` (``COCOPanopticEvaluator``),
``{"promptable": {"1pt_oracle_iou", "1pt_top_iou", "1box_iou", "num_instances"}}``
(:class:`~uniovseg.evaluation.promptable_evaluator.PromptableEvaluator`). A dataset lands in the
paper's column named by its metadata key ``paper_column`` (set by
:mod:`uniovseg.data.datasets.benchmarks`); datasets without one are listed under "Other
datasets". Missing entries print as ``-``. Output: Markdown tables, numbers in percent with one
decimal as in the paper.

A last table puts every measured number beside the paper's own result for Uni-OVSeg
(:mod:`uniovseg.evaluation.paper_numbers`, with the table it comes from); a dataset or metric
the paper does not report shows ``-`` there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from uniovseg.evaluation.paper_numbers import paper_result

__all__ = [
    "PANOPTIC_COLUMNS",
    "PAPER_COMPARISON_TITLE",
    "SEMANTIC_COLUMNS",
    "format_results_table",
    "format_run_results",
    "normalize_test_results",
]

# Table 1 of the paper (mIoU), plus COCO (the panoptic annotations' semantic view, Table 3).
SEMANTIC_COLUMNS = ("A-847", "PC-459", "A-150", "PC-59", "PAS-21", "PAS-20", "Citys", "COCO")
# Table 2 of the paper (PQ, SQ, RQ for each).
PANOPTIC_COLUMNS = ("COCO", "ADE20K", "Cityscapes")
_PANOPTIC_METRICS = ("PQ", "SQ", "RQ")
_PROMPTABLE_METRICS = (
    ("1-pt IoU (oracle)", "1pt_oracle_iou"),
    ("1-pt IoU (top score)", "1pt_top_iou"),
    ("1-box IoU", "1box_iou"),
)
_MISSING = "-"
PAPER_COMPARISON_TITLE = "Measured vs. the paper (Uni-OVSeg, ConvNeXt-L CLIP; - = not reported)"


def normalize_test_results(results: Mapping, dataset_names: Sequence[str]) -> dict[str, dict]:
    """Results keyed by dataset name, whatever ``DefaultTrainer.test`` returned.

    detectron2 returns ``{dataset: {task: metrics}}`` for several test datasets but the bare
    ``{task: metrics}`` for a single one; this undoes the latter.
    """
    names = list(dataset_names)
    if len(names) == 1 and names[0] not in results:
        return {names[0]: dict(results)}
    return {name: dict(results[name]) for name in names if name in results}


def _paper_column(dataset_name: str) -> str | None:
    from detectron2.data import MetadataCatalog

    if dataset_name not in MetadataCatalog.list():
        return None
    return MetadataCatalog.get(dataset_name).get("paper_column", None)


def _fmt(value) -> str:
    if value is None:
        return _MISSING
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.1f}"


def _diff(measured, paper) -> str:
    if measured is None or paper is None or math.isnan(float(measured)):
        return _MISSING
    return f"{float(measured) - paper.value:+.1f}"


def _paper_comparison_rows(
    method: str, name: str, column: str | None, result: Mapping
) -> list[list[str]]:
    """[method, dataset, metric, measured, paper, difference, source] per measured metric."""
    measured = []
    if result.get("sem_seg") is not None:
        measured.append(("mIoU", "mIoU", result["sem_seg"].get("mIoU")))
    if result.get("panoptic_seg") is not None:
        measured += [(m, m, result["panoptic_seg"].get(m)) for m in _PANOPTIC_METRICS]
    if result.get("promptable") is not None:
        measured += [(h, k, result["promptable"].get(k)) for h, k in _PROMPTABLE_METRICS]
    rows = []
    for label, key, value in measured:
        paper = paper_result(column, key)
        rows.append(
            [
                method,
                name,
                label,
                _fmt(value),
                _MISSING if paper is None else f"{paper.value:.1f}",
                _diff(value, paper),
                _MISSING if paper is None else paper.source,
            ]
        )
    return rows


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_results_table(
    rows: Mapping[str, Mapping[str, Mapping]],
    *,
    columns: Mapping[str, str] | None = None,
    compare_to_paper: bool = True,
) -> str:
    """Formats the paper's tables for one or more methods.

    Args:
        rows: method label -> dataset name -> that dataset's evaluation results.
        columns: dataset name -> paper column (e.g. ``{"my_ade_val": "A-150"}``); names not in
            it are looked up in the dataset's metadata (``paper_column``).
        compare_to_paper: Add the table of measured numbers beside the paper's
            (:data:`PAPER_COMPARISON_TITLE`).

    Returns:
        Markdown text: the semantic (mIoU) and panoptic (PQ/SQ/RQ) tables always, a promptable
        table and an "Other datasets" table when there is something to show, then (with
        ``compare_to_paper``) one row per measured metric: method, dataset, metric, measured,
        the paper's number, their difference and the paper's table (``-`` where the paper
        reports nothing for that dataset and metric).
    """
    columns = dict(columns or {})

    def column_of(name: str) -> str | None:
        return columns[name] if name in columns else _paper_column(name)

    semantic_rows, panoptic_rows, promptable_rows, other_rows = [], [], [], []
    comparison_rows = []
    for method, by_dataset in rows.items():
        semantic: dict[str, float] = {}
        panoptic: dict[str, Mapping] = {}
        for name, result in by_dataset.items():
            column = column_of(name)
            comparison_rows += _paper_comparison_rows(method, name, column, result)
            sem, pan, prompt = (result.get(k) for k in ("sem_seg", "panoptic_seg", "promptable"))
            if sem is not None and column in SEMANTIC_COLUMNS:
                semantic[column] = sem.get("mIoU")
            if pan is not None and column in PANOPTIC_COLUMNS:
                panoptic[column] = pan
            if prompt is not None:
                promptable_rows.append(
                    [method, name]
                    + [_fmt(prompt.get(key)) for _, key in _PROMPTABLE_METRICS]
                    + [str(prompt.get("num_instances", _MISSING))]
                )
            in_paper = (sem is not None and column in SEMANTIC_COLUMNS) or (
                pan is not None and column in PANOPTIC_COLUMNS
            )
            if (sem is not None or pan is not None) and not in_paper:
                pan = pan or {}
                other_rows.append(
                    [method, name, _fmt((sem or {}).get("mIoU"))]
                    + [_fmt(pan.get(m)) for m in _PANOPTIC_METRICS]
                )
        semantic_rows.append([method] + [_fmt(semantic.get(c)) for c in SEMANTIC_COLUMNS])
        panoptic_rows.append(
            [method]
            + [
                _fmt(panoptic.get(c, {}).get(m))
                for c in PANOPTIC_COLUMNS
                for m in _PANOPTIC_METRICS
            ]
        )

    parts = [
        "Open-vocabulary semantic segmentation (mIoU %)",
        _markdown(["Method", *SEMANTIC_COLUMNS], semantic_rows),
        "",
        "Open-vocabulary panoptic segmentation (%)",
        _markdown(
            ["Method"] + [f"{c} {m}" for c in PANOPTIC_COLUMNS for m in _PANOPTIC_METRICS],
            panoptic_rows,
        ),
    ]
    if promptable_rows:
        parts += [
            "",
            "Promptable segmentation (IoU %)",
            _markdown(
                ["Method", "Dataset"] + [h for h, _ in _PROMPTABLE_METRICS] + ["Instances"],
                promptable_rows,
            ),
        ]
    if other_rows:
        parts += [
            "",
            "Other datasets (%)",
            _markdown(["Method", "Dataset", "mIoU", *_PANOPTIC_METRICS], other_rows),
        ]
    if compare_to_paper and comparison_rows:
        parts += [
            "",
            PAPER_COMPARISON_TITLE,
            _markdown(
                ["Method", "Dataset", "Metric", "Measured", "Paper", "Difference", "Source"],
                comparison_rows,
            ),
        ]
    return "\n".join(parts)


def format_run_results(
    results_by_dataset: Mapping[str, Mapping],
    *,
    method: str = "Uni-OVSeg (this run)",
    columns: Mapping[str, str] | None = None,
    compare_to_paper: bool = True,
) -> str:
    """:func:`format_results_table` for a single method (one ``--eval-only`` run)."""
    return format_results_table(
        {method: results_by_dataset}, columns=columns, compare_to_paper=compare_to_paper
    )
