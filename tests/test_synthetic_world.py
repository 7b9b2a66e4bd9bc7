"""The synthetic world: formats, determinism, disjoint sets, nested masks, other world files."""

import copy
import hashlib
import json
import os
import re

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from uniovseg.data.synthetic import (
    SplitCounts,
    generate_synthetic_world,
    load_world,
    sample_scene,
    split_rng,
)
from uniovseg.data.synthetic.captions import caption_scene
from uniovseg.data.synthetic.scene import RenderSpec

SIZE = 80
COUNTS = SplitCounts(sa1b=6, captions=6, eval=5, pretrain=8)


def _world_dict() -> dict:
    with open(_default_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _default_path() -> str:
    from uniovseg.data.synthetic import default_world_path

    return default_world_path()


def _small_pretrain(d: dict) -> dict:
    d = copy.deepcopy(d)
    d["pretrain"]["crop_size"] = 32
    return d


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    generate_synthetic_world(
        root,
        world=load_world(_small_pretrain(_world_dict())),
        seed=3,
        counts=COUNTS,
        image_size=SIZE,
        progress=False,
    )
    return root


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _rgb2id(path: str) -> np.ndarray:
    from panopticapi.utils import rgb2id

    return rgb2id(np.asarray(Image.open(path).convert("RGB")))


def test_sa1b_format(world_root):
    jsons = sorted(f for f in os.listdir(os.path.join(world_root, "sa1b")) if f.endswith(".json"))
    assert len(jsons) == COUNTS.sa1b
    for name in jsons:
        with open(os.path.join(world_root, "sa1b", name), encoding="utf-8") as f:
            record = json.load(f)
        info = record["image"]
        assert set(info) == {"image_id", "width", "height", "file_name"}
        assert name == f"sa_{info['image_id']}.json" and info["file_name"] == name[:-5] + ".jpg"
        with Image.open(os.path.join(world_root, "sa1b", info["file_name"])) as im:
            assert im.size == (info["width"], info["height"]) == (SIZE, SIZE)
        assert record["annotations"], "every scene has at least a background mask"
        for ann in record["annotations"]:
            assert set(ann) == {
                "id",
                "segmentation",
                "bbox",
                "area",
                "predicted_iou",
                "point_coords",
                "stability_score",
                "crop_box",
            }
            assert isinstance(ann["segmentation"]["counts"], str)
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert m.shape == (SIZE, SIZE) and m.sum() == ann["area"] > 0
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            ((x, y),) = ann["point_coords"]
            assert m[int(y), int(x)]
            assert ann["crop_box"] == [0, 0, SIZE, SIZE]
            assert 0 < ann["predicted_iou"] <= 1 and 0 < ann["stability_score"] <= 1


def test_sa1b_masks_are_nested_like_sa1b(world_root):
    """Masks form a hierarchy: any two are disjoint or one contains the other, and parts nest."""
    strict_nestings = 0
    for name in os.listdir(os.path.join(world_root, "sa1b")):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(world_root, "sa1b", name), encoding="utf-8") as f:
            anns = json.load(f)["annotations"]
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]
        union = np.logical_or.reduce(masks)
        assert union.mean() > 0.9  # everything but tiny slivers is covered
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                inter = (masks[i] & masks[j]).sum()
                small = min(masks[i].sum(), masks[j].sum())
                assert inter in (0, small), "masks must be disjoint or nested"
                strict_nestings += inter == small
    assert strict_nestings > 0


def test_scene_parts_inside_wholes():
    world = load_world()
    spec = world.scene_spec("sa1b")
    for index in range(6):
        scene = sample_scene(split_rng(0, "sa1b", index), world, spec, RenderSpec(), (96, 96))
        covered = np.zeros((96, 96), dtype=bool)
        for t in scene.things:
            assert not (covered & t.mask).any(), "visible object masks never overlap"
            covered |= t.mask
            if t.parts:
                parts_union = np.logical_or.reduce([p.mask for p in t.parts])
                assert np.array_equal(parts_union, t.mask)
            for p in t.parts:
                assert not (p.mask & ~t.mask).any()
        for s in scene.stuff:
            assert not (s.mask & covered).any()
            covered |= s.mask
        assert covered.all()


def test_eval_formats_agree(world_root):
    from panopticapi.evaluation import pq_compute

    eval_dir = os.path.join(world_root, "eval")
    with open(os.path.join(eval_dir, "panoptic.json"), encoding="utf-8") as f:
        pan = json.load(f)
    names = open(os.path.join(eval_dir, "class_names.txt"), encoding="utf-8").read().split("\n")
    names = [n for n in names if n]
    cats = {c["id"]: c for c in pan["categories"]}
    assert [cats[i + 1]["name"] for i in range(len(names))] == names
    assert len(pan["images"]) == len(pan["annotations"]) == COUNTS.eval
    for ann in pan["annotations"]:
        ids = _rgb2id(os.path.join(eval_dir, "panoptic", ann["file_name"]))
        sem = np.asarray(Image.open(os.path.join(eval_dir, "semantic", ann["file_name"])))
        assert sem.dtype == np.uint8 and set(np.unique(sem)) <= set(range(len(names))) | {255}
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
        assert np.array_equal(sem == 255, ids == 0)
        for s in ann["segments_info"]:
            m = ids == s["id"]
            assert m.sum() == s["area"] and s["iscrowd"] == 0
            assert np.all(sem[m] == s["category_id"] - 1)
    # panopticapi reads the ground truth: GT against itself is perfect.
    result = pq_compute(
        os.path.join(eval_dir, "panoptic.json"),
        os.path.join(eval_dir, "panoptic.json"),
        os.path.join(eval_dir, "panoptic"),
        os.path.join(eval_dir, "panoptic"),
    )
    assert result["All"]["pq"] == pytest.approx(1.0)


def test_instances_json_matches_panoptic(world_root):
    from pycocotools.coco import COCO

    eval_dir = os.path.join(world_root, "eval")
    coco = COCO(os.path.join(eval_dir, "instances.json"))
    with open(os.path.join(eval_dir, "panoptic.json"), encoding="utf-8") as f:
        pan = json.load(f)
    for ann in pan["annotations"]:
        ids = _rgb2id(os.path.join(eval_dir, "panoptic", ann["file_name"]))
        inst = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        assert len(inst) == len(ann["segments_info"])
        for s, a in zip(ann["segments_info"], inst, strict=True):
            assert a["category_id"] == s["category_id"]
            assert np.array_equal(coco.annToMask(a).astype(bool), ids == s["id"])


def test_detectron2_evaluators_score_ground_truth_perfectly(world_root):
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator

    from uniovseg.data.datasets import register_synthetic_world

    names = register_synthetic_world(world_root, prefix="t_world")
    assert "t_world_panoptic_val" in names and "t_world_sem_seg_val" in names
    meta = MetadataCatalog.get("t_world_panoptic_val")
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.thing_classes[0] == "house"
    pan_eval = COCOPanopticEvaluator("t_world_panoptic_val")
    pan_eval.reset()
    dicts = DatasetCatalog.get("t_world_panoptic_val")
    assert len(dicts) == COUNTS.eval
    for d in dicts:
        ids = torch.from_numpy(_rgb2id(d["pan_seg_file_name"]).astype(np.int32))
        segs = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in d["segments_info"]
        ]
        pan_eval.process([d], [{"panoptic_seg": (ids, segs)}])
    assert pan_eval.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)

    sem_eval = SemSegEvaluator("t_world_sem_seg_val", distributed=False)
    sem_eval.reset()
    num_classes = len(MetadataCatalog.get("t_world_sem_seg_val").stuff_classes)
    for d in DatasetCatalog.get("t_world_sem_seg_val"):
        gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        # One-hot "logits" of the ground truth (ignored pixels: class 0, not scored anyway).
        labels = torch.from_numpy(np.where(gt == 255, 0, gt))
        logits = torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()
        sem_eval.process([d], [{"sem_seg": logits}])
    assert sem_eval.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, world_root):
    root = str(tmp_path / "again")
    world = load_world(_small_pretrain(_world_dict()))
    generate_synthetic_world(
        root, world=world, seed=3, counts=COUNTS, image_size=SIZE, progress=False, workers=2
    )
    first, second = _files(world_root), _files(root)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), "same seed must give identical bytes"

    other = str(tmp_path / "other")
    generate_synthetic_world(
        other, world=world, seed=4, counts=COUNTS, image_size=SIZE, progress=False
    )
    third = _files(other)
    images = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != third[k] for k in images)
    with pytest.raises(ValueError, match="overwrite"):
        generate_synthetic_world(
            other, world=world, seed=4, counts=COUNTS, image_size=SIZE, progress=False
        )


def test_sets_are_disjoint(world_root):
    groups = {
        "sa1b": [
            f"sa1b/{f}" for f in os.listdir(os.path.join(world_root, "sa1b")) if f.endswith(".jpg")
        ],
        "captions": [
            "captions/images/" + f
            for f in os.listdir(os.path.join(world_root, "captions", "images"))
        ],
        "eval": [
            "eval/images/" + f for f in os.listdir(os.path.join(world_root, "eval", "images"))
        ],
        "pretrain": [
            "pretrain/images/" + f
            for f in os.listdir(os.path.join(world_root, "pretrain", "images"))
        ],
    }
    assert {k: len(v) for k, v in groups.items()} == {
        "sa1b": COUNTS.sa1b,
        "captions": COUNTS.captions,
        "eval": COUNTS.eval,
        "pretrain": COUNTS.pretrain,
    }
    ids, hashes = {}, {}
    for split, paths in groups.items():
        ids[split] = {int(re.search(r"(\d+)\.jpg$", p).group(1)) for p in paths}
        hashes[split] = set()
        for p in paths:
            with open(os.path.join(world_root, p), "rb") as f:
                hashes[split].add(hashlib.sha1(f.read()).hexdigest())
    splits = list(groups)
    for i, a in enumerate(splits):
        assert len(hashes[a]) == len(groups[a])
        for b in splits[i + 1 :]:
            assert not ids[a] & ids[b] and not hashes[a] & hashes[b]


def test_caption_manifests(world_root):
    from uniovseg.data.datasets.captions import load_caption_manifest

    for sub, n in (("captions", COUNTS.captions), ("pretrain", COUNTS.pretrain)):
        rows = load_caption_manifest(os.path.join(world_root, sub, "captions.jsonl"))
        assert len(rows) == n
        for r in rows:
            assert os.path.isfile(r["file_name"]) and r["caption"] and r["refined_caption"]
            assert "entities" not in r
    with Image.open(rows[0]["file_name"]) as im:
        assert im.size == (32, 32)  # the pretraining crop size of this world


def test_ground_truth_entities_are_what_the_captions_name(tmp_path, world_root):
    from uniovseg.data.datasets.captions import load_caption_manifest

    root = str(tmp_path / "with_entities")
    counts = SplitCounts(sa1b=0, captions=COUNTS.captions, eval=0, pretrain=0)
    world = load_world(_small_pretrain(_world_dict()))
    generate_synthetic_world(
        root,
        world=world,
        seed=3,
        counts=counts,
        image_size=SIZE,
        progress=False,
        entities="refined",
    )
    plain = load_caption_manifest(os.path.join(world_root, "captions", "captions.jsonl"))
    rows = load_caption_manifest(os.path.join(root, "captions", "captions.jsonl"))
    stuff = {s.name for s in world.stuff}
    for a, b in zip(plain, rows, strict=True):  # the same captions, now with entities
        assert (a["caption"], a["refined_caption"]) == (b["caption"], b["refined_caption"])
        text = b["refined_caption"].lower()
        assert b["entities"] and len(set(b["entities"])) == len(b["entities"])
        for entity in b["entities"]:  # written as the text says; a background by its class
            assert entity in text or entity in stuff, (entity, text)
    with pytest.raises(ValueError, match="entities must be one of"):
        generate_synthetic_world(root, world=world, counts=counts, entities="llm", overwrite=True)

    # The noisy caption's entities include what the noise put in the text.
    noisy = load_world(_with_caption_noise(_world_dict(), hallucinate=1.0, omit=0.0))
    spec, render = noisy.caption_spec("captions"), RenderSpec()
    for i in range(20):
        scene = sample_scene(
            split_rng(1, "captions", i), noisy, noisy.scene_spec("captions"), render, (64, 64)
        )
        pair = caption_scene(split_rng(2, "captions", i), noisy, spec, scene)
        caption, cursor = pair.caption.lower(), 0
        for entity in (e for e in pair.entities if e not in stuff):  # as written, in order
            cursor = caption.find(entity, cursor)
            assert cursor >= 0, (entity, pair.entities, caption)
            cursor += len(entity)


def test_captions_name_every_class_and_noise_is_configurable():
    world = load_world()
    spec = world.caption_spec("captions")
    render = RenderSpec()
    words, hallucinated = set(), 0
    scenes = [
        sample_scene(
            split_rng(1, "captions", i), world, world.scene_spec("captions"), render, (64, 64)
        )
        for i in range(150)
    ]
    for i, scene in enumerate(scenes):
        pair = caption_scene(split_rng(2, "captions", i), world, spec, scene)
        assert pair.caption[0].isupper() and pair.caption.endswith(".")
        words |= set(re.findall(r"[a-z]+", pair.caption.lower()))
    assert set(world.class_names) <= words, "eval class names must be grounded in captions"

    noisy = load_world(_with_caption_noise(_world_dict(), hallucinate=1.0, omit=1.0))
    nspec = noisy.caption_spec("captions")
    for i, scene in enumerate(scenes[:40]):
        pair = caption_scene(split_rng(2, "captions", i), noisy, nspec, scene)
        present = {noisy.things[t.kind].name for t in scene.things if t.mask.any()}
        named = {
            t.name
            for t in noisy.things
            if re.search(rf"\b({t.name}|{t.plural})\b", pair.caption.lower())
        }
        hallucinated += bool(named - present)
        assert not named & present, "omit=1 leaves every present thing out"
        refined_named = {
            t.name
            for t in noisy.things
            if re.search(rf"\b({t.name}|{t.plural})\b", pair.refined.lower())
        }
        assert refined_named == present, "refined captions are noise-free"
    assert hallucinated >= 30


def _with_caption_noise(d: dict, **noise) -> dict:
    d = copy.deepcopy(d)
    d["captions"]["noise"] = noise
    d.pop("splits")
    return d


TINY_WORLD = """
name: tiny
palette: {red: [220, 30, 30], blue: [30, 30, 220], white: [250, 250, 250], dark: [20, 20, 20]}
things:
  - name: lamp
    colors: [red, blue]
    size: [0.3, 0.5]
    aspect: [0.5, 0.7]
    parts:
      - {name: pole, color: dark, shapes: [{type: rect, box: [0.45, 0.3, 0.55, 1.0]}]}
      - {name: shade, color: $color, shapes: [{type: pieslice, box: [0, 0, 1, 0.6], start: 180,
         end: 360}]}
  - name: gem
    colors: [blue, white]
    size: [0.2, 0.3]
    parts:
      - {name: gem, shapes: [{type: star, box: [0, 0, 1, 1], num_points: 6, inner: 0.7}]}
stuff:
  - name: carpet
    zones: [full, bottom]
    texture: [{type: noise, colors: [[120, 20, 20], [160, 40, 40]], scale: 0.1}]
    phrases: [on the carpet]
  - name: wallpaper
    zones: [full, top]
    texture:
      - {type: fill, colors: [[200, 200, 150]]}
      - {type: dashes, colors: [[90, 90, 60]], spacing: 0.2}
    phrases: [by the wallpaper]
scene: {num_things: [1, 2], layouts: {single: 1, horizon: 1}}
captions:
  templates:
    objects_and_background: ["{objects} {background}."]
    objects_only: ["{objects}."]
    background_only: ["{background_np}."]
  position_words: {left: [left], right: [right], top: [up], bottom: [down], center: [mid]}
pretrain: {crop_size: 24}
"""


def test_another_world_definition_needs_no_code(tmp_path):
    from detectron2.data import MetadataCatalog

    from uniovseg.data.datasets import register_synthetic_world

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_WORLD, encoding="utf-8")
    world = load_world(str(path))
    assert world.class_names == ["lamp", "gem", "carpet", "wallpaper"]
    root = str(tmp_path / "tiny_world")
    summary = generate_synthetic_world(
        root, world=world, seed=0, counts=SplitCounts(3, 3, 3, 3), image_size=64, progress=False
    )
    assert summary.images == {"sa1b": 3, "captions": 3, "eval": 3, "pretrain": 3}
    with open(os.path.join(root, "eval", "class_names.txt"), encoding="utf-8") as f:
        assert f.read().split() == world.class_names
    with open(os.path.join(root, "captions", "captions.jsonl"), encoding="utf-8") as f:
        captions = [json.loads(line)["caption"].lower() for line in f]
    assert all(re.search(r"lamp|gem|carpet|wallpaper", c) for c in captions)
    register_synthetic_world(root, prefix="tiny")
    assert MetadataCatalog.get("tiny_sem_seg_val").stuff_classes == world.class_names
    meta = MetadataCatalog.get("tiny_panoptic_val")
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert meta.stuff_dataset_id_to_contiguous_id == {3: 2, 4: 3}
    with open(os.path.join(root, "world.yaml"), encoding="utf-8") as f:
        assert load_world(yaml.safe_load(f)).class_names == world.class_names


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["things"][0]["parts"][0]["shapes"][0].update(type="hexagon"), "unknown"),
        (lambda d: d["things"][1].update(colors=["mauve"]), "not in palette"),
        (lambda d: d["stuff"][0].update(zones=["sideways"]), "zones"),
        (lambda d: d["things"].append(dict(d["things"][0])), "unique"),
        (lambda d: d["captions"]["noise"].update(omit=1.5), r"\[0, 1\]"),
        (lambda d: d.pop("palette"), "palette"),
    ],
)
def test_bad_world_definitions_are_explained(edit, message):
    d = _world_dict()
    edit(d)
    with pytest.raises(ValueError, match=message):
        load_world(d)


def test_registration_is_lazy(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from uniovseg.data.datasets import register_synthetic_world

    missing = str(tmp_path / "never_generated")
    names = register_synthetic_world(missing, prefix="lazy")
    assert not os.path.exists(missing)
    assert set(names) == {
        "lazy_sa1b_train",
        "lazy_captions_train",
        "lazy_clip_pretrain",
        "lazy_sem_seg_val",
        "lazy_panoptic_val",
        "lazy_instances_val",
    }
    assert MetadataCatalog.get("lazy_sem_seg_val").ignore_label == 255
    with pytest.raises(ValueError, match="prepare_synthetic"):
        _ = MetadataCatalog.get("lazy_sem_seg_val").stuff_classes
    with pytest.raises(ValueError):
        DatasetCatalog.get("lazy_captions_train")
    # The default registration from $UNIOVSEG_SYNTHETIC_ROOT happened at import time.
    assert "synthetic_panoptic_val" in DatasetCatalog.list()


def test_sa1b_loader_reads_the_synthetic_sa1b(world_root):
    pytest.importorskip("uniovseg.data.datasets.sa1b", reason="SA-1B loader not written yet")
    from detectron2.data import DatasetCatalog

    from uniovseg.data.datasets import register_synthetic_world

    register_synthetic_world(world_root, prefix="t_sa1b")
    dicts = DatasetCatalog.get("t_sa1b_sa1b_train")
    assert len(dicts) == COUNTS.sa1b
    assert all(
        os.path.isfile(d["file_name"]) and os.path.isfile(d["annotation_file"]) for d in dicts
    )
