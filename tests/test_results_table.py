"""The paper-layout results tables printed after ``train_net.py --eval-only``."""

from __future__ import annotations

import math

from uniovseg.data.datasets.benchmarks import register_all_benchmarks
from uniovseg.evaluation.paper_numbers import paper_result
from uniovseg.evaluation.results_table import (
    PANOPTIC_COLUMNS,
    PAPER_COMPARISON_TITLE,
    SEMANTIC_COLUMNS,
    format_results_table,
    format_run_results,
    normalize_test_results,
)


def _rows(text: str, title: str) -> list[list[str]]:
    """The cells of the Markdown table under ``title``."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return [table[0]] + table[2:]  # header + rows (skip the rule)


def test_normalize_test_results_handles_detectron2s_single_dataset_unnesting():
    single = {"sem_seg": {"mIoU": 1.0}}
    assert normalize_test_results(single, ["a"]) == {"a": single}
    several = {"a": single, "b": {"panoptic_seg": {"PQ": 2.0}}}
    assert normalize_test_results(several, ["a", "b"]) == several


def test_paper_layout_from_registered_metadata(tmp_path):
    register_all_benchmarks(str(tmp_path), prefix="table_")
    results = {
        "table_ade20k_847_sem_seg_val": {"sem_seg": {"mIoU": 13.54}},
        "table_pascal_voc_20_sem_seg_val": {"sem_seg": {"mIoU": 91.94}},
        "table_coco_panoptic_val": {"panoptic_seg": {"PQ": 18.04, "SQ": 72.61, "RQ": 24.3}},
        "table_cityscapes_panoptic_val": {"panoptic_seg": {"PQ": 17.5, "SQ": 65.2, "RQ": math.nan}},
    }
    text = format_run_results(results, method="ours")
    semantic = _rows(text, "Open-vocabulary semantic segmentation (mIoU %)")
    assert semantic[0] == ["Method", *SEMANTIC_COLUMNS]
    assert semantic[1] == ["ours", "13.5", "-", "-", "-", "-", "91.9", "-", "-"]
    panoptic = _rows(text, "Open-vocabulary panoptic segmentation (%)")
    assert len(panoptic[0]) == 1 + 3 * len(PANOPTIC_COLUMNS)
    assert panoptic[1] == ["ours", "18.0", "72.6", "24.3", "-", "-", "-", "17.5", "65.2", "nan"]
    assert "Promptable" not in text and "Other datasets" not in text


def test_several_methods_promptable_and_other_datasets():
    rows = {
        "baseline": {
            "x_sem": {"sem_seg": {"mIoU": 10.0}},
            "x_pan": {"panoptic_seg": {"PQ": 5.0, "SQ": 50.0, "RQ": 10.0}},
            "x_prompt": {
                "promptable": {
                    "1pt_oracle_iou": 70.0,
                    "1pt_top_iou": 60.0,
                    "1box_iou": 80.0,
                    "num_instances": 7,
                }
            },
        },
        "aligned": {"x_sem": {"sem_seg": {"mIoU": 20.0}}},
    }
    text = format_results_table(rows, columns={"x_sem": "PC-59"})
    semantic = _rows(text, "Open-vocabulary semantic segmentation (mIoU %)")
    assert [r[0] for r in semantic[1:]] == ["baseline", "aligned"]
    assert semantic[1][4] == "10.0" and semantic[2][4] == "20.0"  # PC-59 column
    assert _rows(text, "Promptable segmentation (IoU %)")[1] == [
        "baseline",
        "x_prompt",
        "70.0",
        "60.0",
        "80.0",
        "7",
    ]
    assert _rows(text, "Other datasets (%)")[1:] == [
        ["baseline", "x_pan", "-", "5.0", "50.0", "10.0"]
    ]


def test_paper_numbers_beside_the_measured_ones(tmp_path):
    register_all_benchmarks(str(tmp_path), prefix="paper_")
    results = {
        "paper_ade20k_150_sem_seg_val": {"sem_seg": {"mIoU": 30.04}},
        "paper_coco_panoptic_sem_seg_val": {"sem_seg": {"mIoU": 40.0}},
        "paper_cityscapes_panoptic_val": {"panoptic_seg": {"PQ": 18.0, "SQ": 60.0, "RQ": math.nan}},
        "my_own_val": {"sem_seg": {"mIoU": 12.3}},
        "x_prompt": {"promptable": {"1pt_oracle_iou": 70.0, "num_instances": 3}},
    }
    text = format_run_results(results, method="ours")
    rows = _rows(text, PAPER_COMPARISON_TITLE)
    assert rows[0] == ["Method", "Dataset", "Metric", "Measured", "Paper", "Difference", "Source"]
    by_key = {(r[1], r[2]): r[3:] for r in rows[1:]}
    assert by_key[("paper_ade20k_150_sem_seg_val", "mIoU")] == ["30.0", "32.6", "-2.6", "Table 1"]
    assert by_key[("paper_coco_panoptic_sem_seg_val", "mIoU")] == [
        "40.0",
        "42.7",
        "-2.7",
        "Table 3",
    ]
    assert by_key[("paper_cityscapes_panoptic_val", "PQ")] == ["18.0", "17.5", "+0.5", "Table 2"]
    assert by_key[("paper_cityscapes_panoptic_val", "RQ")] == ["nan", "23.5", "-", "Table 2"]
    # Datasets and metrics the paper does not report: a dash.
    assert by_key[("my_own_val", "mIoU")] == ["12.3", "-", "-", "-"]
    assert by_key[("x_prompt", "1-pt IoU (oracle)")] == ["70.0", "-", "-", "-"]
    assert PAPER_COMPARISON_TITLE not in format_run_results(results, compare_to_paper=False)


def test_paper_numbers_are_uni_ovsegs_rows():
    assert paper_result("A-847", "mIoU") == (13.5, "Table 1")
    assert paper_result("PAS-20", "mIoU").value == 91.9
    assert paper_result("ADE20K", "RQ") == (19.0, "Table 2")
    assert paper_result("COCO", "PQ").value == 18.0
    assert paper_result("ADE20K", "mIoU") is None
    assert paper_result(None, "mIoU") is None
    # Every column of the semantic and panoptic tables has its number.
    assert all(paper_result(c, "mIoU") for c in SEMANTIC_COLUMNS)
    assert all(paper_result(c, m) for c in PANOPTIC_COLUMNS for m in ("PQ", "SQ", "RQ"))
