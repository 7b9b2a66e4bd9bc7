"""Issue #13: demo/demo.py checks its output folder before any work, keeps every output under
colliding names, survives write failures of one image; a UniOVSegPredictor shared by threads
returns each thread's own image's results."""

import errno
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniovseg.inference import AutomaticMaskGenerator, UniOVSegPredictor, output_files

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
OPEN_FILTERS = [
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH",
    "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH",
    "0.0",
]
OPTS = ["--opts", *OPEN_FILTERS, "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "4"]
VOCAB = "cat; dog, puppy; sky"


def _load_demo():
    spec = importlib.util.spec_from_file_location(
        "uniovseg_demo_outputs", ROOT / "demo" / "demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _picture(height, width, seed):
    """A smooth picture with a disc whose place and colour depend on ``seed``, uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * seed)], -1)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.25 * min(height, width)) ** 2] = rng.integers(
        0, 255, 3
    )
    return image.astype(np.uint8)


def _save(path, seed, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_picture(*size, seed)).save(path)


@pytest.fixture()
def no_model(monkeypatch):
    """Makes building the model fail the test: the demo must stop before it."""

    def fail(*args, **kwargs):
        raise AssertionError("the model must not be built when the output folder is unusable")

    monkeypatch.setattr(UniOVSegPredictor, "from_config", fail)


def _expect_output_error(argv, capsys, words):
    with pytest.raises(SystemExit) as exit_info:
        demo.main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "error:" in err and words in err, err
    return err


# --------------------------------------------------------------------- output folder
def test_output_folder_that_is_a_file_or_under_a_file_stops_before_the_model(
    tmp_path, no_model, capsys
):
    _save(tmp_path / "in" / "a.png", 1)
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file, not a folder")
    argv = ["--config-file", TINY_CONFIG, "--input", tmp_path / "in", "--output"]
    _expect_output_error([*argv, blocker], capsys, "is a file")
    _expect_output_error([*argv, blocker / "out" / "deeper"], capsys, "lies under")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write in read-only folders"
)
def test_read_only_output_folder_stops_before_the_model(tmp_path, no_model, capsys):
    _save(tmp_path / "in" / "a.png", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = ["--config-file", TINY_CONFIG, "--input", tmp_path / "in"]
        _expect_output_error([*argv, "--output", locked], capsys, "cannot write")
        _expect_output_error([*argv, "--output", locked / "new"], capsys, "cannot create")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_stops_before_the_model(tmp_path, no_model, capsys, monkeypatch):
    """The read-only case as root sees it: the probe write is refused (simulated)."""

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    _save(tmp_path / "in" / "a.png", 1)
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", tmp_path / "in", "--output", out]
    err = _expect_output_error(argv, capsys, "cannot write in the output folder")
    assert "Permission denied" in err
    assert list(out.iterdir()) == []


def test_command_line_reports_an_unusable_output_folder_in_one_line(tmp_path):
    """As a process: exit status 2, one line on stderr, before the (missing) weights load."""
    _save(tmp_path / "in" / "a.png", 1)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    command = [sys.executable, str(ROOT / "demo" / "demo.py"), "--config-file", TINY_CONFIG]
    command += ["--input", str(tmp_path / "in"), "--output", str(blocker / "out")]
    command += ["--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lies under" in lines[0], done.stderr[-2000:]
    assert "missing.pth" not in done.stderr


def test_summary_that_cannot_be_written_exits_with_three(tmp_path, capsys, monkeypatch):
    real_write_json = output_files.write_json

    def full_disk(path, data):
        if os.path.basename(path) == output_files.SUMMARY_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_write_json(path, data)

    monkeypatch.setattr(output_files, "write_json", full_disk)
    (tmp_path / "broken.png").write_bytes(b"not a picture")  # skipped: no model is needed
    argv = ["--config-file", TINY_CONFIG, "--input", tmp_path / "broken.png"]
    assert demo.main([str(a) for a in [*argv, "--output", tmp_path / "out"]]) == 3
    captured = capsys.readouterr()
    assert "cannot write" in captured.err and "No space left" in captured.err
    assert "Processed 0 of 1" in captured.out


# --------------------------------------------------------------------- file names
def test_output_names_avoid_the_summary_and_case_collisions():
    names = output_files.output_names(["summary", "A", "a", "a_2", "sub/a", "SUB/A", "Summary"])
    assert names == ["summary_2", "A", "a_2", "a_2_2", "sub/a", "SUB/A_2", "Summary_3"]
    assert len({n.casefold() for n in names}) == len(names)


def test_summary_jpg_and_colliding_stems_keep_every_output(tmp_path):
    photos = tmp_path / "photos"
    inputs = {
        "summary.jpg": (1, (40, 48)),
        "a.jpg": (2, (36, 44)),
        "a.png": (3, (44, 36)),
        "A.gif": (4, (40, 40)),
        "x/a.jpg": (5, (32, 48)),
        "y/a.jpg": (6, (48, 32)),
    }
    for name, (seed, size) in inputs.items():
        _save(photos / name, seed, size)
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", photos, "--recursive", "--output", out]
    assert demo.main([str(a) for a in [*argv, "--device", "cpu", *OPTS]]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "automatic" and summary["skipped"] == []
    outputs = {
        Path(p["file"]).relative_to(photos).as_posix(): p["output"] for p in summary["processed"]
    }
    assert set(outputs) == set(inputs)
    assert outputs["summary.jpg"] == "summary_2.json"
    assert outputs["x/a.jpg"] == os.path.join("x", "a.json")
    assert len({o.casefold() for o in outputs.values()}) == len(inputs)
    for name, output in outputs.items():
        info = json.loads((out / output).read_text())
        assert Path(info["file_name"]) == photos / name  # its own JSON, never overwritten
        assert (info["height"], info["width"]) == inputs[name][1]
        overlay = out / output.replace(".json", "_overlay.png")
        assert Image.open(overlay).size == inputs[name][1][::-1]
    assert not list(out.rglob("*.tmp"))


def test_an_image_whose_files_cannot_be_written_is_skipped_and_the_others_kept(
    tmp_path, monkeypatch
):
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3)):
        _save(tmp_path / "in" / name, seed)
    real_save = Image.Image.save

    def full_disk_for_b(self, fp, *args, **kwargs):
        name = getattr(fp, "name", fp)
        if os.path.basename(str(name)).startswith("b_overlay.png"):
            fp.write(b"\x89PNG\r\n")  # a partly written file, as a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk_for_b)
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", tmp_path / "in", "--output", out]
    argv += ["--task", "semantic", "--vocab", VOCAB, "--device", "cpu", *OPTS]
    assert demo.main([str(a) for a in argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(p["file"]).name for p in summary["processed"]] == ["a.png", "c.png"]
    (skip,) = summary["skipped"]
    assert Path(skip["file"]).name == "b.png"
    assert "cannot write" in skip["reason"] and "No space left" in skip["reason"]
    # b's semantic PNG was written before its overlay failed: removed, all or nothing
    assert not list(out.glob("b*"))
    for name in ("a", "c"):
        assert {p.name for p in out.glob(f"{name}*")} == {
            f"{name}.json",
            f"{name}_overlay.png",
            f"{name}_semantic.png",
            f"{name}_semantic_color.png",
        }


def test_atomic_writes_keep_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "info.json"
    output_files.write_json(str(target), {"version": 1})
    with pytest.raises(TypeError):
        output_files.write_json(str(target), {"version": object()})
    assert json.loads(target.read_text()) == {"version": 1}
    picture = tmp_path / "overlay.png"
    output_files.write_rgb_png(str(picture), np.zeros((4, 5, 3), np.uint8))

    def half_written(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_written)
    with pytest.raises(OSError, match="No space"):
        output_files.write_rgb_png(str(picture), np.ones((4, 5, 3), np.uint8))
    monkeypatch.undo()
    assert not np.asarray(Image.open(picture)).any()  # the previous picture, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "overlay.png"]


# --------------------------------------------------------------------- shared predictor
SIZES = [(50, 90), (64, 48), (40, 40), (72, 56)]  # different sizes: mixed results cannot pass
POINTS = np.array([[10.0, 12.0], [30.0, 20.0], [20.0, 35.0]])
NUM_THREADS, CALLS_PER_THREAD = 4, 4


@pytest.fixture(scope="module")
def shared():
    import torch

    torch.manual_seed(0)
    predictor = UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPEN_FILTERS, device="cpu")
    predictor.set_vocabulary(VOCAB)
    return predictor


@pytest.fixture(scope="module")
def images():
    return [_picture(*size, seed=k + 1) for k, size in enumerate(SIZES)]


def _run_threads(work):
    """Runs ``work(k)`` in NUM_THREADS threads at once; returns their results or raises."""
    barrier = threading.Barrier(NUM_THREADS)
    results, errors = [None] * NUM_THREADS, []

    def run(k):
        try:
            barrier.wait()
            results[k] = work(k, barrier)
        except Exception as e:  # reported by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(NUM_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return results


def _assert_same_prediction(got, expected):
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_allclose(got.iou_predictions, expected.iou_predictions, atol=1e-6)
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert got.class_names == expected.class_names == ["cat", "dog", "sky"]


def test_shared_predictor_gives_each_thread_its_own_images_results(shared, images):
    expected = []
    for image in images:
        shared.set_image(image)
        expected.append(shared.predict_with_labels(POINTS))
    shared.reset_image()

    def work(k, barrier):
        outputs = []
        for _ in range(CALLS_PER_THREAD):
            barrier.wait()  # all threads set their images at the same moment
            shared.set_image(images[k])
            outputs.append(shared.predict_with_labels(POINTS))
        return outputs

    results = _run_threads(work)
    assert sum(len(r) for r in results) == NUM_THREADS * CALLS_PER_THREAD == 16
    for k, outputs in enumerate(results):
        for output in outputs:
            assert output.masks.shape == (len(POINTS), 4, *SIZES[k])
            _assert_same_prediction(output, expected[k])
    assert not shared.is_image_set  # the main thread's image was never set by the workers


def test_shared_generator_and_sessions_in_threads(shared, images):
    generator = AutomaticMaskGenerator(
        shared, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    expected_records = [generator.generate(image) for image in images]
    with shared.session(images[0]):
        expected_semantic = [shared.predict_semantic().labels]
    for image in images[1:]:
        with shared.session(image):
            expected_semantic.append(shared.predict_semantic().labels)

    def work(k, barrier):
        outputs = []
        for _ in range(2):
            barrier.wait()
            records = generator.generate(images[k])
            barrier.wait()
            with shared.session(images[k]):
                semantic = shared.predict_semantic().labels
            outputs.append((records, semantic))
        return outputs

    for k, outputs in enumerate(_run_threads(work)):
        for records, semantic in outputs:
            assert len(records) == len(expected_records[k]) > 0
            for got, want in zip(records, expected_records[k], strict=True):
                np.testing.assert_array_equal(got["segmentation"], want["segmentation"])
                assert got["category_id"] == want["category_id"]
            np.testing.assert_array_equal(semantic, expected_semantic[k])


def test_images_belong_to_the_thread_that_set_them(shared, images):
    shared.set_image(images[0])
    seen = {}

    def other_thread():
        seen["is_image_set"] = shared.is_image_set
        try:
            shared.predict(POINTS)
        except ValueError as e:
            seen["error"] = str(e)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["is_image_set"] is False and "no image is set in this thread" in seen["error"]
    before = shared.predict(POINTS)[0]
    with shared.session(images[1]):
        assert shared.original_size == SIZES[1]
    assert shared.original_size == SIZES[0]  # the session gave the previous image back
    np.testing.assert_array_equal(shared.predict(POINTS)[0], before)
    shared.reset_image()
