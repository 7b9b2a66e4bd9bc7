"""tools/classify_gt_masks.py and uniovseg.evaluation.mask_classification (the paper's Table 4) on
a tiny generated world with a tiny random model: the JSON it writes, the size sets, the counting
of correct segments, and the errors and skips on bad input."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from uniovseg.data.datasets.synthetic import register_synthetic_world
from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world
from uniovseg.evaluation import mask_classification
from uniovseg.evaluation.mask_classification import (
    SegmentClassification,
    default_size_sets,
    evaluate_mask_classification,
    panoptic_dataset_records,
    read_gt_segments,
)
from uniovseg.evaluation.paper_numbers import MASK_CLASSIFICATION, paper_mask_classification
from uniovseg.modeling.build import build_inference_model

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")


def _tool():
    spec = importlib.util.spec_from_file_location(
        "classify_gt_masks", ROOT / "tools" / "classify_gt_masks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gtcls_world"))
    generate_synthetic_world(
        root,
        world=load_world(None),
        seed=3,
        counts=SplitCounts(sa1b=0, captions=0, eval=3, pretrain=0),
        image_size=64,
        progress=False,
    )
    register_synthetic_world(root, prefix="gtcls")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model, _ = build_inference_model(
        TINY, opts=["MODEL.UNIOVSEG.TEST.INPUT_SIZE", "96"], device="cpu"
    )
    return model


def test_default_size_sets_are_table_4s_rows():
    assert default_size_sets([1024, 768, 896]) == list(MASK_CLASSIFICATION)
    assert default_size_sets([64]) == [(64,)]
    assert paper_mask_classification("COCO", [1024, 896]) == ((58.3, "Table 4"), (0.26, "Table 4"))
    assert paper_mask_classification("ADE20K", [768])[0].value == 45.2
    assert paper_mask_classification("PC-59", [768]) is None
    assert paper_mask_classification("COCO", [640]) is None


def test_sizes_and_size_sets_from_the_command_line():
    tool = _tool()
    assert tool.split_sizes(["64", "96", "MODEL.DEVICE", "cpu"]) == (
        [64, 96],
        ["MODEL.DEVICE", "cpu"],
    )
    assert tool.split_sizes(["64"]) == ([64], [])
    with pytest.raises(ValueError, match="expected input sides"):
        tool.split_sizes(["MODEL.DEVICE", "cpu"])
    assert tool.size_sets_from_args([64, 96, 128], None) is None  # the default sets
    singles = [(64,), (96,), (128,)]
    assert tool.size_sets_from_args([64, 96, 128], None, no_ensembles=True) == singles
    assert tool.size_sets_from_args([64, 96, 128], ["128,64"]) == [*singles, (64, 128)]


def test_tool_end_to_end_writes_the_table_as_json(world, tmp_path, capsys):
    output = tmp_path / "table4.json"
    status = _tool().main(
        [
            "--config-file", TINY, "--dataset", "gtcls_panoptic_val", "--max-images", "2",
            "--output", str(output), "--device", "cpu",
            # config overrides may follow the sizes (argparse gives them to --sizes)
            "--sizes", "64", "96", "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "4",
        ]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| 64, 96 " in printed and "Paper top-1 (%)" in printed
    result = json.loads(output.read_text())
    assert result["dataset"] == "gtcls_panoptic_val" and result["device"] == "cpu"
    assert result["sizes"] == [64, 96]
    assert result["num_images"] == 2 and result["skipped_images"] == []
    assert result["num_classes"] == len(MetadataCatalog.get("gtcls_panoptic_val").stuff_classes)
    records = DatasetCatalog.get("gtcls_panoptic_val")[:2]
    expected = sum(len(read_gt_segments(r, MetadataCatalog.get("gtcls_panoptic_val")).labels)
                   for r in records)  # fmt: skip
    assert result["num_segments"] == expected > 0
    assert [row["sizes"] for row in result["results"]] == [[64], [96], [64, 96]]
    for row in result["results"]:
        for key in ("top1_accuracy", "top1_accuracy_things", "top1_accuracy_stuff"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0
        assert 0.0 <= row["top1_accuracy"] <= 1.0
        assert row["seconds_per_image"] > 0
        # The synthetic world is not in the paper.
        assert row["paper_top1_accuracy_percent"] is None
        assert row["paper_seconds_per_image"] is None
    # A set's time counts each of its sizes.
    times = {tuple(r["sizes"]): r["seconds_per_image"] for r in result["results"]}
    assert times[(64, 96)] > max(times[(64,)], times[(96,)])


def test_tool_refuses_unknown_and_non_panoptic_datasets_and_bad_sizes(world, capsys):
    tool = _tool()
    assert tool.main(["--config-file", TINY, "--dataset", "no_such_dataset"]) == 2
    error = capsys.readouterr().err
    assert "'no_such_dataset' is not registered" in error and "gtcls_panoptic_val" in error
    assert tool.main(["--config-file", TINY, "--dataset", "gtcls_sem_seg_val"]) == 2
    assert "has no panoptic annotations" in capsys.readouterr().err
    args = ["--config-file", TINY, "--dataset", "gtcls_panoptic_val", "--sizes", "64"]
    assert tool.main([*args, "--ensemble", "64,128"]) == 2
    assert "--ensemble '64,128'" in capsys.readouterr().err
    assert tool.main([*args, "--ensemble", "64", "--no-ensembles"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert tool.main([*args, "--max-images", "0"]) == 2
    assert "--max-images" in capsys.readouterr().err


def test_sizes_must_fit_the_backbone_stride(world, model):
    with pytest.raises(ValueError, match="multiples of 32"):
        evaluate_mask_classification(model, "gtcls_panoptic_val", sizes=[64, 100])
    with pytest.raises(ValueError, match="size sets"):
        evaluate_mask_classification(model, "gtcls_panoptic_val", sizes=[64], size_sets=[[96]])


def test_images_that_fail_to_load_are_skipped_and_logged(world, model, tmp_path, caplog):
    records = panoptic_dataset_records("gtcls_panoptic_val")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    bad = [
        dict(records[0], file_name=str(tmp_path / "missing.jpg")),
        dict(records[1], file_name=str(corrupt)),
        dict(records[1], pan_seg_file_name=str(tmp_path / "missing.png")),
    ]
    with caplog.at_level("WARNING", logger="uniovseg.evaluation.mask_classification"):
        result = evaluate_mask_classification(
            model, "gtcls_panoptic_val", sizes=[64], records=[*bad, records[2]]
        )
    assert result["num_images"] == 1
    assert [s["file_name"] for s in result["skipped_images"]] == [
        str(tmp_path / "missing.jpg"),
        str(corrupt),
        records[1]["file_name"],
    ]
    assert "skipping" in caplog.text and "missing.jpg" in caplog.text


def test_accuracies_count_the_ensembles_argmax(world, model, monkeypatch):
    """A stand-in classifier whose answers are known: at size 64 every segment is called class
    ``k`` (probability 0.7), at 96 class ``j`` (0.6); their mean picks ``k``."""
    metadata = MetadataCatalog.get("gtcls_panoptic_val")
    records = DatasetCatalog.get("gtcls_panoptic_val")
    labels = np.concatenate([read_gt_segments(r, metadata).labels for r in records])
    num_classes = len(metadata.stuff_classes)
    k = int(np.bincount(labels).argmax())
    j = (k + 1) % num_classes

    def probs(count: int, winner: int, top: float) -> torch.Tensor:
        out = torch.full((count, num_classes), (1 - top) / (num_classes - 1))
        out[:, winner] = top
        return out

    def fake_classify(model, image, masks, sizes):
        n = masks.shape[0]
        return SegmentClassification(
            {64: probs(n, k, 0.7), 96: probs(n, j, 0.6)}, {64: 0.5, 96: 1.5}, 0.25, 96
        )

    monkeypatch.setattr(mask_classification, "classify_segments", fake_classify)
    result = evaluate_mask_classification(model, "gtcls_panoptic_val", sizes=[64, 96])
    things = {int(v) for v in metadata.thing_dataset_id_to_contiguous_id.values()}
    is_thing = np.array([int(c) in things for c in labels])
    rows = {tuple(r["sizes"]): r for r in result["results"]}
    assert result["num_segments"] == len(labels)
    assert result["num_thing_segments"] == int(is_thing.sum())
    assert rows[(64,)]["top1_accuracy"] == pytest.approx(float(np.mean(labels == k)))
    assert rows[(96,)]["top1_accuracy"] == pytest.approx(float(np.mean(labels == j)))
    assert rows[(64, 96)]["top1_accuracy"] == rows[(64,)]["top1_accuracy"]
    if is_thing.any():
        assert rows[(64,)]["top1_accuracy_things"] == pytest.approx(
            float(np.mean(labels[is_thing] == k))
        )
    if (~is_thing).any():
        assert rows[(64,)]["top1_accuracy_stuff"] == pytest.approx(
            float(np.mean(labels[~is_thing] == k))
        )
    assert rows[(64,)]["seconds_per_image"] == pytest.approx(0.75)
    assert rows[(64, 96)]["seconds_per_image"] == pytest.approx(2.25)
