"""Promptable datasets from COCO instances JSON files: the generic registration (Python and config
key), the paper's COCO-style datasets at their expected paths, and datasets/prepare_promptable.py,
on a tiny COCO JSON written here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.config import load_config
from uniovseg.data.datasets import (
    PAPER_PROMPTABLE_DATASETS,
    check_datasets,
    register_coco_promptable,
    register_paper_promptable_datasets,
    register_promptable_datasets_from_config,
)
from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 60


@pytest.fixture
def coco(tmp_path):
    """Two images and a COCO instances JSON: a polygon, a compressed and an uncompressed RLE
    mask, a crowd region; a third image without annotations."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "c.png"):
        Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(images / name)
    disc = np.zeros((H, W), dtype=np.uint8)
    disc[20:30, 30:50] = 1  # a 10 x 20 rectangle, as RLE
    compressed = mask_util.encode(np.asfortranarray(disc))
    compressed["counts"] = compressed["counts"].decode("ascii")
    strip = np.zeros((H, W), dtype=np.uint8)
    strip[:, :5] = 1  # 40 x 5, as uncompressed RLE (column-major run lengths)
    uncompressed = {"size": [H, W], "counts": [0, H * 5, H * (W - 5)]}
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [10, 5, 20, 10],
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]], "area": 200.0},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [30, 20, 20, 10],
         "segmentation": compressed, "area": 200.0},
        {"id": 3, "image_id": 2, "category_id": 7, "iscrowd": 0, "bbox": [0, 0, 5, 40],
         "segmentation": uncompressed, "area": 200.0},
        {"id": 4, "image_id": 2, "category_id": 7, "iscrowd": 1, "bbox": [40, 0, 10, 10],
         "segmentation": [[40, 0, 50, 0, 50, 10, 40, 10]], "area": 100.0},
    ]  # fmt: skip
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/b.png", "height": H, "width": W},
            {"id": 3, "file_name": "c.png", "height": H, "width": W},
        ],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "log"}, {"id": 7, "name": "wire"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return images, path, {"disc": disc.astype(bool), "strip": strip.astype(bool)}


def _masks(name: str) -> list:
    mapper = PromptableEvalMapper(input_size=60)  # no resize: 40 x 60
    return [mapper(d) for d in DatasetCatalog.get(name)]


def test_any_coco_json_is_a_promptable_dataset(coco):
    images, path, truth = coco
    assert register_coco_promptable("tiny_coco_promptable", str(images), str(path)) == (
        "tiny_coco_promptable"
    )
    metadata = MetadataCatalog.get("tiny_coco_promptable")
    assert metadata.evaluator_type == "promptable" and metadata.json_file == str(path)
    first, second, third = _masks("tiny_coco_promptable")
    assert first["image_size"] == (H, W)
    assert first["gt_masks"].shape == (2, H, W)
    assert first["gt_masks"][0].sum() == 20 * 10  # the polygon rectangle
    assert np.array_equal(first["gt_masks"][1].numpy(), truth["disc"])
    assert np.array_equal(second["gt_masks"].numpy(), truth["strip"][None])  # crowd skipped
    assert second["box_prompts"].tolist() == [[0, 0, 5, 40]]
    assert third["gt_masks"].shape == (0, H, W)  # no annotation: nothing to score

    from uniovseg.engine.trainer import build_evaluator, build_test_mapper
    from uniovseg.evaluation.promptable_evaluator import PromptableEvaluator

    assert isinstance(
        build_test_mapper(load_config(""), "tiny_coco_promptable"), PromptableEvalMapper
    )
    evaluator = build_evaluator(load_config(""), "tiny_coco_promptable", output_folder="unused")
    assert isinstance(evaluator, PromptableEvaluator)


def test_missing_files_and_box_only_json_are_reported(coco, tmp_path):
    images, path, _ = coco
    register_coco_promptable("tiny_missing", str(images), str(tmp_path / "nope.json"), hint="HINT")
    with pytest.raises(ValueError, match="nope.json does not exist; HINT"):
        DatasetCatalog.get("tiny_missing")
    data = json.loads(path.read_text())
    for ann in data["annotations"]:
        del ann["segmentation"]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(data))
    register_coco_promptable("tiny_boxes", str(images), str(boxes))
    with pytest.raises(ValueError, match="no annotation has a 'segmentation'"):
        DatasetCatalog.get("tiny_boxes")
    with pytest.raises(ValueError, match="needs a name"):
        register_coco_promptable("", str(images), str(path))


def test_config_key_registers_coco_jsons(coco):
    images, path, _ = coco
    entry = f"[['tiny_from_config', '{images}', '{path}']]"
    cfg = load_config("", ["DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS", entry])
    assert register_promptable_datasets_from_config(cfg) == ["tiny_from_config"]
    check_datasets(["tiny_from_config"], what="DATASETS.TEST")  # files exist
    assert len(_masks("tiny_from_config")) == 3
    for bad in ("['only_a_name']", "[['n', 'images']]", "[['n', '', 'x.json']]"):
        cfg = load_config("", ["DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS", bad])
        with pytest.raises(ValueError, match=r"\[NAME, IMAGE_ROOT, JSON_FILE\]"):
            register_promptable_datasets_from_config(cfg)


def test_train_net_registers_them_and_checks_their_files_before_the_model(coco, tmp_path):
    from uniovseg.engine.train_cli import build_config, build_parser, check_run

    images, path, _ = coco

    def args(json_file):
        return build_parser().parse_args(
            ["--eval-only", "--allow-random-weights", "--config-file", "tiny/stage1_tiny.yaml"]
            + [
                "DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS",
                f"[['tiny_cli', '{images}', '{json_file}']]",
            ]
            + ["DATASETS.TEST", "('tiny_cli',)", "OUTPUT_DIR", str(tmp_path / "out")]
        )

    ok = args(path)
    check_run(build_config(ok), ok)
    missing = args(tmp_path / "missing.json")
    with pytest.raises(
        ValueError, match="dataset 'tiny_cli' in DATASETS.TEST: .*missing.json does not exist"
    ):
        check_run(build_config(missing), missing)


def test_paper_promptable_datasets_are_registered_at_their_paths(tmp_path):
    names = register_paper_promptable_datasets(str(tmp_path))
    assert names == [s.name for s in PAPER_PROMPTABLE_DATASETS]
    expected = {
        "coco_promptable_val": "COCO",
        "timberseg_promptable_val": "TimberSeg",
        "ndispark_promptable_val": "NDISPark",
        "pidray_promptable_val": "PIDray",
        "trashcan_promptable_val": "TrashCan",
    }
    expected.update(
        {
            f"ishape_{s}_promptable_val": f"iShape ({s})"
            for s in ("antenna", "branch", "fence", "hanger", "log", "wire")
        }
    )
    assert {n: MetadataCatalog.get(n).paper_name for n in names} == expected
    coco = MetadataCatalog.get("coco_promptable_val")
    assert coco.json_file == str(tmp_path / "coco/annotations/instances_val2017.json")
    assert coco.image_root == str(tmp_path / "coco/val2017")
    timber = MetadataCatalog.get("timberseg_promptable_val")
    assert timber.json_file == str(tmp_path / "promptable/timberseg/annotations.json")
    assert timber.image_root == str(tmp_path / "promptable/timberseg/images")
    with pytest.raises(ValueError, match="prepare_promptable.py --dataset timberseg"):
        check_datasets(["timberseg_promptable_val"], what="DATASETS.TEST")
    register_paper_promptable_datasets()  # back to $DETECTRON2_DATASETS


def _prepare_main():
    spec = importlib.util.spec_from_file_location(
        "prepare_promptable", REPO / "datasets" / "prepare_promptable.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_prepare_script_places_a_download_for_its_registration(coco, tmp_path, capsys):
    images, path, truth = coco
    root = tmp_path / "root"
    main = _prepare_main()
    argv = ["--dataset", "ishape_wire", "--images", str(images), "--annotations", str(path)]
    assert main([*argv, "--root", str(root)]) == 0
    assert "ishape_wire_promptable_val: 3 images, 4 instance masks" in capsys.readouterr().out
    assert main([*argv, "--root", str(root)]) == 0  # the same links again: nothing to do
    register_paper_promptable_datasets(str(root))
    check_datasets(["ishape_wire_promptable_val"], what="DATASETS.TEST")
    first = _masks("ishape_wire_promptable_val")[0]
    assert np.array_equal(first["gt_masks"][1].numpy(), truth["disc"])
    register_paper_promptable_datasets()

    other = tmp_path / "other.json"
    other.write_text(path.read_text())
    argv_other = [*argv[:-1], str(other), "--root", str(root)]
    assert main(argv_other) == 1  # an earlier placement is kept...
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv_other, "--overwrite"]) == 0  # ...unless asked

    (images / "c.png").unlink()
    assert main([*argv, "--root", str(tmp_path / "root2")]) == 1
    assert "1 of the 3 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "egohos", "--images", "x", "--annotations", "y"])


VOC_SAMPLE = REPO.parent / "shared" / "data" / "voc_sample"


def test_real_voc_sample_coco_json_scores_its_own_masks_100_with_the_grid_protocol():
    """The VOC sample's COCO instances JSON (real photos and polygons): its masks agree with the
    sample's instance PNGs, and the ground truth as predictions scores 100 with both prompts."""
    json_file = VOC_SAMPLE / "coco_instances.json"
    if not json_file.is_file():
        pytest.skip("../shared/data/voc_sample is absent")
    from uniovseg.evaluation.promptable_evaluator import PromptableEvaluator, best_mask_iou

    register_coco_promptable("voc_sample_promptable", str(VOC_SAMPLE), str(json_file))
    data = json.loads(json_file.read_text())
    dicts = DatasetCatalog.get("voc_sample_promptable")
    assert len(dicts) == len(data["images"])
    non_crowd = sum(1 for a in data["annotations"] if not a.get("iscrowd", 0))
    mapper = PromptableEvalMapper(input_size=512, point_prompts="grid", grid_size=20)
    evaluator = PromptableEvaluator(distributed=False)
    instances = 0
    for record in dicts:
        inp = mapper(record)
        gt = inp["gt_masks"]
        instances += gt.shape[0]
        assert inp["point_coords"].shape == (400, 2)
        # The instance PNG (palette indices: 0 background, 255 boundary) at the mapper's size.
        stem = Path(record["file_name"]).stem
        with Image.open(VOC_SAMPLE / "SegmentationObject" / f"{stem}.png") as im:
            ids = np.array(im.resize(inp["image_size"][::-1], Image.NEAREST))
        png = np.stack([ids == i for i in np.unique(ids) if i not in (0, 255)])
        assert best_mask_iou(torch.from_numpy(png), gt).min() > 0.7
        out = {"prompt_eval": {"point_masks": gt[:, None], "point_iou": torch.zeros(len(gt), 1),
                               "box_masks": gt[:, None]}}  # fmt: skip
        evaluator.process([inp], [out])
    assert instances == non_crowd
    res = evaluator.evaluate()["promptable"]
    assert res["1pt_oracle_iou"] == pytest.approx(100.0) and res["1box_iou"] == pytest.approx(100.0)
    assert res["num_instances"] == non_crowd and res["point_grid_size"] == 20
