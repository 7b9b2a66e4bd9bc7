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
    parsed = _mapper(entity_source="parser")(row)
    assert parsed["entities"] == ["black dog", "white cat", "sofa"]
    assert parsed["entity_source"] == "rule"
    assert _mapper(entity_source="parser", max_entities=2)(row)["entities"] == [
        "black dog",
        "white cat",
    ]
    unrefined = _mapper(entity_source="parser", use_refined=False, skip_without_entities=False)
    assert unrefined(row)["entities"] == [] and unrefined(row)["caption"] == "a blurry picture"
    manifest = _mapper(entity_source="manifest", entity_parser=None)(row)
    assert manifest["entities"] == ["tabby cat", "sofa"]  # as given: normalised, de-duplicated
    assert manifest["entity_source"] == "manifest"
    missing = _mapper(entity_source="manifest", entity_parser=None, skip_without_entities=False)
    assert missing({**row, "entities": None})["entities"] == []


def test_auto_entity_source_uses_manifest_entities_when_a_row_has_them(image_file):
    mapper = _mapper()  # entity_source="auto", the default
    row = {"file_name": image_file, "caption": "a black dog on a sofa"}
    with_entities = mapper({**row, "entities": ["Tabby Cat"]})
    assert with_entities["entities"] == ["tabby cat"]
    assert with_entities["entity_source"] == "manifest"
    without = mapper(row)
    assert without["entities"] == ["black dog", "sofa"] and without["entity_source"] == "rule"
    # An LLM that found nothing is an answer: the row is skipped, not parsed again.
    assert mapper({**row, "entities": []}) is None
    assert dict(mapper.skip_counts) == {"no_entities": 1}


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
    with pytest.raises(ValueError, match="entity_parser"):
        CaptionDatasetMapper(entity_source="auto", entity_parser=None)


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


def test_entity_source_log_records_every_batch_mix(caplog):
    from detectron2.utils.events import EventStorage

    from uniovseg.data.train_loader import EntitySourceLog

    batches = [
        [{"entity_source": "manifest"}, {"entity_source": "manifest"}],
        [{"entity_source": "manifest"}, {"entity_source": "manifest"}],
        [{"entity_source": "manifest"}, {"entity_source": "rule"}, {"gt_masks": None}],
    ]

    class Loader(list):
        resumable_samplers = ["sampler"]

    log = EntitySourceLog(Loader(batches))
    assert log.resumable_samplers == ["sampler"]
    fractions = []
    with caplog.at_level("DEBUG", logger="uniovseg.data.train_loader"), EventStorage() as storage:
        for i, batch in enumerate(log):
            assert batch is batches[i]
            fractions.append(storage.latest()["entities/from_manifest"][0])
            storage.step()
    assert fractions == [1.0, 1.0, 0.5]
    infos = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert infos == [  # the first batch and the change of mix; the repeat at debug level
        "Entities of this batch: 2/2 manifest",
        "Entities of this batch: 1/2 manifest, 1/2 rule",
    ]


def test_auto_parser_is_spacy_when_installed_else_rule():
    from uniovseg.data.entity_extraction import build_entity_parser, find_spacy_model

    parser = build_entity_parser("auto")
    installed = find_spacy_model()
    assert parser.name == (f"spacy:{installed}" if installed else "rule")
    assert build_entity_parser("auto", spacy_model="no_such_pipeline_xyz").name == parser.name
