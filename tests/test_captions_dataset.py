"""Caption-manifest loader: valid rows, every kind of bad row, paths, lazy registration."""

import json
import logging
import os

import pytest
from PIL import Image

from uniovseg.data.datasets.captions import load_caption_manifest, register_caption_dataset


def _image(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return str(path)


@pytest.fixture
def manifest(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    absolute = _image(tmp_path / "elsewhere" / "c.jpg")
    lines = [
        json.dumps({"image": "images/a.jpg", "caption": "  a red car on the road. "}),  # 0 ok
        "{not json",  # 1 malformed
        json.dumps({"image": "images/missing.jpg", "caption": "gone"}),  # 2 missing file
        json.dumps({"image": "images/b.jpg", "caption": "   "}),  # 3 empty caption
        json.dumps(["images/a.jpg", "a list"]),  # 4 not an object
        json.dumps({"caption": "no image"}),  # 5 no image key
        json.dumps({"image": "images/b.jpg", "caption": 7}),  # 6 caption not a string
        "",  # 7 blank line: ignored silently
        json.dumps(
            {
                "image": absolute,
                "caption": "a tree.",
                "refined_caption": "A green tree on grass.",
                "entities": ["green tree", " grass "],
            }
        ),  # 8 ok, absolute path, optional fields
        json.dumps(
            {
                "image": "images/b.jpg",
                "caption": "a ball.",
                "entities": ["ball", 3],
                "refined_caption": "",
            }
        ),  # 9 ok, invalid optional fields dropped
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_valid_rows_and_fields(manifest, tmp_path):
    dicts = load_caption_manifest(manifest)
    assert [d["image_id"] for d in dicts] == [0, 8, 9]
    first, second, third = dicts
    assert first == {
        "file_name": str(tmp_path / "images" / "a.jpg"),
        "image_id": 0,
        "caption": "a red car on the road.",
    }
    assert os.path.isabs(second["file_name"]) and second["file_name"].endswith("c.jpg")
    assert second["refined_caption"] == "A green tree on grass."
    assert second["entities"] == ["green tree", "grass"]
    assert "entities" not in third and "refined_caption" not in third


def test_bad_rows_are_counted_per_reason(manifest, caplog):
    with caplog.at_level(logging.WARNING, logger="uniovseg.data.datasets.captions"):
        load_caption_manifest(manifest)
    text = caplog.text
    for reason in (
        "skipped 1 rows (malformed JSON)",
        "skipped 1 rows (image file not found)",
        "skipped 1 rows (empty caption)",
        "skipped 1 rows (row is not a JSON object)",
        "skipped 1 rows (missing or non-string 'image')",
        "skipped 1 rows (missing or non-string 'caption')",
        "ignored an invalid 'entities' in 1 rows",
        "ignored an invalid 'refined_caption' in 1 rows",
    ):
        assert reason in text


def test_image_root_and_unchecked_files(manifest, tmp_path):
    other_root = tmp_path / "mirror"
    _image(other_root / "images" / "a.jpg")
    dicts = load_caption_manifest(manifest, image_root=str(other_root))
    assert [d["image_id"] for d in dicts] == [0, 8]  # b.jpg is not mirrored
    assert dicts[0]["file_name"] == str(other_root / "images" / "a.jpg")
    unchecked = load_caption_manifest(manifest, check_files=False)
    assert [d["image_id"] for d in unchecked] == [0, 2, 8, 9]


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(ValueError, match="one JSON object per line"):
        load_caption_manifest(str(tmp_path / "nope.jsonl"))


def test_registration_is_lazy(manifest, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_caption_dataset("test_captions_lazy_missing", str(tmp_path / "later.jsonl"))
    assert MetadataCatalog.get("test_captions_lazy_missing").dataset_type == "caption"
    with pytest.raises(ValueError):
        DatasetCatalog.get("test_captions_lazy_missing")

    register_caption_dataset("test_captions_ok", manifest)
    assert len(DatasetCatalog.get("test_captions_ok")) == 3
    assert MetadataCatalog.get("test_captions_ok").image_root == str(tmp_path)
