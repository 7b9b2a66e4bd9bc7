"""Benchmark registration, label conversions and the prepare scripts on tiny fake downloads.

Each fake download is written in tmp_path in the official layout; the prepare script converts it,
and the registered dataset (a ``test_`` prefix keeps the real names untouched) loads it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from uniovseg.data.datasets.benchmark_registry import LazyMetadata, register_dataset
from uniovseg.data.datasets.benchmarks import BENCHMARK_DATASETS, register_all_benchmarks
from uniovseg.data.datasets.conversion.ade20k import (
    ade20k_150_labels,
    ade20k_full_class_mask,
    ade20k_full_labels,
    ade20k_panoptic,
    read_instance_category_mapping,
    shorter_side_resize_shape,
)
from uniovseg.data.datasets.conversion.ade20k_847_ids import ADE20K_847_OBJECT_IDS
from uniovseg.data.datasets.conversion.cityscapes import cityscapes_panoptic, cityscapes_train_ids
from uniovseg.data.datasets.conversion.coco_panoptic import panoptic_to_semantic
from uniovseg.data.datasets.conversion.pascal import (
    pascal_context_59_labels,
    pascal_context_59_source_ids,
    pascal_context_459_labels,
    pascal_voc_20_labels,
    pascal_voc_21_labels,
)
from uniovseg.data.vocabulary import load_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "test_"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "datasets", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, *args: str) -> None:
    assert _script(name).main(list(args)) == 0


def _save(path, array) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


# ----------------------------------------------------------------------------- registration
def test_registration_reads_nothing_and_does_not_clash_with_detectron2(tmp_path):
    # detectron2's builtin names, listed in a fresh interpreter: importing uniovseg's dataset
    # package (done by this test module) registers our names in this one.
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import detectron2.data.datasets; from detectron2.data import DatasetCatalog; "
            "print('\\n'.join(DatasetCatalog.list()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    builtin = set(listing.stdout.split())
    assert "coco_2017_val" in builtin
    names = register_all_benchmarks(str(tmp_path / "missing"), prefix=PREFIX)
    assert names == [PREFIX + n for n in names_in_registration_order()]
    assert sorted(n[len(PREFIX) :] for n in names) == sorted(BENCHMARK_DATASETS)
    assert not set(BENCHMARK_DATASETS) & builtin
    for name in names:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type in ("sem_seg", "coco_panoptic_seg")
        assert meta.ignore_label == (
            65535 if meta.vocabulary in ("ade20k_847", "pascal_context_459") else 255
        )
        assert meta.paper_column
        with pytest.raises(ValueError, match="does not exist"):
            DatasetCatalog.get(name)


def names_in_registration_order() -> list[str]:
    return [
        "ade20k_150_sem_seg_val",
        "ade20k_847_sem_seg_val",
        "ade20k_panoptic_val",
        "pascal_context_59_sem_seg_val",
        "pascal_context_459_sem_seg_val",
        "pascal_voc_20_sem_seg_val",
        "pascal_voc_21_sem_seg_val",
        "coco_panoptic_val",
        "coco_panoptic_sem_seg_val",
        "cityscapes_sem_seg_val",
        "cityscapes_panoptic_val",
    ]


@pytest.mark.parametrize(
    "name, size",
    [
        ("ade20k_150_sem_seg_val", 150),
        ("ade20k_847_sem_seg_val", 847),
        ("pascal_context_59_sem_seg_val", 59),
        ("pascal_context_459_sem_seg_val", 459),
        ("pascal_voc_20_sem_seg_val", 20),
        ("pascal_voc_21_sem_seg_val", 21),
        ("coco_panoptic_sem_seg_val", 133),
        ("cityscapes_sem_seg_val", 19),
    ],
)
def test_semantic_class_names_come_from_the_vocabulary(tmp_path, name, size):
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)
    meta = MetadataCatalog.get(PREFIX + name)
    classes = meta.stuff_classes
    assert len(classes) == size == len(load_vocabulary(meta.vocabulary))
    assert all(c and "," not in c for c in classes)  # display names (first synonyms)


def test_lazy_metadata_loads_once_and_only_when_read():
    calls = []

    def loader():
        calls.append(1)
        return {"stuff_classes": ["a", "b"], "extra": 1}

    register_dataset(
        "test_lazy", list, {"ignore_label": 255}, lazy_loader=loader, lazy_keys=("stuff_classes",)
    )
    meta = MetadataCatalog.get("test_lazy")
    assert isinstance(meta, LazyMetadata) and not calls
    assert meta.ignore_label == 255 and not calls
    assert meta.stuff_classes == ["a", "b"] and meta.get("stuff_classes") == ["a", "b"]
    assert len(calls) == 1
    assert meta.as_dict() == {"name": "test_lazy", "ignore_label": 255, "stuff_classes": ["a", "b"]}
    assert meta.get("missing", "default") == "default"

    register_dataset("test_lazy2", list, {}, lazy_loader=dict, lazy_keys=("stuff_classes",))
    with pytest.raises(ValueError, match="did not return"):
        _ = MetadataCatalog.get("test_lazy2").stuff_classes


def test_ade20k_847_table_defines_847_distinct_classes():
    assert len(ADE20K_847_OBJECT_IDS) == 847 == len(set(ADE20K_847_OBJECT_IDS))
    # Spot checks against the dataset's own name_ndx values (per-image JSON of ADE20K_2021).
    assert ADE20K_847_OBJECT_IDS[0] == 2978  # wall
    assert ADE20K_847_OBJECT_IDS[11] == 1831  # person, individual, ...
    assert ADE20K_847_OBJECT_IDS[115] == 2836  # traffic light
    vocabulary = load_vocabulary("ade20k_847")
    assert vocabulary[11].startswith("person") and vocabulary[115].startswith("traffic light")


# ----------------------------------------------------------------------------- label functions
def test_ade20k_150_labels_shift_and_ignore():
    ann = np.array([[0, 1, 150], [2, 0, 149]], dtype=np.uint8)
    np.testing.assert_array_equal(ade20k_150_labels(ann), [[255, 0, 149], [1, 255, 148]])


def test_pascal_label_maps():
    voc = np.array([[0, 1, 20, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(pascal_voc_21_labels(voc), [[0, 1, 20, 255]])
    np.testing.assert_array_equal(pascal_voc_20_labels(voc), [[255, 0, 19, 255]])
    label_map = np.array([[0, 1, 459, 300]], dtype=np.uint16)
    out = pascal_context_459_labels(label_map)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[65535, 0, 458, 299]])
    labels_459 = {k: f"c{k}" for k in range(1, 460)}
    labels_59 = {i + 1: f"c{k}" for i, k in enumerate(range(400, 459))}  # 59 names
    labels_59[0] = "background"
    ids = pascal_context_59_source_ids(labels_459, labels_59)
    assert ids == list(range(400, 459))
    np.testing.assert_array_equal(
        pascal_context_59_labels(np.array([[0, 400, 458, 12]], dtype=np.uint16), ids),
        [[255, 0, 58, 255]],
    )
    with pytest.raises(ValueError, match="59 classes"):
        pascal_context_59_source_ids(labels_459, {1: "nope"})


def test_cityscapes_train_ids_and_panoptic_segments():
    label_ids = np.array([[7, 8, 0], [26, 33, 29]], dtype=np.uint8)
    np.testing.assert_array_equal(cityscapes_train_ids(label_ids), [[0, 1, 255], [13, 18, 255]])
    inst = np.array(
        [[7, 7, 26001, 26001], [24, 24, 26002, 0], [29001, 29001, 1, 11]], dtype=np.int32
    )
    seg_ids, segments = cityscapes_panoptic(inst)
    by_id = {s["id"]: s for s in segments}
    assert set(by_id) == {7, 11, 24, 26001, 26002}  # caravan (29), unlabelled (1), 0 -> void
    assert by_id[24]["iscrowd"] == 1 and by_id[24]["category_id"] == 24  # person w/o instance
    assert by_id[7]["iscrowd"] == 0 and by_id[26001]["iscrowd"] == 0
    assert by_id[26001]["area"] == 2 and by_id[26001]["bbox"] == [2, 0, 2, 1]
    assert seg_ids[2, 0] == 0 and seg_ids[2, 2] == 0


def test_ade20k_panoptic_things_over_stuff_and_exact_areas():
    semantic = np.array([[1, 1, 3, 3], [1, 13, 13, 0], [2, 2, 13, 13]], dtype=np.uint8)
    instance = np.zeros((3, 4, 3), dtype=np.uint8)
    instance[0, 0:2] = (4, 1, 0)  # instance class 4 -> scene-parse 13 (person), on wall pixels
    instance[1, 1:3] = (4, 2, 0)
    mapping = {4: 13, 9: 21}
    seg_ids, segments = ade20k_panoptic(semantic, instance, mapping)
    by_id = {s["id"]: s for s in segments}
    assert set(by_id) == {1000, 2000, 3000, 13001, 13002}
    assert by_id[1000]["area"] == 1  # wall lost 2 pixels to the person instance
    assert by_id[13001]["area"] == 2 and by_id[13001]["category_id"] == 13
    assert seg_ids[2, 2] == 0 and seg_ids[2, 3] == 0  # person pixels without an instance: void
    assert sum(s["area"] for s in segments) == int((seg_ids > 0).sum())


def test_panoptic_to_semantic_keeps_crowd_and_voids_unknown():
    seg = np.array([[0, 5, 5], [9, 9, 77]])
    info = [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 200, "iscrowd": 1}]
    out = panoptic_to_semantic(seg, info, {1: 0, 200: 132})
    np.testing.assert_array_equal(out, [[255, 0, 0], [132, 132, 255]])


def test_ade20k_full_decoding_and_resize_rule():
    seg = np.zeros((1, 3, 3), dtype=np.uint8)
    seg[0, 1] = (10, 2, 0)  # 1 * 256 + 2 = 258
    seg[0, 2] = (34, 255, 0)  # 34 // 10 * 256 + 255 = 1023
    values = ade20k_full_class_mask(seg)
    np.testing.assert_array_equal(values, [[0, 258, 1023]])
    np.testing.assert_array_equal(
        ade20k_full_labels(values, {258: 7}), np.array([[65535, 7, 65535]], dtype=np.uint16)
    )
    assert shorter_side_resize_shape(400, 300, 512) == (400, 300)
    assert shorter_side_resize_shape(600, 1000, 512) == (512, 853)
    assert shorter_side_resize_shape(1000, 600, 512) == (853, 512)


def test_instance_category_mapping_parser(tmp_path):
    path = tmp_path / "categoryMapping.txt"
    path.write_text(
        "Instacne100\tSceneParse150\tFullADE20K\n1\t\t8\t\t165\n5\t\t15\t\t774\n5\t\t15\t\t783\n"
    )
    assert read_instance_category_mapping(str(path)) == {1: 8, 5: 15}
    path.write_text("header\n1 8 1\n1 9 2\n")
    with pytest.raises(ValueError, match="maps to"):
        read_instance_category_mapping(str(path))


# ----------------------------------------------------------------------------- fake downloads
def test_prepare_ade20k_sem_seg_and_panoptic(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    semantic = np.zeros((6, 8), dtype=np.uint8)
    semantic[:3] = 1  # wall (stuff)
    semantic[3:] = 3  # sky (stuff)
    semantic[1:5, 2:4] = 13  # person (thing)
    instance = np.zeros((6, 8, 3), dtype=np.uint8)
    instance[1:5, 2:4] = (4, 1, 0)
    _save(str(ade / "images/validation/ADE_val_00000001.jpg"), _image(6, 8))
    _save(str(ade / "annotations/validation/ADE_val_00000001.png"), semantic)
    _save(str(ade / "annotations_instance/validation/ADE_val_00000001.png"), instance)
    (ade / "categoryMapping.txt").write_text("Instance100 SceneParse150 Full\n4 13 1831\n")

    _run("prepare_ade20k_sem_seg", "--root", str(tmp_path))
    _run("prepare_ade20k_panoptic", "--root", str(tmp_path))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)

    (record,) = DatasetCatalog.get(PREFIX + "ade20k_150_sem_seg_val")
    assert record["file_name"] == str(ade / "images/validation/ADE_val_00000001.jpg")
    np.testing.assert_array_equal(_read(record["sem_seg_file_name"]), ade20k_150_labels(semantic))

    (pan,) = DatasetCatalog.get(PREFIX + "ade20k_panoptic_val")
    assert pan["image_id"] == "ADE_val_00000001" and (pan["height"], pan["width"]) == (6, 8)
    assert pan["sem_seg_file_name"] == record["sem_seg_file_name"]
    segs = {s["id"]: s for s in pan["segments_info"]}
    assert segs[13001]["isthing"] and segs[13001]["category_id"] == 12  # contiguous = id - 1
    assert not segs[1000]["isthing"] and segs[1000]["category_id"] == 0
    meta = MetadataCatalog.get(PREFIX + "ade20k_panoptic_val")
    assert meta.thing_dataset_id_to_contiguous_id == {13: 12}
    assert len(meta.stuff_dataset_id_to_contiguous_id) == 149
    assert meta.thing_classes == meta.stuff_classes and meta.stuff_classes[12] == "person"


def test_prepare_ade20k_full(tmp_path):
    folder = "ADE20K_2021_17_01/images/ADE/validation/misc"
    objectnames = [f"object {i}" for i in range(1, 3689)]
    base = tmp_path / folder
    image = _image(600, 700)
    seg = np.zeros((600, 700, 3), dtype=np.uint8)
    wall = ADE20K_847_OBJECT_IDS[0]  # 2978 = 11 * 256 + 162
    seg[:300] = (wall // 256 * 10, wall % 256, 0)
    seg[300:, :350] = (0, 5, 7)  # object 5: not among the 847 -> ignore
    _save(str(base / "ADE_val_00000001.jpg"), image)
    _save(str(base / "ADE_val_00000001_seg.png"), seg)
    _save(str(base / "ADE_train_00000001.jpg"), _image(8, 8))
    index = {
        "folder": [folder, folder],
        "filename": ["ADE_val_00000001.jpg", "ADE_train_00000001.jpg"],
        "objectnames": objectnames,
    }
    with open(tmp_path / "ADE20K_2021_17_01/index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)

    _run("prepare_ade20k_full", "--root", str(tmp_path))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)
    (record,) = DatasetCatalog.get(PREFIX + "ade20k_847_sem_seg_val")
    assert record["sem_seg_file_name"].endswith(
        "annotations_detectron2/validation/ADE_val_00000001.tif"
    )
    with Image.open(record["sem_seg_file_name"]) as im:
        assert im.mode == "I;16"
        labels = np.array(im)
    assert labels.shape == (512, 597) and _read(record["file_name"]).shape == (512, 597, 3)
    assert set(np.unique(labels[:250]).tolist()) == {0}
    assert set(np.unique(labels[262:, 300:]).tolist()) == {65535}
    assert set(np.unique(labels[262:, :290]).tolist()) == {65535}
    names = (tmp_path / "ADE20K_2021_17_01/classes_847.txt").read_text().splitlines()
    assert len(names) == 847 and names[0] == objectnames[wall - 1]


def test_prepare_pascal_context_and_voc(tmp_path):
    import scipy.io

    voc10 = tmp_path / "VOCdevkit/VOC2010"
    label_map = np.zeros((5, 6), dtype=np.uint16)
    label_map[0] = 2  # aeroplane (in the 59)
    label_map[1] = 3  # a class outside the 59
    label_map[2] = 459
    os.makedirs(voc10 / "trainval")
    scipy.io.savemat(str(voc10 / "trainval/2008_000002.mat"), {"LabelMap": label_map})
    (voc10 / "labels.txt").write_text(
        "\n".join(f"{k}: {'aeroplane' if k == 2 else f'class{k}'}" for k in range(1, 460)) + "\n"
    )
    names59 = ["aeroplane"] + [f"class{k}" for k in range(400, 458)]
    (voc10 / "59_labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names59, 1)))
    os.makedirs(voc10 / "ImageSets/Main")
    (voc10 / "ImageSets/Main/val.txt").write_text("2008_000002\n")
    _save(str(voc10 / "JPEGImages/2008_000002.jpg"), _image(5, 6))
    _save(str(voc10 / "JPEGImages/2008_000003.jpg"), _image(5, 6))  # a train image: not listed

    voc12 = tmp_path / "VOCdevkit/VOC2012"
    cls = np.array([[0, 0, 15], [15, 255, 3]], dtype=np.uint8)
    palette_png = Image.fromarray(cls, mode="P")
    palette_png.putpalette([0, 0, 0, 128, 0, 0] * 128)
    os.makedirs(voc12 / "SegmentationClass")
    palette_png.save(voc12 / "SegmentationClass/2007_000033.png")
    os.makedirs(voc12 / "ImageSets/Segmentation")
    (voc12 / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    _save(str(voc12 / "JPEGImages/2007_000033.jpg"), _image(2, 3))

    _run("prepare_pascal_context", "--root", str(tmp_path))
    _run("prepare_pascal_voc", "--root", str(tmp_path))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)

    (pc459,) = DatasetCatalog.get(PREFIX + "pascal_context_459_sem_seg_val")
    assert pc459["file_name"] == str(voc10 / "JPEGImages/2008_000002.jpg")
    with Image.open(pc459["sem_seg_file_name"]) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.array(im), pascal_context_459_labels(label_map))
    (pc59,) = DatasetCatalog.get(PREFIX + "pascal_context_59_sem_seg_val")
    expected = np.full((5, 6), 255, dtype=np.uint8)  # classes 3 and 459 are not in the 59
    expected[0] = 0  # aeroplane, the first of the 59
    np.testing.assert_array_equal(_read(pc59["sem_seg_file_name"]), expected)

    (pas21,) = DatasetCatalog.get(PREFIX + "pascal_voc_21_sem_seg_val")
    (pas20,) = DatasetCatalog.get(PREFIX + "pascal_voc_20_sem_seg_val")
    np.testing.assert_array_equal(_read(pas21["sem_seg_file_name"]), cls)
    np.testing.assert_array_equal(_read(pas20["sem_seg_file_name"]), [[255, 255, 14], [14, 255, 2]])


def test_prepare_coco_panoptic_semantic_view(tmp_path):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from panopticapi.utils import id2rgb

    coco = tmp_path / "coco"
    seg = np.array([[0, 10, 10], [20, 20, 30]], dtype=np.int64)
    _save(str(coco / "panoptic_val2017/000000000001.png"), id2rgb(seg))
    _save(str(coco / "val2017/000000000001.jpg"), _image(2, 3))
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 2, "width": 3}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "000000000001.png",
                "segments_info": [
                    {"id": 10, "category_id": 1, "iscrowd": 0, "area": 2, "bbox": [1, 0, 2, 1]},
                    {"id": 20, "category_id": 92, "iscrowd": 0, "area": 2, "bbox": [0, 1, 2, 1]},
                    {"id": 30, "category_id": 200, "iscrowd": 1, "area": 1, "bbox": [2, 1, 1, 1]},
                ],
            }
        ],
        "categories": [
            {"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in COCO_CATEGORIES
        ],
    }
    os.makedirs(coco / "annotations")
    (coco / "annotations/panoptic_val2017.json").write_text(json.dumps(data))

    _run("prepare_coco_panoptic", "--root", str(tmp_path))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)
    (sem,) = DatasetCatalog.get(PREFIX + "coco_panoptic_sem_seg_val")
    np.testing.assert_array_equal(_read(sem["sem_seg_file_name"]), [[255, 0, 0], [80, 80, 132]])
    (pan,) = DatasetCatalog.get(PREFIX + "coco_panoptic_val")
    assert pan["image_id"] == 1 and pan["sem_seg_file_name"] == sem["sem_seg_file_name"]
    assert [(s["category_id"], s["isthing"]) for s in pan["segments_info"]] == [
        (0, True),
        (80, False),
        (132, False),
    ]


def test_prepare_cityscapes(tmp_path):
    city = tmp_path / "cityscapes"
    stem = "frankfurt_000000_000294"
    label_ids = np.array([[7, 7, 26, 26], [24, 24, 26, 0]], dtype=np.uint8)
    instance_ids = np.array([[7, 7, 26001, 26001], [24, 24, 26002, 0]], dtype=np.uint16)
    gt = city / "gtFine/val/frankfurt"
    _save(str(gt / f"{stem}_gtFine_labelIds.png"), label_ids)
    _save(str(gt / f"{stem}_gtFine_instanceIds.png"), instance_ids)
    _save(str(city / f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png"), _image(2, 4))

    _run("prepare_cityscapes", "--root", str(tmp_path))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)
    (sem,) = DatasetCatalog.get(PREFIX + "cityscapes_sem_seg_val")
    assert sem["image_id"] == stem
    np.testing.assert_array_equal(_read(sem["sem_seg_file_name"]), cityscapes_train_ids(label_ids))
    (pan,) = DatasetCatalog.get(PREFIX + "cityscapes_panoptic_val")
    assert (
        pan["file_name"] == sem["file_name"]
        and pan["sem_seg_file_name"] == sem["sem_seg_file_name"]
    )
    segs = {s["id"]: (s["category_id"], s["isthing"], s["iscrowd"]) for s in pan["segments_info"]}
    assert segs == {7: (0, False, 0), 24: (11, True, 1), 26001: (13, True, 0), 26002: (13, True, 0)}
    meta = MetadataCatalog.get(PREFIX + "cityscapes_panoptic_val")
    assert meta.thing_dataset_id_to_contiguous_id[26] == 13 and meta.stuff_classes[0] == "road"


def test_16bit_labels_with_ignore_65535_through_sem_seg_evaluator(tmp_path):
    """PC-459 (459 classes, uint16 TIFF, 65535 = ignore) as converted, in detectron2's
    SemSegEvaluator: ground truth scores 100; a relabelled class gives the hand-computed mIoU."""
    import scipy.io
    import torch
    from detectron2.evaluation import SemSegEvaluator

    voc10 = tmp_path / "VOCdevkit/VOC2010"
    label_map = np.zeros((5, 6), dtype=np.uint16)
    label_map[0], label_map[1], label_map[2] = 2, 3, 459  # labels 1, 2, 458; rows 3-4 ignored
    os.makedirs(voc10 / "trainval")
    scipy.io.savemat(str(voc10 / "trainval/x.mat"), {"LabelMap": label_map})
    (voc10 / "labels.txt").write_text("".join(f"{k}: c{k}\n" for k in range(1, 460)))
    (voc10 / "59_labels.txt").write_text("".join(f"{k}: c{k}\n" for k in range(1, 60)))
    split = tmp_path / "val.txt"
    split.write_text("x\n")
    _save(str(voc10 / "JPEGImages/x.jpg"), _image(5, 6))
    _run("prepare_pascal_context", "--root", str(tmp_path), "--split-file", str(split))
    register_all_benchmarks(str(tmp_path), prefix=PREFIX)
    name = PREFIX + "pascal_context_459_sem_seg_val"

    def evaluate(pred: np.ndarray) -> dict:
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        (record,) = DatasetCatalog.get(name)
        scores = torch.nn.functional.one_hot(torch.as_tensor(pred), 459).permute(2, 0, 1)
        evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": scores.float()}])
        return evaluator.evaluate()["sem_seg"]

    gt = pascal_context_459_labels(label_map).astype(np.int64)
    pred = np.where(gt == 65535, 458, gt)  # ignored pixels predicted as a present class
    assert evaluate(pred)["mIoU"] == pytest.approx(100.0)
    pred[2] = 1  # class 458 predicted as class 1 (6 pixels each)
    res = evaluate(pred)
    # present classes 1, 2, 458: IoU 6 / 12, 1, 0
    assert res["mIoU"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert res["pACC"] == pytest.approx(100 * 12 / 18)


def test_eval_configs_load_and_name_registered_benchmarks():
    from detectron2.config import get_cfg

    from uniovseg.config import add_uniovseg_config

    for file in ("benchmarks.yaml", "cityscapes.yaml"):
        cfg = get_cfg()
        add_uniovseg_config(cfg)
        cfg.merge_from_file(os.path.join(REPO, "configs", "eval", file))
        # The paper states no test resolution: the release's geometry, said in the file.
        test = cfg.MODEL.UNIOVSEG.TEST
        assert (test.RESIZE_MODE, test.INPUT_SIZE) == ("longest_side", 1024)
        assert cfg.DATASETS.TEST and set(cfg.DATASETS.TEST) <= set(BENCHMARK_DATASETS)
