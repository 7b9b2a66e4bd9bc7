"""demo/demo.py end to end on generated images with the tiny config (random weights): written
files, broken inputs of every kind, prompt errors before any work, exit codes."""

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
# Random weights: open the filters so that masks survive; a small grid keeps it fast.
OPTS = [
    "--opts",
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE",
    "4",
]
VOCAB = "cat; dog, puppy; sky"


def _load_demo():
    spec = importlib.util.spec_from_file_location("uniovseg_demo_cli", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _photo(height, width, seed=0):
    """A smooth synthetic picture with a few regions (not noise), uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), dtype=np.float64)
    image[..., 0] = 255 * xx / max(1, width - 1)
    image[..., 1] = 255 * yy / max(1, height - 1)
    image[..., 2] = 80
    for _ in range(3):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.15, 0.3) * min(height, width)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    return image.astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_header_only(path, width, height):
    """A PNG that declares a huge size (nothing is decoded: Pillow rejects it at open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(data)


def _exif_rotated_jpeg(path, height, width):
    """A JPEG stored as height x width with EXIF orientation 6 (view rotated 90 degrees)."""
    image = Image.fromarray(_photo(height, width, seed=5))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory):
    """Good images of every colour mode plus broken files; returns (dir, expected)."""
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(_photo(48, 64)).save(d / "rgb.jpg", quality=95)
    Image.fromarray(_photo(40, 56, 1)[..., 0]).save(d / "gray.png")
    rgba = np.dstack([_photo(40, 40, 2), np.full((40, 40), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    sixteen = (np.linspace(0, 4095, 36 * 52).reshape(36, 52)).astype(np.uint16)
    Image.fromarray(sixteen).save(d / "depth16.png")
    Image.fromarray(_photo(40, 48, 3)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(_photo(32, 44, 4)).convert("P").save(d / "palette.gif")
    _exif_rotated_jpeg(d / "rotated.jpg", 40, 64)  # upright: 64 high, 40 wide
    Image.fromarray(_photo(300, 400, 6)).save(d / "large.png")  # downscaled by --max-side
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "tiny.png")
    _png_header_only(d / "huge.png", 30000, 30000)
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64, 7)).save(buffer, format="JPEG")
    encoded = buffer.getvalue()
    (d / "truncated.jpg").write_bytes(encoded[: len(encoded) // 3])  # header cut
    (d / "truncated_data.jpg").write_bytes(encoded[: 2 * len(encoded) // 3])  # pixels cut
    (d / "notanimage.jpg").write_text("this is not a picture")
    (d / "empty.png").write_bytes(b"")
    (d / "readme.txt").write_text("ignored: not an image extension")
    (d / "sub").mkdir()
    Image.fromarray(_photo(40, 40, 8)).save(d / "sub" / "nested.png")
    processed = {
        "rgb": (48, 64),
        "gray": (40, 56),
        "alpha": (40, 40),
        "depth16": (36, 52),
        "cmyk": (40, 48),
        "palette": (32, 44),
        "rotated": (64, 40),
        "large": (300, 400),  # outputs at the original size, processed at 96 x 128
    }
    skipped = {
        "tiny.png": "too small",
        "huge.png": "decompression-bomb",
        "truncated.jpg": "truncated",
        "truncated_data.jpg": "truncated",
        "notanimage.jpg": "not an image",
        "empty.png": "empty file",
    }
    return d, processed, skipped


def _run(argv):
    return demo.main([str(a) for a in argv])


def _check_json_and_rles(out_dir, name, size):
    info = json.loads((out_dir / f"{name}.json").read_text())
    assert (info["height"], info["width"]) == size
    for record in info["records"]:
        for key in ("segmentation", "bbox", "area", "predicted_iou", "stability_score"):
            assert key in record
        decoded = mask_util.decode(record["segmentation"])
        assert decoded.shape == size
        assert int(decoded.sum()) == record["area"]
        x, y, w, h = record["bbox"]
        if record["area"]:
            rows, cols = np.nonzero(decoded)
            assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    # The overlay is at the processed size, plus a legend to the right or below.
    height, width = info["processed_height"], info["processed_width"]
    overlay = np.asarray(Image.open(out_dir / f"{name}_overlay.png"))
    assert overlay.ndim == 3 and overlay.shape[0] >= height and overlay.shape[1] >= width
    return info


def test_automatic_task_on_a_messy_folder_processes_good_files_and_skips_bad_ones(
    messy_dir, tmp_path, capsys
):
    d, processed, skipped = messy_dir
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", d, "--output", out, "--task", "automatic"]
    argv += ["--vocab", VOCAB, "--device", "cpu", "--max-side", "128", *OPTS]
    assert _run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    done = {Path(p["file"]).stem for p in summary["processed"]}
    assert done == set(processed)  # sub/ is not searched without --recursive
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == set(skipped)
    for name, words in skipped.items():
        assert words in reasons[name], (name, reasons[name])
    assert summary["mean_seconds_per_image"] > 0
    total_masks = 0
    for name, size in processed.items():
        info = _check_json_and_rles(out, name, size)
        assert info["class_names"] == ["cat", "dog", "sky"]
        for record in info["records"]:
            assert {"point_coords", "crop_box", "category", "category_id", "score"} <= set(record)
            assert record["category"] == info["class_names"][record["category_id"]]
        total_masks += len(info["records"])
    assert total_masks > 0
    large = json.loads((out / "large.json").read_text())
    assert (large["processed_height"], large["processed_width"]) == (96, 128)
    assert large["scale"] == pytest.approx(96 / 300) and "downscaled" in large["notes"][0]
    rotated = json.loads((out / "rotated.json").read_text())
    assert any("EXIF orientation 6" in n for n in rotated["notes"])
    printed = capsys.readouterr().out
    assert f"Processed {len(processed)} of" in printed and f"Skipped {len(skipped)}" in printed


def test_semantic_task_writes_decodable_label_maps(messy_dir, tmp_path):
    d, _, _ = messy_dir
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", d / "rgb.jpg", d / "sub", "--output", out]
    argv += ["--task", "semantic", "--vocab", VOCAB, *OPTS]
    assert _run(argv) == 0
    for name, size in (("rgb", (48, 64)), ("nested", (40, 40))):
        info = _check_json_and_rles(out, name, size)
        label_map = np.asarray(Image.open(out / info["semantic_file"]))
        assert label_map.dtype == np.uint8 and label_map.shape == size
        assert info["semantic_ignore_value"] == 255
        assert set(np.unique(label_map).tolist()) <= {0, 1, 2, 255}
        assert all("category" in r for r in info["records"])


def test_panoptic_task_writes_segments_and_pngs(messy_dir, tmp_path):
    d, _, _ = messy_dir
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", str(d / "rg*.jpg"), "--output", out]
    argv += ["--task", "panoptic", "--vocab", VOCAB, "--thing-classes", "puppy", *OPTS]
    assert _run(argv) == 0
    info = _check_json_and_rles(out, "rgb", (48, 64))
    panoptic = np.asarray(Image.open(out / info["panoptic_file"])).astype(np.int64)
    ids = panoptic[..., 0] + 256 * panoptic[..., 1] + 256 * 256 * panoptic[..., 2]
    assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in info["segments_info"]}
    semantic = np.asarray(Image.open(out / info["semantic_file"]))
    for segment in info["segments_info"]:
        assert segment["isthing"] == (segment["category_id"] == 1)
        assert (semantic[ids == segment["id"]] == segment["category_id"]).all()
    assert (semantic[ids == 0] == 255).all()


def test_prompted_task_records_each_prompt_and_skips_images_it_does_not_fit(messy_dir, tmp_path):
    d, _, _ = messy_dir
    out = tmp_path / "out"
    # (50, 45) lies inside rgb.jpg (64 x 48) but outside gray.png's 56 x 40.
    argv = ["--config-file", TINY_CONFIG, "--input", d / "rgb.jpg", d / "gray.png"]
    argv += ["--output", out, "--task", "prompted", "--points", "10,12;50,45"]
    argv += ["--boxes", "2,3,30,40", "--vocab", VOCAB, "--multimask", *OPTS]
    assert _run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(p["file"]).name for p in summary["processed"]] == ["rgb.jpg"]
    (skip,) = summary["skipped"]
    assert Path(skip["file"]).name == "gray.png" and "outside" in skip["reason"]
    info = _check_json_and_rles(out, "rgb", (48, 64))
    point_records = [r for r in info["records"] if "point_coords" in r]
    box_records = [r for r in info["records"] if "box" in r]
    assert len(point_records) == 2 * 4 and len(box_records) == 1  # --multimask: 4 per point
    assert point_records[4]["point_coords"] == [[50.0, 45.0]]
    assert box_records[0]["box"] == [2.0, 3.0, 30.0, 40.0]
    assert all("category" in r and 0 <= r["score"] <= 1 for r in info["records"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "prompted", "--points", "10;20"], "has 1 value(s), expected 2"),
        (["--task", "prompted", "--points", "a,b"], "not a number"),
        (["--task", "prompted", "--boxes", "30,30,10,10"], "x1 <= x2"),
        (["--task", "prompted"], "needs --points and/or --boxes"),
        (["--task", "automatic", "--points", "1,1"], "only used with --task prompted"),
        (["--task", "semantic"], "needs class names"),
        (["--task", "semantic", "--vocab-name", "no_such_vocab"], "not packaged"),
        (["--task", "panoptic", "--vocab", VOCAB, "--thing-classes", "horse"], "not in the"),
        (["--task", "prompted", "--points", "500,500"], "fit none of the input images"),
    ],
)
def test_argument_errors_stop_before_any_work(
    messy_dir, tmp_path, monkeypatch, capsys, extra, message
):
    from uniovseg.inference.predictor import UniOVSegPredictor

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built for invalid arguments")

    monkeypatch.setattr(UniOVSegPredictor, "from_config", no_model)
    d, _, _ = messy_dir
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", d / "rgb.jpg", "--output", out, *extra]
    with pytest.raises(SystemExit) as exit_info:
        _run(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_nothing_processable_exits_with_one(messy_dir, tmp_path, capsys):
    d, _, _ = messy_dir
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", d / "truncated.jpg", d / "missing.png"]
    argv += ["--output", out, *OPTS]
    assert _run(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == [] and len(summary["skipped"]) == 2
    assert "Processed 0 of 2" in capsys.readouterr().out


def test_command_line_entry_point_with_recursive_directory(messy_dir, tmp_path):
    d, _, _ = messy_dir
    clean = tmp_path / "clean"
    (clean / "deeper").mkdir(parents=True)
    Image.fromarray(_photo(40, 52, 9)).save(clean / "deeper" / "a.png")
    Image.fromarray(_photo(44, 40, 10)).save(clean / "a.jpg")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "demo" / "demo.py"), "--config-file", TINY_CONFIG]
    command += ["--input", str(clean), "--recursive", "--output", str(out), *OPTS]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Processed 2 of 2" in done.stdout
    _check_json_and_rles(out, "a", (44, 40))
    _check_json_and_rles(out / "deeper", "a", (40, 52))
