"""SA-1B index/registration and the image-mask mapper, on a tiny SA-1B folder made in tmp_path."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.data.datasets.sa1b import (
    DEFAULT_INDEX_NAME,
    build_sa1b_index,
    load_sa1b_dicts,
    register_sa1b,
    scan_sa1b,
)
from uniovseg.data.sa1b_mapper import SA1BDatasetMapper
from uniovseg.data.transforms import ColorAugSSD, sample_scale_jitter_crop

REPO = Path(__file__).resolve().parents[1]
H, W = 96, 128  # image size of the tiny SA-1B world (area 12288)

# Disjoint rectangles (x0, y0, x1, y1) with even corners, each in its own flat colour.
RECTS = [
    (8, 8, 40, 40),
    (48, 16, 112, 48),
    (16, 56, 64, 88),
    (72, 56, 120, 80),
    (76, 84, 124, 94),
]
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 230, 30), (30, 220, 220)]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(i: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": i,
        "segmentation": _rle(mask),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "area": int(mask.sum()),
        "predicted_iou": 0.9,
        "point_coords": [[float(xs.mean()), float(ys.mean())]],
        "stability_score": 0.95,
        "crop_box": [0, 0, W, H],
    }


def _rect_masks() -> np.ndarray:
    masks = np.zeros((len(RECTS), H, W), dtype=bool)
    for g, (x0, y0, x1, y1) in enumerate(RECTS):
        masks[g, y0:y1, x0:x1] = True
    return masks


def _write_pair(folder: Path, image_id: int, masks: np.ndarray, image: np.ndarray | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = np.full((H, W, 3), 90, dtype=np.uint8)
        for g, (x0, y0, x1, y1) in enumerate(RECTS):
            image[y0:y1, x0:x1] = COLOURS[g]
    Image.fromarray(image).save(folder / f"sa_{image_id}.jpg", quality=98, subsampling=0)
    record = {
        "image": {"image_id": image_id, "width": W, "height": H, "file_name": f"sa_{image_id}.jpg"},
        "annotations": [_annotation(i, m) for i, m in enumerate(masks)],
    }
    (folder / f"sa_{image_id}.json").write_text(json.dumps(record))


@pytest.fixture()
def sa1b_root(tmp_path: Path) -> Path:
    root = tmp_path / "sa1b"
    _write_pair(root / "sa_000000", 1, _rect_masks())
    # Masks outside the default area range: 1 pixel (8e-5 of the image) and the whole image.
    tiny = np.zeros((H, W), dtype=bool)
    tiny[5, 5] = True
    extra = np.stack([tiny, np.ones((H, W), dtype=bool)])
    _write_pair(root / "sa_000000", 2, np.concatenate([_rect_masks(), extra]))
    return root


def _dict(root: Path, image_id: int, folder: str = "sa_000000") -> dict:
    base = root / folder / f"sa_{image_id}"
    return {"file_name": f"{base}.jpg", "annotation_file": f"{base}.json", "image_id": image_id}


def _mapper(**kwargs) -> SA1BDatasetMapper:
    kwargs.setdefault("crop_size", 128)
    kwargs.setdefault("seed", 0)
    return SA1BDatasetMapper(**kwargs)


# ----------------------------------------------------------------------------- index
def _touch_tree(root: Path, num: int) -> None:
    """Pairs that pass the index's checks without real pixels: a non-empty stand-in image and a
    valid 4 x 4 SA-1B JSON with one mask."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    record = {
        "image": {"image_id": 0, "width": 4, "height": 4, "file_name": "sa_0.jpg"},
        "annotations": [{"id": 0, "segmentation": _rle(mask), "area": 4}],
    }
    text = json.dumps(record)
    for i in range(num):
        folder = root / f"sa_{i % 3:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"sa_{i}.jpg").write_bytes(b"jpg")
        (folder / f"sa_{i}.json").write_text(text)


def test_index_build_load_and_fraction_determinism(tmp_path: Path, caplog):
    root = tmp_path / "sa1b"
    _touch_tree(root, 50)
    (root / "sa_000000" / "sa_999.jpg").touch()  # image without JSON: reported, left out
    (root / "sa_000001" / "sa_777.json").touch()  # JSON without image: reported, left out
    (root / "notes.txt").touch()
    with pytest.raises(ValueError, match="prepare_sa1b.py --root"):
        load_sa1b_dicts(str(root))
    with caplog.at_level(logging.WARNING):
        index = build_sa1b_index(str(root))
    assert index == str(root / DEFAULT_INDEX_NAME)
    assert "missing_json: 1" in caplog.text and "sa_000000/sa_999.jpg" in caplog.text
    assert "missing_image: 1" in caplog.text and "sa_000001/sa_777.json" in caplog.text

    dicts = load_sa1b_dicts(str(root))
    assert len(dicts) == 50
    ids = sorted(d["image_id"] for d in dicts)
    assert ids == list(range(50))
    d = next(d for d in dicts if d["image_id"] == 7)
    assert d["file_name"] == str(root / "sa_000001" / "sa_7.jpg")
    assert d["annotation_file"] == str(root / "sa_000001" / "sa_7.json")

    sub = load_sa1b_dicts(str(root), fraction=0.3, seed=1)
    assert len(sub) == 15
    assert sub == load_sa1b_dicts(str(root), fraction=0.3, seed=1)  # deterministic
    assert sub != load_sa1b_dicts(str(root), fraction=0.3, seed=2)
    larger = load_sa1b_dicts(str(root), fraction=0.6, seed=1)
    assert {x["image_id"] for x in sub} < {x["image_id"] for x in larger}  # nested
    with pytest.raises(ValueError, match="fraction"):
        load_sa1b_dicts(str(root), fraction=0.0)


def test_index_elsewhere_for_read_only_roots(tmp_path: Path):
    root = tmp_path / "ro"
    _touch_tree(root, 4)
    index = tmp_path / "indexes" / "sa1b.txt"
    assert build_sa1b_index(str(root), str(index)) == str(index)
    assert not (root / DEFAULT_INDEX_NAME).exists()
    assert len(load_sa1b_dicts(str(root), index_file=str(index))) == 4
    with pytest.raises(ValueError, match="--index-file"):
        load_sa1b_dicts(str(root), index_file=str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("sa_1\n")
    with pytest.raises(ValueError, match="not a uniovseg SA-1B index"):
        load_sa1b_dicts(str(root), index_file=str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="no sa_"):
        build_sa1b_index(str(tmp_path / "indexes"))


def test_prepare_script_and_lazy_registration(tmp_path: Path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = tmp_path / "sa1b"
    _touch_tree(root, 10)
    script = _prepare_script()
    assert script.main(["--root", str(root)]) == 0
    assert "indexed 10 image/annotation pairs" in capsys.readouterr().out
    assert script.main(["--root", str(tmp_path / "nope")]) == 1

    missing = "test_sa1b_missing_root"
    name = "test_sa1b_subset"
    try:
        register_sa1b(missing, str(tmp_path / "does_not_exist"))  # reads nothing: no error
        with pytest.raises(ValueError, match="prepare_sa1b.py"):
            DatasetCatalog.get(missing)
        register_sa1b(name, str(root), fraction=0.5, seed=3)
        assert len(DatasetCatalog.get(name)) == 5
        assert MetadataCatalog.get(name).evaluator_type == "sa1b"
    finally:
        for n in (missing, name):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def _prepare_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_sa1b", REPO / "datasets" / "prepare_sa1b.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _write_bad_pairs(folder: Path) -> None:
    """One pair per reason the index leaves out (sa_20 .. sa_27)."""
    _write_pair(folder, 20, _rect_masks())
    (folder / "sa_20.json").write_text('{"annotations": [ {"segm')  # truncated JSON
    _write_pair(folder, 21, _rect_masks())
    (folder / "sa_21.json").write_text("")  # blank file
    _write_pair(folder, 22, _rect_masks()[:0])  # no annotation
    _write_pair(folder, 23, _rect_masks()[:3, :64, :64])  # RLEs of 64x64, the image is 96x128
    _write_pair(folder, 24, _rect_masks())
    (folder / "sa_24.jpg").unlink()  # annotation without its image
    _write_pair(folder, 25, _rect_masks())
    (folder / "sa_25.json").unlink()  # image without its annotation
    _write_pair(folder, 26, _rect_masks())
    (folder / "sa_26.jpg").write_bytes(b"")  # empty image
    _write_pair(folder, 27, _rect_masks())
    record = json.loads((folder / "sa_27.json").read_text())
    del record["image"]["height"]  # no image size to check the RLEs against
    (folder / "sa_27.json").write_text(json.dumps(record))


def test_index_leaves_out_bad_pairs_with_counted_reasons(tmp_path: Path, caplog):
    root = tmp_path / "sa1b"
    _write_pair(root / "sa_000000", 1, _rect_masks())
    _write_bad_pairs(root / "sa_000001")
    with caplog.at_level(logging.WARNING, logger="uniovseg.data.datasets.sa1b"):
        scan = scan_sa1b(str(root))
    assert scan.stems == ["sa_000000/sa_1"]
    assert dict(scan.skipped) == {
        "corrupt_json": 2,
        "empty_json": 2,
        "size_mismatch": 1,
        "missing_image": 1,
        "missing_json": 1,
        "empty_image": 1,
    }
    assert scan.examples["size_mismatch"] == [
        "sa_000001/sa_23.json: annotation 0 is 64x64, the image 96x128"
    ]
    assert scan.examples["missing_image"] == ["sa_000001/sa_24.json"]
    assert scan.examples["empty_image"] == ["sa_000001/sa_26.jpg"]
    assert scan.examples["corrupt_json"][0].startswith("sa_000001/sa_20.json: ")
    assert "sa_000001/sa_27.json: no positive integer 'height'" in scan.examples["corrupt_json"][1]
    for reason, count in scan.skipped.items():  # one log line per reason, with the file names
        assert f"{reason}: {count}" in caplog.text
    assert "sa_000001/sa_22.json" in caplog.text

    # The index holds the usable pair only; the same scan in worker processes agrees.
    build_sa1b_index(str(root))
    assert [d["image_id"] for d in load_sa1b_dicts(str(root))] == [1]
    parallel = scan_sa1b(str(root), num_workers=2)
    assert parallel.stems == scan.stems and parallel.skipped == scan.skipped
    # Without validation only the file pairing and empty images are checked.
    unchecked = scan_sa1b(str(root), validate=False)
    assert len(unchecked.stems) == 6
    assert dict(unchecked.skipped) == {"missing_image": 1, "missing_json": 1, "empty_image": 1}


def test_all_bad_folder_is_a_clear_error(tmp_path: Path, capsys):
    root = tmp_path / "all_bad"
    _write_bad_pairs(root)
    with pytest.raises(ValueError, match="no sa_.*all_bad.*every file was left out.*corrupt_json"):
        build_sa1b_index(str(root))
    assert not (root / DEFAULT_INDEX_NAME).exists()
    assert [p.name for p in root.iterdir() if ".tmp" in p.name] == []

    assert _prepare_script().main(["--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert "usable pairs: 0, files left out: 8" in captured.out
    assert "size_mismatch: 1 (RLE size differs" in captured.out
    assert "error: found no sa_" in captured.err and str(root) in captured.err

    # An index listing no image (e.g. edited by hand) fails when read, not in the data loader.
    (root / DEFAULT_INDEX_NAME).write_text("# uniovseg-sa1b-index v1\n")
    with pytest.raises(ValueError, match="lists no image"):
        load_sa1b_dicts(str(root))


# ----------------------------------------------------------------------------- transforms
def test_scale_jitter_geometry():
    rng = np.random.default_rng(0)
    # Scale fixed at 0.5 of a 128 crop: 96 x 128 -> 48 x 64, no crop, padded to 128.
    geo = sample_scale_jitter_crop(
        96, 128, crop_size=128, min_scale=0.5, max_scale=0.5, flip_prob=0, rng=rng
    )
    assert (geo.resized_h, geo.resized_w, geo.crop_h, geo.crop_w, geo.y0, geo.x0) == (
        48,
        64,
        48,
        64,
        0,
        0,
    )
    # Scale 1.2 of a 64 crop: 96 x 128 -> 58 x 77, a 58 x 64 window at a random column.
    for _ in range(20):
        geo = sample_scale_jitter_crop(
            96, 128, crop_size=64, min_scale=1.2, max_scale=1.2, flip_prob=0.5, rng=rng
        )
        assert (geo.resized_h, geo.resized_w, geo.crop_h, geo.crop_w) == (58, 77, 58, 64)
        assert 0 <= geo.x0 <= 13 and geo.y0 == 0
        assert geo.source_cols().min() >= 0 and geo.source_cols().max() < 128


def test_color_aug_is_photometric_and_random():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    aug = ColorAugSSD()
    outs = [aug(image, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 6
    with pytest.raises(ValueError, match="RGB"):
        aug(image[:, :, :2].copy(), np.random.default_rng(0))


# ----------------------------------------------------------------------------- mapper
def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_mapper_output_contract(sa1b_root: Path):
    out = _mapper(crop_size=64)(_dict(sa1b_root, 1))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
    h, w = out["image_size"]
    assert 0 < h <= 64 and 0 < w <= 64
    assert (out["height"], out["width"]) == (H, W)
    masks = out["gt_masks"]
    assert masks.dtype == torch.bool and masks.shape[1:] == (64, 64) and 1 <= len(masks) <= 5
    assert masks.flatten(1).any(1).all()  # no empty mask
    assert not masks[:, h:].any() and not masks[:, :, w:].any()  # nothing in the padding
    assert torch.equal(out["box_prompts"], _boxes_of(masks))
    pts = out["point_coords"]
    assert pts.shape == (100, 2) and pts.dtype == torch.float32
    assert (pts[:, 0] > 0).all() and (pts[:, 0] < w).all()
    assert (pts[:, 1] > 0).all() and (pts[:, 1] < h).all()
    assert out["image_id"] == 1 and out["file_name"].endswith("sa_1.jpg")


def test_mapper_exact_geometry_resize_and_flip(sa1b_root: Path):
    # Scale 0.5 of a 128 crop: exact 2x downsampling, then a mirror (flip_prob 1).
    mapper = _mapper(
        min_scale=0.5, max_scale=0.5, flip_prob=1.0, color_aug=False, pad_value=7, point_grid_size=2
    )
    out = mapper(_dict(sa1b_root, 1))
    assert out["image_size"] == (48, 64)
    expected = torch.zeros(5, 128, 128, dtype=torch.bool)
    for g, (x0, y0, x1, y1) in enumerate(RECTS):
        expected[g, y0 // 2 : y1 // 2, 64 - x1 // 2 : 64 - x0 // 2] = True
    assert torch.equal(out["gt_masks"], expected)
    assert out["box_prompts"][0].tolist() == [64 - 20, 4, 64 - 4, 20]
    assert (out["image"][:, 48:] == 7).all() and (out["image"][:, :, 64:] == 7).all()
    # A 2 x 2 grid at the cell centres of the 48 x 64 valid region, rows outer.
    assert out["point_coords"].tolist() == [[16.0, 12.0], [48.0, 12.0], [16.0, 36.0], [48.0, 36.0]]


def test_mapper_masks_stay_aligned_with_the_image(sa1b_root: Path):
    # Random jitter, crops and flips: every mask pixel (away from edges) keeps its colour.
    mapper = _mapper(crop_size=64, min_scale=0.8, max_scale=1.6, color_aug=False)
    for _ in range(12):
        out = mapper(_dict(sa1b_root, 1))
        image = out["image"].permute(1, 2, 0).int()
        for mask in out["gt_masks"]:
            outside = torch.nn.functional.pad((~mask).float()[None, None], (2, 2, 2, 2), value=1)
            inner = torch.nn.functional.max_pool2d(outside, 5, 1)[0, 0] == 0  # eroded mask
            if not inner.any():
                continue
            colours = image[inner]
            centre = colours.float().median(0).values
            g = int(np.argmin([np.abs(np.array(c) - centre.numpy()).sum() for c in COLOURS]))
            assert (colours - torch.tensor(COLOURS[g])).abs().max() < 40


def test_mapper_area_filter_and_cap(sa1b_root: Path):
    identity = {"min_scale": 1.0, "max_scale": 1.0, "flip_prob": 0.0, "color_aug": False}
    # Image 2 has the 5 rectangles + a 1-pixel mask + a whole-image mask.
    out = _mapper(**identity)(_dict(sa1b_root, 2))
    full = torch.zeros(5, 128, 128, dtype=torch.bool)
    full[:, :H, :W] = torch.from_numpy(_rect_masks())
    assert torch.equal(out["gt_masks"], full)  # both out-of-range masks dropped
    out = _mapper(mask_area_range=(0.0, 1.0), **identity)(_dict(sa1b_root, 2))
    assert len(out["gt_masks"]) == 7
    # Cap: 2 of the 5 in-range masks, a random subset that changes with the RNG.
    subsets = set()
    for seed in range(6):
        out = _mapper(max_masks=2, seed=seed, **identity)(_dict(sa1b_root, 2))
        assert len(out["gt_masks"]) == 2
        idx = tuple(g for g in range(5) if any(torch.equal(m, full[g]) for m in out["gt_masks"]))
        assert len(idx) == 2
        subsets.add(idx)
    assert len(subsets) > 1


def test_colour_jitter_never_changes_masks(sa1b_root: Path):
    a = _mapper(crop_size=64, color_aug=True)(_dict(sa1b_root, 1))
    b = _mapper(crop_size=64, color_aug=False)(_dict(sa1b_root, 1))
    assert torch.equal(a["gt_masks"], b["gt_masks"])
    assert torch.equal(a["box_prompts"], b["box_prompts"])


def _bad_inputs(root: Path) -> list[dict]:
    folder = root / "sa_000000"
    _write_pair(folder, 10, _rect_masks())
    (folder / "sa_10.json").write_text('{"annotations": [ {"segm')  # truncated JSON
    _write_pair(folder, 11, _rect_masks())
    (folder / "sa_11.json").unlink()  # missing JSON
    _write_pair(folder, 12, _rect_masks()[:0])  # no annotation
    _write_pair(folder, 13, _rect_masks())
    (folder / "sa_13.jpg").write_bytes(b"not a jpeg")  # unreadable image
    _write_pair(folder, 14, _rect_masks()[:3, :64, :64])  # masks of the wrong size
    return [_dict(root, i) for i in (10, 11, 12, 13, 14)]


def test_mapper_skips_bad_inputs_with_counted_log(sa1b_root: Path, caplog):
    mapper = _mapper(skip_log_period=2)
    with caplog.at_level(logging.WARNING, logger="uniovseg.data.sa1b_mapper"):
        results = [mapper(d) for d in _bad_inputs(sa1b_root)]
    assert results == [None] * 5
    assert dict(mapper.skip_counts) == {
        "corrupt_json": 1,
        "missing_json": 1,
        "empty_json": 1,
        "unreadable_image": 1,
        "size_mismatch": 1,
    }
    # One warning at the first skip, then one every 2 skips: after skips 1, 2 and 4.
    warnings = [r for r in caplog.records if "SA1BDatasetMapper skipped" in r.getMessage()]
    assert len(warnings) == 3
    assert "skipped 4 image(s)" in warnings[-1].getMessage()


def test_mapper_images_without_masks(sa1b_root: Path):
    only_tiny = _mapper(mask_area_range=(0.5, 0.6))
    assert only_tiny(_dict(sa1b_root, 1)) is None
    assert only_tiny.skip_counts["no_masks_in_area_range"] == 1
    keep = _mapper(mask_area_range=(0.5, 0.6), skip_images_without_masks=False, crop_size=64)
    out = keep(_dict(sa1b_root, 1))
    assert out["gt_masks"].shape == (0, 64, 64) and out["gt_masks"].dtype == torch.bool
    assert out["box_prompts"].shape == (0, 4)
    assert out["point_coords"].shape == (100, 2)


def test_detectron2_map_dataset_replaces_skipped_images(sa1b_root: Path):
    from detectron2.data.common import DatasetFromList, MapDataset

    dicts = _bad_inputs(sa1b_root) + [_dict(sa1b_root, 1), _dict(sa1b_root, 2)]
    dataset = MapDataset(DatasetFromList(dicts, copy=False), _mapper(crop_size=64))
    for idx in range(len(dicts)):
        sample = dataset[idx]  # bad indices are retried with random other images
        assert sample["image_id"] in (1, 2)


def test_mapper_from_config(sa1b_root: Path):
    from detectron2.config import get_cfg

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    mapper = SA1BDatasetMapper(cfg)
    assert (mapper.crop_size, mapper.max_masks, mapper.point_grid_size) == (1024, 40, 10)
    assert mapper.mask_area_range == (0.0001, 0.8) and mapper.flip_prob == 0.5
    cfg.INPUT.UNIOVSEG.CROP_SIZE = 64
    cfg.INPUT.UNIOVSEG.POINT_GRID_SIZE = 4
    cfg.INPUT.UNIOVSEG.MAPPER_SEED = 5
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = SA1BDatasetMapper(cfg)
    out = mapper(_dict(sa1b_root, 1))
    assert out["image"].shape == (3, 64, 64) and out["point_coords"].shape == (16, 2)
    cfg.INPUT.RANDOM_FLIP = "vertical"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        SA1BDatasetMapper(cfg)


def test_mask_gather_equals_nearest_exact_resize_then_crop():
    import cv2

    rng = np.random.default_rng(1)
    masks = rng.random((3, 37, 53)) > 0.5  # [G, H, W]
    for _ in range(10):
        geo = sample_scale_jitter_crop(
            37, 53, crop_size=48, min_scale=0.6, max_scale=2.5, flip_prob=0.5, rng=rng
        )
        got = geo.apply_masks(np.ascontiguousarray(masks.transpose(0, 2, 1)))
        for g in range(3):
            resized = cv2.resize(
                masks[g].astype(np.uint8),
                (geo.resized_w, geo.resized_h),
                interpolation=cv2.INTER_NEAREST_EXACT,
            )
            window = resized[geo.y0 : geo.y0 + geo.crop_h, geo.x0 : geo.x0 + geo.crop_w]
            if geo.flip:
                window = window[:, ::-1]
            expected = np.zeros((48, 48), dtype=bool)
            expected[: geo.crop_h, : geo.crop_w] = window.astype(bool)
            assert np.array_equal(got[g], expected)


def test_masks_cropped_away_are_dropped(sa1b_root: Path):
    # 96 x 128 -> 72 x 96, then 32 x 32 windows: most masks fall outside each window.
    mapper = _mapper(crop_size=32, min_scale=3.0, max_scale=3.0, color_aug=False)
    sizes, nones = [], 0
    for _ in range(30):
        out = mapper(_dict(sa1b_root, 1))
        if out is None:
            nones += 1
            continue
        masks = out["gt_masks"]
        assert masks.flatten(1).any(1).all()
        assert torch.equal(out["box_prompts"], _boxes_of(masks))
        sizes.append(len(masks))
    assert max(sizes) < 5 and min(sizes) >= 1
    assert mapper.skip_counts["no_masks_after_crop"] == nones
