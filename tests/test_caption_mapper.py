"""CaptionDatasetMapper: geometry, entity sources, bad rows, config wiring."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from uniovseg.config import add_uniovseg_config
from uniovseg.data.caption_mapper import CaptionDatasetMapper
from uniovseg.data.datasets.captions import load_caption_manifest
from uniovseg.data.entity_extraction import RuleBasedEntityParser

STAGE2_TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "stage2_tiny.yaml"


@pytest.fixture
def image_file(tmp_path):
    rgb = np.zeros((60, 90, 3), dtype=np.uint8)
    rgb[:, :45] = (255, 0, 0)  # left half red, right half blue
    rgb[:, 45:] = (0, 0, 255)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def _mapper(**kwargs):
    args = {"crop_size": 64, "entity_parser": RuleBasedEntityParser()}
    args.update(kwargs)
    return CaptionDatasetMapper(**args)


def test_longest_side_resize_and_bottom_right_padding(image_file):
    out = _mapper()({"file_name": image_file, "image_id": 3, "caption": "a red car and a dog."})
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert out["image_size"] == (43, 64)  # 60 x 90 -> 42.67 x 64, never cropped
    assert (out["height"], out["width"]) == (60, 90)
    assert torch.all(out["image"][:, 43:] == 128)  # padding below the image
    assert out["image"][:, :43, :30].float().mean(dim=(1, 2)).tolist() == [255.0, 0.0, 0.0]
    assert out["entities"] == ["red car", "dog"] and out["caption"] == "a red car and a dog."
    assert out["image_id"] == 3


def test_flip_mirrors_the_valid_region(image_file):
    out = _mapper(flip_prob=1.0)({"file_name": image_file, "caption": "a dog"})
    assert out["image"][:, :43, :30].float().mean(dim=(1, 2)).tolist() == [0.0, 0.0, 255.0]
    assert torch.all(out["image"][:, 43:] == 128)


def test_entity_sources_refined_caption_and_limits(image_file):
    row = {
        "file_name": image_file,
        "caption": "a blurry picture",
        "refined_caption": "a black dog and a white cat on a sofa",
        "entities": ["Tabby  Cat", "sofa", "tabby cat"],
    }
    assert _mapper()(row)["entities"] == ["black dog", "white cat", "sofa"]
    assert _mapper(max_entities=2)(row)["entities"] == ["black dog", "white cat"]
    unrefined = _mapper(use_refined=False, skip_without_entities=False)(row)
    assert unrefined["entities"] == [] and unrefined["caption"] == "a blurry picture"
    manifest = _mapper(entity_source="manifest", entity_parser=None)(row)
    assert manifest["entities"] == ["tabby cat", "sofa"]  # as given: normalised, de-duplicated


def test_bad_rows_are_skipped_and_counted(tmp_path, image_file):
    mapper = _mapper()
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    assert mapper({"file_name": str(tmp_path / "missing.jpg"), "caption": "a dog"}) is None
    assert mapper({"file_name": str(corrupt), "caption": "a dog"}) is None
    assert mapper({"file_name": image_file, "caption": "a photo of it."}) is None
    assert dict(mapper.skip_counts) == {"unreadable_image": 2, "no_entities": 1}
    kept = _mapper(skip_without_entities=False)({"file_name": image_file, "caption": "it"})
    assert kept is not None and kept["entities"] == []


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="ENTITY_SOURCE"):
        CaptionDatasetMapper(entity_source="llm")
    with pytest.raises(ValueError, match="entity_parser"):
        CaptionDatasetMapper(entity_source="parser", entity_parser=None)


def test_from_config_and_manifest_rows(tmp_path, image_file):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.merge_from_file(str(STAGE2_TINY))
    mapper = CaptionDatasetMapper(cfg)
    assert mapper.crop_size == 128 and mapper.flip_prob == 0.0
    assert isinstance(mapper.entity_parser, RuleBasedEntityParser)

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        f'{{"image": "{Path(image_file).name}", "caption": "a red car"}}\n'
        '{"image": "gone.jpg", "caption": "a dog"}\n',
        encoding="utf-8",
    )
    (row,) = load_caption_manifest(str(manifest))
    out = mapper(row)
    assert out["image"].shape == (3, 128, 128) and out["entities"] == ["red car"]

    cfg.INPUT.UNIOVSEG.CAPTION.PARSER = "spacy"
    cfg.INPUT.UNIOVSEG.CAPTION.SPACY_MODEL = "no_such_spacy_pipeline_xyz"
    with pytest.raises(ValueError, match="rule"):  # explicit error, never a silent fallback
        CaptionDatasetMapper(cfg)
    cfg.INPUT.UNIOVSEG.CAPTION.PARSER = "nltk"
    with pytest.raises(ValueError, match="PARSER"):
        CaptionDatasetMapper(cfg)
    cfg.INPUT.UNIOVSEG.CAPTION.ENTITY_SOURCE = "manifest"
    cfg.INPUT.UNIOVSEG.CAPTION.PARSER = "rule"
    assert CaptionDatasetMapper(cfg).entity_parser is None
