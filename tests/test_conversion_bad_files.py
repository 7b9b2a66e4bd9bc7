"""datasets/prepare_*.py on folders with bad files: each bad file is skipped and named with its
reason, the others are converted, the exit status is 1 only when nothing could be converted,
--strict stops at the first bad file; progress bars only where asked for.

Real annotations: the 3 VOC 2011 label maps and the 2-image COCO panoptic sample in
``../shared/data/`` (skipped when absent; copied into tmp_path)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from uniovseg.data.datasets.conversion.progress import ConversionError, ConversionRun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
VOC_SAMPLE = os.path.join(SHARED, "voc_sample")
COCO_SAMPLE = os.path.join(SHARED, "coco_panoptic_sample")


def _main(name: str, *args) -> int:
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "datasets", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def _truncated_png(path, like: str) -> None:
    """The first third of a real PNG: a valid header, then the data stops."""
    data = open(like, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


# ----------------------------------------------------------------------------- VOC (real labels)
@pytest.fixture
def voc_root(tmp_path):
    if not os.path.isdir(os.path.join(VOC_SAMPLE, "SegmentationClass")):
        pytest.skip("../shared/data/voc_sample is absent")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    shutil.copytree(os.path.join(VOC_SAMPLE, "SegmentationClass"), voc / "SegmentationClass")
    good = sorted(os.path.splitext(f)[0] for f in os.listdir(voc / "SegmentationClass"))
    _truncated_png(
        voc / "SegmentationClass" / "2011_000000.png", voc / "SegmentationClass" / f"{good[0]}.png"
    )
    (voc / "SegmentationClass" / "2011_000001.png").write_text("not a PNG")
    # bad files first: --strict must stop before the good ones
    ids = ["2011_000000", "2011_000001", "2011_000002", *good]  # ..02 has no label file
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, good


def test_bad_voc_labels_are_skipped_named_and_reported(voc_root, capsys):
    root, good = voc_root
    assert _main("prepare_pascal_voc", "--root", root) == 0
    out = root / "VOCdevkit" / "VOC2012" / "annotations_detectron2"
    assert sorted(os.listdir(out / "pas21_val")) == [f"{i}.png" for i in good]
    assert sorted(os.listdir(out / "pas20_val")) == [f"{i}.png" for i in good]
    assert not list(out.rglob("*.tmp"))
    captured = capsys.readouterr()
    assert f"converted {len(good)} images" in captured.out
    report = captured.err
    assert "PASCAL VOC: 3 of 6 files skipped as bad" in report
    for bad in ("2011_000000.png", "2011_000001.png", "2011_000002.png"):
        line = next(line for line in report.splitlines() if bad in line)
        assert "SegmentationClass" in line
    assert "missing" in next(line for line in report.splitlines() if "2011_000002" in line)
    assert "not comparable with published ones" in report
    # a re-run writes nothing new and reports the same bad files
    assert _main("prepare_pascal_voc", "--root", root) == 0
    assert "converted 0 images" in capsys.readouterr().out


def test_strict_stops_at_the_first_bad_voc_label_and_names_it(voc_root, capsys):
    root, _ = voc_root
    assert _main("prepare_pascal_voc", "--root", root, "--strict") == 1
    err = capsys.readouterr().err
    assert "error: " in err and "2011_000000.png: cannot read it" in err
    assert not (root / "VOCdevkit" / "VOC2012" / "annotations_detectron2").exists()


def test_library_callers_stop_at_the_first_bad_file_with_its_name(voc_root):
    from uniovseg.data.datasets.conversion.pascal import prepare_pascal_voc

    root, _ = voc_root
    with pytest.raises(ConversionError, match="2011_000000.png"):
        prepare_pascal_voc(str(root))


# ----------------------------------------------------------------------------- COCO panoptic
@pytest.fixture
def coco_root(tmp_path):
    if not os.path.isfile(os.path.join(COCO_SAMPLE, "panoptic_examples.json")):
        pytest.skip("../shared/data/coco_panoptic_sample is absent")
    coco = tmp_path / "coco"
    shutil.copytree(os.path.join(COCO_SAMPLE, "panoptic_examples"), coco / "panoptic_val2017")
    (coco / "annotations").mkdir()
    shutil.copy(
        os.path.join(COCO_SAMPLE, "panoptic_examples.json"),
        coco / "annotations" / "panoptic_val2017.json",
    )
    return tmp_path


def test_a_corrupt_panoptic_png_is_skipped_and_the_other_converted(coco_root, capsys):
    pngs = sorted((coco_root / "coco" / "panoptic_val2017").iterdir())
    assert len(pngs) == 2
    _truncated_png(pngs[1], pngs[1])
    assert _main("prepare_coco_panoptic", "--root", coco_root) == 0
    written = os.listdir(coco_root / "coco" / "panoptic_semseg_val2017")
    assert written == [pngs[0].name]
    err = capsys.readouterr().err
    assert "1 of 2 files skipped as bad" in err and str(pngs[1]) in err


def test_nothing_converted_exits_1_with_the_report(coco_root, capsys):
    for png in (coco_root / "coco" / "panoptic_val2017").iterdir():
        png.write_bytes(b"")
    assert _main("prepare_coco_panoptic", "--root", coco_root) == 1
    err = capsys.readouterr().err
    assert "2 of 2 files skipped as bad" in err
    assert "error: no file could be converted" in err


def test_a_broken_annotation_json_is_named(coco_root, capsys):
    path = coco_root / "coco" / "annotations" / "panoptic_val2017.json"
    path.write_text(path.read_text()[:100])
    assert _main("prepare_coco_panoptic", "--root", coco_root) == 1
    err = capsys.readouterr().err
    assert f"cannot read {path}" in err


# ----------------------------------------------------------------------------- ADE20K panoptic
def test_ade20k_panoptic_leaves_a_bad_instance_map_out_of_the_json(tmp_path, capsys):
    ade = tmp_path / "ADEChallengeData2016"
    semantic = np.full((6, 8), 3, np.uint8)
    semantic[1:5, 2:4] = 13
    instance = np.zeros((6, 8, 3), np.uint8)
    instance[1:5, 2:4] = (4, 1, 0)
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        (ade / "images/validation").mkdir(parents=True, exist_ok=True)
        (ade / "annotations/validation").mkdir(parents=True, exist_ok=True)
        (ade / "annotations_instance/validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(ade / f"images/validation/{stem}.jpg")
        Image.fromarray(semantic).save(ade / f"annotations/validation/{stem}.png")
    Image.fromarray(instance).save(ade / "annotations_instance/validation/ADE_val_00000001.png")
    bad = instance.copy()
    bad[1, 2] = (9, 1, 0)  # one instance with two instance classes: not convertible
    Image.fromarray(bad).save(ade / "annotations_instance/validation/ADE_val_00000002.png")
    (ade / "categoryMapping.txt").write_text("Instance100 SceneParse150 Full\n4 13 1831\n9 13 5\n")

    assert _main("prepare_ade20k_panoptic", "--root", tmp_path, "--no-progress") == 0
    data = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    assert [image["id"] for image in data["images"]] == ["ADE_val_00000001"]
    assert [a["image_id"] for a in data["annotations"]] == ["ADE_val_00000001"]
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "ADE_val_00000002" in line)
    assert "annotations_instance" in line and "instance classes" in line


# ----------------------------------------------------------------------------- progress bars
def test_progress_bar_only_where_asked_for(capsys):
    items = list(ConversionRun(description="demo items", progress=True).track(range(3), total=3))
    assert items == [0, 1, 2]
    err = capsys.readouterr().err
    assert "demo items" in err and "3/3" in err
    for progress in (False, None):  # None: only on a terminal; pytest's stderr is not one
        assert list(ConversionRun(progress=progress).track(range(3), total=3)) == [0, 1, 2]
        assert capsys.readouterr().err == ""
