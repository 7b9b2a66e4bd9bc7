"""The web app (demo/app.py): each uploaded photo is encoded once and every click, vocabulary
and "segment everything" reuses it; prompts, background points, boxes and vocabularies give
the pictures, legend and JSON the page offers; sessions do not mix photos or vocabularies; and,
in a real headless Chromium, a user uploads a photo, clicks, types a vocabulary and downloads
the JSON while the page reaches no other host.

The browser test needs Chromium (/usr/bin/chromium, Debian's `chromium` package; or
UNIOVSEG_CHROMIUM) and the `playwright` and `gradio` packages; it skips without them, except
where UNIOVSEG_REQUIRE_BROWSER=1 (.ci/run sets it), where it fails. Its screenshots go to
UNIOVSEG_WEB_SCREENSHOT (a folder) or to pytest's tmp_path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from uniovseg.inference import UniOVSegPredictor
from uniovseg.inference.web_session_store import WebSessionStore
from uniovseg.inference.web_views import parse_thing_classes, parse_vocabulary_text

# Gradio's own calls into pandas 3 and numpy (not ours to fix).
pytestmark = [
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:`np.bool8` is a deprecated alias"),
]
ROOT = Path(__file__).resolve().parents[1]
TINY_STAGE2 = str(ROOT / "configs" / "tiny" / "stage2_tiny.yaml")
# Random weights score every mask low: keep them all, so that results are never empty.
OPEN_FILTERS = [
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH", "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH", "0.0",
]  # fmt: skip
H, W = 120, 160
BROWSER_PHOTO = Path("/work/shared/data/photos/ADE_val_00001632.jpg")  # 400 x 222
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium opens background connections, refused on closed networks.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return UniOVSegPredictor.from_config(TINY_STAGE2, opts=OPEN_FILTERS, device="cpu")


@pytest.fixture()
def encodings(predictor, monkeypatch):
    """Counts the image encodings (UniOVSeg.encode_image: backbone + pixel decoder)."""
    calls = []
    encode = predictor.model.encode_image

    def counted(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(predictor.model, "encode_image", counted)
    return calls


def _photo(path: Path, height: int = H, width: int = W) -> str:
    yy, xx = np.mgrid[0:height, 0:width]
    picture = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1)
    picture[(yy - height // 2) ** 2 + (xx - width // 3) ** 2 < (height // 4) ** 2] = (200, 40, 120)
    picture[10:40, width - 50 : width - 10] = (20, 200, 60)
    Image.fromarray(picture.astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture()
def store(predictor):
    store = WebSessionStore(predictor)
    yield store
    store.close_all()


@pytest.fixture()
def session(store, tmp_path):
    return store.get(store.open(_photo(tmp_path / "street.png")))


def _decode(record) -> np.ndarray:
    return mask_util.decode(record["segmentation"]).astype(bool)


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- sessions
def test_one_upload_is_encoded_once_for_every_click_vocabulary_and_everything(
    predictor, store, tmp_path, encodings
):
    session = store.get(store.open(_photo(tmp_path / "street.png")))
    assert len(encodings) == 1
    point = session.click(53, 60, "foreground point")
    assert "Foreground point at (53, 60): 4 mask(s)" in point.status
    assert len(point.gallery) == 4 and sum(c.startswith("* ") for _, c in point.gallery) == 1
    np.testing.assert_array_equal(point.canvas[:H, :W].shape, (H, W, 3))
    assert point.canvas.shape[:2] != (H, W)  # a legend beside or under the photo
    session.click(140, 20, "background point")
    first = session.click(10, 70, "box corner")
    assert "first corner" in first.status and first.files == point.files
    box = session.click(90, 115, "box corner")
    assert "Box at (10, 70, 90, 115): 1 mask(s)" in box.status and len(box.gallery) == 1
    session.choose_mask(0)
    session.segment_vocabulary("sky, grass, cat", "cat")
    session.segment_everything()
    session.click(30, 30, "foreground point")
    assert len(encodings) == 1  # every call above ran the prompt decoder or heads only
    store.open(_photo(tmp_path / "other.png"))
    assert len(encodings) == 2  # a new upload is a new encoding


def test_prompt_json_has_every_mask_of_each_prompt_in_original_pixels(session):
    session.click(53, 60, "foreground point")
    session.click(10, 70, "box corner")
    view = session.click(90, 115, "box corner")
    (path,) = view.files
    assert path.endswith("street_prompts.json")
    info = _json(path)
    assert info["task"] == "prompted" and (info["height"], info["width"]) == (H, W)
    records = info["records"]
    assert [(r["prompt_index"], r["mask_index"]) for r in records] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0),
    ]  # fmt: skip
    assert records[0]["point_coords"] == [[53.0, 60.0]] and records[4]["box"] == [10, 70, 90, 115]
    assert sum(r["chosen"] for r in records) == 2  # one shown mask per prompt
    best = max(records[:4], key=lambda r: r["predicted_iou"])
    assert best["chosen"]
    for record in records:
        mask = _decode(record)
        assert mask.shape == (H, W) and mask.sum() == record["area"]
    assert "category" not in records[0]  # no vocabulary yet


def test_a_background_point_erases_its_mask_from_the_foreground_masks(session):
    first = session.click(53, 60, "foreground point")
    alone = {r["mask_index"]: _decode(r) for r in _json(first.files[0])["records"]}
    view = session.click(53, 60, "background point")  # the same point: the same masks
    info = _json(view.files[0])
    assert info["background_points"] == [[53.0, 60.0]]
    records = info["records"]
    assert len(records) == 4  # a background point is not a result of its own
    chosen = next(r for r in records if r["chosen"])
    assert chosen["area"] == 0 and not _decode(chosen).any()  # erased by its own twin
    erase = alone[chosen["mask_index"]]
    for record in records:
        np.testing.assert_array_equal(_decode(record), alone[record["mask_index"]] & ~erase)
    # Another mask of the background point (the last prompt) erases that one instead.
    other = (chosen["mask_index"] + 1) % 4
    for record in _json(session.choose_mask(other).files[0])["records"]:
        np.testing.assert_array_equal(_decode(record), alone[record["mask_index"]] & ~alone[other])
    assert view.status.startswith("Background point at (53, 60)")


def test_choosing_a_mask_in_the_gallery_shows_it_and_marks_it_in_the_json(session):
    view = session.click(53, 60, "foreground point")
    chosen = next(i for i, (_, c) in enumerate(view.gallery) if c.startswith("* "))
    other = (chosen + 1) % 4
    view = session.choose_mask(other)
    assert view.gallery[other][1].startswith("* mask")
    assert [r["chosen"] for r in _json(view.files[0])["records"]] == [i == other for i in range(4)]
    with pytest.raises(ValueError, match="has 4 masks"):
        session.choose_mask(4)


def test_vocabulary_gives_semantic_panoptic_legend_files_and_labels_the_prompts(session):
    session.click(53, 60, "foreground point")
    view = session.segment_vocabulary("sky, grass, cat", "cat")
    assert [row.name for row in view.legend] == ["sky", "grass", "cat"]
    assert 0 < sum(row.semantic_share for row in view.legend) <= 1 + 1e-6
    assert sum(row.segments for row in view.legend) >= 1
    assert view.semantic.shape[0] >= H and view.panoptic.shape[0] >= H
    names = [Path(p).name for p in view.files]
    assert names == [
        "street_vocabulary.json",
        "street_semantic.png",
        "street_semantic_color.png",
        "street_panoptic.png",
    ]
    info = _json(view.files[0])
    assert info["task"] == "semantic+panoptic" and info["class_names"] == ["sky", "grass", "cat"]
    assert info["records"] and all("category" in r for r in info["records"])
    label_map = np.asarray(Image.open(view.files[1]))
    assert label_map.shape == (H, W) and set(np.unique(label_map)) <= {0, 1, 2, 255}
    # The prompt's masks now carry labels of this vocabulary, in the gallery and the JSON.
    assert all(
        c.split(": ", 1)[1].split()[0] in info["class_names"] for _, c in view.prompts.gallery
    )
    assert "category" in _json(view.prompts.files[0])["records"][0]


def test_segment_everything_draws_and_records_the_automatic_masks(session):
    view = session.segment_everything()
    info = _json(view.files[0])
    assert info["task"] == "automatic" and info["records"]
    count = len(info["records"])
    assert f"Segment everything: {count} mask{'s' if count != 1 else ''} (" in view.status
    assert "category" not in info["records"][0]
    session.segment_vocabulary("sky; grass", "")
    labelled = _json(session.segment_everything().files[0])
    assert labelled["class_names"] == ["sky", "grass"] and "category" in labelled["records"][0]


def test_sessions_keep_their_own_photo_and_vocabulary(store, tmp_path):
    first = store.get(store.open(_photo(tmp_path / "a.png")))
    second = store.get(store.open(_photo(tmp_path / "b.png", height=90, width=70)))
    first.segment_vocabulary("sky, grass", "")
    view = second.click(35, 45, "foreground point")  # the model holds the first's vocabulary
    assert view.canvas[:90, :70].shape == (90, 70, 3)
    assert all(c.split(": ", 1)[1].startswith("IoU") for _, c in view.gallery)  # no labels
    assert "category" not in _json(second.segment_everything().files[0])["records"][0]
    again = first.click(53, 60, "foreground point")
    assert _json(again.files[0])["height"] == H
    assert all(c.split(": ", 1)[1].split()[0] in ("sky", "grass") for _, c in again.gallery)


def test_large_photos_are_processed_downscaled_but_the_json_is_in_original_pixels(
    predictor, tmp_path
):
    store = WebSessionStore(predictor, max_side=80)
    try:
        session = store.get(store.open(_photo(tmp_path / "big.png")))
        assert session.image.shape[:2] == (60, 80)
        view = session.click(40, 30, "foreground point")
        info = _json(view.files[0])
        assert (info["height"], info["width"], info["processed_width"]) == (H, W, 80)
        assert info["records"][0]["point_coords"] == [[80.0, 60.0]]
        assert _decode(info["records"][0]).shape == (H, W)
    finally:
        store.close_all()


def test_bad_input_is_refused_with_a_reason_before_any_work(session, store, encodings):
    with pytest.raises(ValueError, match="click on the photo"):
        session.click(W + 5, 10, "foreground point")  # on the legend
    with pytest.raises(ValueError, match="mode must be one of"):
        session.click(5, 5, "negative point")
    session.click(10, 10, "box corner")
    with pytest.raises(ValueError, match="differ in x and in y"):
        session.click(10, 50, "box corner")
    with pytest.raises(ValueError, match="type class names"):
        session.segment_vocabulary("  ", "")
    with pytest.raises(ValueError, match="'dog' is not in the vocabulary"):
        session.segment_vocabulary("cat, sky", "dog")
    assert session.vocabulary is None  # a refused vocabulary is not kept
    with pytest.raises(ValueError, match="click on the photo first"):
        session.choose_mask(0)
    with pytest.raises(ValueError, match="upload a photo first"):
        store.get(None)
    assert encodings == []


def test_the_least_recently_used_photo_is_closed_beyond_max_sessions(predictor, tmp_path):
    store = WebSessionStore(predictor, max_sessions=2)
    try:
        ids = [store.open(_photo(tmp_path / f"{k}.png")) for k in range(2)]
        first = store.get(ids[0])  # now the most recently used
        third = store.open(_photo(tmp_path / "2.png"))
        assert len(store) == 2 and store.get(third)
        with pytest.raises(ValueError, match="closed to free memory"):
            store.get(ids[1])
        assert os.path.isdir(first.output_dir)
        store.close(ids[0])
        assert not os.path.exists(first.output_dir)
        with pytest.raises(ValueError, match="upload it again"):
            first.click(5, 5, "foreground point")
    finally:
        store.close_all()


def test_vocabulary_text_separates_classes_by_semicolons_or_commas_and_never_reads_files(
    tmp_path,
):
    assert parse_vocabulary_text("cat, dog, sky") == ["cat", "dog", "sky"]
    assert parse_vocabulary_text("cat; dog, puppy; sky") == ["cat", "dog, puppy", "sky"]
    assert len(parse_vocabulary_text("ade20k_150")) == 150
    secret = tmp_path / "classes.txt"
    secret.write_text("secret class\n")
    assert parse_vocabulary_text(str(secret)) == [str(secret)]  # a name, not a file to read
    assert parse_thing_classes("cat; dog, puppy ,") == ["cat", "dog", "puppy"]


# ----------------------------------------------------------------------------- gradio callbacks
def test_page_callbacks_return_every_output_and_show_errors(predictor, tmp_path, encodings):
    gr = pytest.importorskip("gradio")
    from uniovseg.inference.web_app import build_web_app

    app = build_web_app(predictor)
    callbacks = app.uniovseg_callbacks
    path = _photo(tmp_path / "street.png")
    canvas, gallery, status, files, session_id, *hidden, legend = callbacks.upload(path, None)
    assert canvas.shape == (H, W, 3) and "encoded in" in status and session_id
    assert [h["visible"] for h in hidden] == [False, False, False] and legend == ""

    def select(index):
        return gr.SelectData(None, {"index": index, "value": None})

    canvas, gallery, status, files = callbacks.click(
        session_id, "foreground point", select([53, 60])
    )
    assert len(gallery["value"]) == 4 and files[0].endswith(".json")
    assert gallery["value"][gallery["selected_index"]][1].startswith("* ")  # the shown mask
    canvas, gallery, status, files = callbacks.choose(session_id, select(2))
    assert gallery["selected_index"] == 2 and gallery["value"][2][1].startswith("* ")
    semantic, panoptic, legend, canvas, gallery, status, files = callbacks.vocabulary(
        session_id, "sky, grass, cat", ""
    )
    assert semantic["visible"] and panoptic["visible"] and gallery["selected_index"] == 2
    assert all(f"<b>{name}</b>" in legend for name in ("sky", "grass", "cat"))
    automatic, status, files = callbacks.everything(session_id)
    assert automatic["visible"] and "Segment everything" in status
    # Bad input: a warning with the reason, every output left as it was (gr.skip()).
    with pytest.warns(UserWarning, match="not beside it"):
        assert callbacks.click(session_id, "foreground point", select([W, 0])) == gr.skip()
    with pytest.warns(UserWarning, match="upload a photo first"):
        assert callbacks.everything(None) == gr.skip()
    with pytest.warns(UserWarning, match="&#x27;&lt;b&gt;&#x27; is not in the vocabulary"):
        callbacks.vocabulary(session_id, "cat", "<b>")  # user text shown as text
    # A new upload in the same tab closes the old photo.
    _, _, _, _, new_id, *_ = callbacks.upload(path, session_id)
    with pytest.warns(UserWarning, match="upload a photo first|closed"):
        callbacks.clear(session_id)
    assert callbacks.store.get(new_id) and len(encodings) == 2
    callbacks.store.close_all()


def test_legend_lists_found_classes_by_share_then_at_most_20_others_escaped():
    pytest.importorskip("gradio")
    from uniovseg.inference.web_app import legend_html
    from uniovseg.inference.web_views import LegendRow

    rows = [LegendRow(f"c{k}", (1, 2, 3), 0.0, 0) for k in range(30)]
    rows[7] = LegendRow("road", (1, 2, 3), 0.1, 1)
    rows[9] = LegendRow("sky", (1, 2, 3), 0.6, 1)
    rows[12] = LegendRow("<b>car</b>", (1, 2, 3), 0.0, 2)  # panoptic segments only
    legend = legend_html(rows)
    names = re.findall(r"<b>(.*?)</b>:", legend)
    assert names[:3] == ["sky", "road", "&lt;b&gt;car&lt;/b&gt;"]
    assert len(names) == 3 + 20 and "and 7 more classes" in legend
    assert "60% of the semantic map, 1 panoptic segment<" in legend
    assert "not in the semantic map, 2 panoptic segments" in legend


def test_app_command_needs_a_model_and_accepts_host_and_port():
    pytest.importorskip("gradio")
    from uniovseg.inference.web_app import build_parser

    parser = build_parser()
    args = parser.parse_args(["--model", "bundles/stage2", "--host", "0.0.0.0", "--port", "8000"])
    assert (args.model, args.host, args.port) == ("bundles/stage2", "0.0.0.0", 8000)
    args = parser.parse_args(["--config-file", "c.yaml", "--opts", "MODEL.WEIGHTS", "w.pth"])
    assert args.opts == ["MODEL.WEIGHTS", "w.pth"]
    for bad in ([], ["--model", "a", "--config-file", "b"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_app_command_serves_locally_with_an_upload_limit(monkeypatch):
    """main() builds the model and launches the page on the given address, with no share link
    and the server-side upload limit (Gradio refuses larger files before reading them)."""
    gradio = pytest.importorskip("gradio")
    from uniovseg.inference import web_app

    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    argv = ["--config-file", TINY_STAGE2, "--device", "cpu", "--port", "8123"]
    assert web_app.main(argv) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 8123
    assert launched["share"] is False and launched["max_file_size"] == "50mb"
    assert web_app.main([*argv, "--max-file-size", "2gb"]) == 0
    assert launched["max_file_size"] == "2gb"


def test_a_launch_whose_localhost_check_times_out_is_retried(monkeypatch):
    """Gradio refuses to run when its one 3 s localhost request times out (a busy machine);
    the launch is retried, and any other error, or the last failure, is raised."""
    gradio = pytest.importorskip("gradio")
    from uniovseg.inference.web_app import launch_locally

    calls, closed = [], []
    refusal = ValueError("When localhost is not accessible, a shareable link must be created.")
    outcomes = [refusal, None]

    def launch(self, **kwargs):
        calls.append(kwargs)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(gradio.Blocks, "launch", launch)
    monkeypatch.setattr(gradio.Blocks, "close", lambda self: closed.append(True))
    app = gradio.Blocks(analytics_enabled=False)
    launch_locally(app, server_port=8124)
    assert len(calls) == 2 and len(closed) == 1
    assert calls[1] == {"share": False, "ssr_mode": False, "server_port": 8124}
    outcomes[:] = [refusal, refusal]
    with pytest.raises(ValueError, match="localhost"):
        launch_locally(app, attempts=2)
    outcomes[:] = [ValueError("port in use")]
    with pytest.raises(ValueError, match="port in use"):
        launch_locally(app)


# ----------------------------------------------------------------------------- browser
def _browser_or_skip() -> str:
    """The Chromium executable; skips (fails under UNIOVSEG_REQUIRE_BROWSER=1) without one."""
    chromium = os.environ.get("UNIOVSEG_CHROMIUM", "/usr/bin/chromium")
    missing = [
        f"the {name} package (pip install {name})"
        for name in ("gradio", "playwright")
        if importlib.util.find_spec(name) is None
    ]
    if not os.path.exists(chromium):
        missing.append(f"Chromium at {chromium} (apt-get install chromium, or UNIOVSEG_CHROMIUM)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("UNIOVSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; UNIOVSEG_REQUIRE_BROWSER=1 makes this a failure")
        pytest.skip(reason)
    return chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _no_outside_connections(monkeypatch):
    """Records (and refuses) every connection of this process to a non-loopback address."""
    outside = []
    connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            outside.append(address)
            raise OSError(f"the web app test allows no connection to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield outside


def _click_pixel(image, x: int, y: int) -> None:
    """Clicks pixel (x, y) of the picture shown by an <img>, as Gradio maps clicks: the picture
    is centred and never enlarged."""
    box = image.bounding_box()
    width, height = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height, 1)
    left, top = (box["width"] - width * scale) / 2, (box["height"] - height * scale) / 2
    image.click(position={"x": left + (x + 0.5) * scale, "y": top + (y + 0.5) * scale})


def _wait_for_status(page, text: str) -> str:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)", arg=text
    )
    return page.inner_text("#status")


def _screenshot(page, path: Path) -> None:
    """A full-page screenshot for a person to look at, once Gradio's fade of outputs that were
    just updated is over (cosmetic: nothing is asserted on it)."""
    page.wait_for_timeout(1000)
    page.screenshot(path=str(path), full_page=True)


def test_in_a_headless_browser_a_user_uploads_clicks_types_a_vocabulary_and_downloads(
    predictor, tmp_path, encodings, monkeypatch
):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    from uniovseg.inference.web_app import build_web_app, launch_locally

    shots = Path(os.environ.get("UNIOVSEG_WEB_SCREENSHOT") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    photo = str(BROWSER_PHOTO) if BROWSER_PHOTO.is_file() else _photo(tmp_path / "street.png")
    height, width = np.asarray(Image.open(photo)).shape[:2]
    port = _free_port()
    server = f"http://127.0.0.1:{port}"
    requests = []
    with _no_outside_connections(monkeypatch) as outside:
        app = build_web_app(predictor)
        launch_locally(
            app,
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,  # serves from a background thread
            quiet=True,
        )
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"),  # a new, empty profile
                    executable_path=chromium,
                    headless=True,
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1280, "height": 1400},
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(60_000)
                    page.on("request", lambda request: requests.append(request.url))
                    page.goto(server)
                    page.set_input_files("#canvas input[type=file]", photo)
                    status = _wait_for_status(page, "encoded in")
                    assert f"{width}x{height} px" in status
                    canvas = page.locator("#canvas img")

                    x, y = width // 2, height * 2 // 3
                    _click_pixel(canvas, x, y)
                    status = _wait_for_status(page, f"Foreground point at ({x}, {y})")
                    assert "4 mask(s)" in status and "image encoded once" in status
                    page.wait_for_function("document.querySelectorAll('#masks img').length == 4")
                    masks = page.inner_text("#masks")
                    assert "* mask" in masks and "IoU" in masks
                    page.locator("#masks img").nth(1).click()  # show the second granularity
                    _wait_for_status(page, "Showing mask 2 of the last prompt")
                    page.wait_for_function(
                        "document.querySelector('#masks').innerText.includes('* mask 2')"
                    )
                    page.check("#mode input[value='box corner']")
                    _click_pixel(canvas, 10, height // 2)
                    _wait_for_status(page, "first corner")
                    _click_pixel(canvas, width // 3, height - 10)
                    status = _wait_for_status(page, "Box at")
                    assert f"(10, {height // 2}, {width // 3}, {height - 10})" in status
                    page.wait_for_function("document.querySelectorAll('#masks img').length == 1")
                    page.wait_for_function(  # the prompts' legend is beside or under the photo
                        "([w, h]) => { const e = document.querySelector('#canvas img');"
                        " return e.naturalWidth > w || e.naturalHeight > h; }",
                        arg=[width, height],
                    )
                    _screenshot(page, shots / "web_app_click.png")

                    page.check("#mode input[value='background point']")
                    _click_pixel(canvas, width - 20, 15)
                    _wait_for_status(page, f"Background point at ({width - 20}, 15)")
                    page.fill("#vocabulary textarea, #vocabulary input", "sky, grass, building")
                    page.click("#segment")
                    status = _wait_for_status(page, "3 classes")
                    legend = page.inner_text("#legend")
                    for name in ("sky", "grass", "building"):
                        assert f"{name}:" in legend
                    assert "panoptic segment" in legend and "semantic map" in legend
                    page.locator("#semantic img").wait_for()
                    page.locator("#panoptic img").wait_for()
                    masks = page.inner_text("#masks")  # the last prompt's masks, now labelled
                    assert any(f"{name} " in masks for name in ("sky", "grass", "building"))
                    _screenshot(page, shots / "web_app_vocabulary.png")
                    link = page.locator("#files a[download$='_vocabulary.json']")
                    link.wait_for()
                    info = page.request.get(link.get_attribute("href")).json()
                    assert info["task"] == "semantic+panoptic"
                    assert info["class_names"] == ["sky", "grass", "building"]
                    assert (info["height"], info["width"]) == (height, width)

                    page.click("#everything")
                    status = _wait_for_status(page, "Segment everything:")
                    page.locator("#automatic img").wait_for()
                    page.locator("#files a[download$='_everything.json']").wait_for()
                    # A click beside the photo (on the legend) is refused with the reason.
                    shown = canvas.evaluate("e => [e.naturalWidth, e.naturalHeight]")
                    _click_pixel(canvas, shown[0] - 2, shown[1] - 2)
                    page.get_by_text("not beside it").first.wait_for()
                    _screenshot(page, shots / "web_app_warning.png")
                    page.click("#clear")
                    _wait_for_status(page, "Prompts cleared")
                    page.wait_for_function("document.querySelectorAll('#masks img').length == 0")
                    page.wait_for_function(  # the photo alone again
                        "([w, h]) => { const e = document.querySelector('#canvas img');"
                        " return e.naturalWidth == w && e.naturalHeight == h; }",
                        arg=[width, height],
                    )
                finally:
                    browser.close()
        finally:
            app.close()
            app.uniovseg_callbacks.store.close_all()
    assert len(encodings) == 1  # one upload, one encoding, whatever the page asked after
    assert outside == []  # the server made no connection beyond this machine
    beyond = [url for url in requests if not url.startswith((server, "data:", "blob:"))]
    assert beyond == []  # nor did the page
