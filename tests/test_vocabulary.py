"""Vocabularies: packaged benchmark class lists, files, inline strings, normalisation."""

import warnings

import pytest
from detectron2.data.datasets import builtin_meta
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from uniovseg.data.vocabulary import (
    available_vocabularies,
    class_display_names,
    class_synonyms,
    load_vocabulary,
    normalize_vocabulary,
    parse_vocabulary_string,
    resolve_vocabulary,
)

EXPECTED_COUNTS = {
    "ade20k_150": 150,
    "ade20k_150_raw": 150,
    "ade20k_847": 847,
    "cityscapes_19": 19,
    "coco_panoptic_133": 133,
    "pascal_context_459": 459,
    "pascal_context_59": 59,
    "pascal_voc_20": 20,
    "pascal_voc_21": 21,
}

# FC-CLIP's prompt engineering renames these COCO panoptic categories (detectron2 name -> ours).
COCO_RENAMES = {
    "orange": "orange fruit",
    "remote": "tv remote",
    "scissors": "scissor",
    "door-stuff": "door",
    "floor-wood": "wood floor",
    "light": "lamp",
    "mirror-stuff": "mirror",
    "net": "tennis net",
    "wall-brick": "brick wall",
    "wall-stone": "stone wall",
    "wall-tile": "tile wall",
    "wall-wood": "wood wall",
    "water-other": "water",
    "window-blind": "window blind",
    "window-other": "window",
    "tree-merged": "tree",
    "fence-merged": "fence",
    "ceiling-merged": "ceiling",
    "sky-other-merged": "sky",
    "cabinet-merged": "cabinet",
    "table-merged": "table",
    "floor-other-merged": "floor",
    "pavement-merged": "pavement",
    "mountain-merged": "mountain",
    "grass-merged": "grass",
    "dirt-merged": "dirt",
    "paper-merged": "paper",
    "food-other-merged": "food",
    "building-other-merged": "building",
    "rock-merged": "rock",
    "wall-other-merged": "wall",
    "rug-merged": "rug",
}


# ---------------------------------------------------------------------------- packaged lists
def test_available_vocabularies_are_the_benchmarks():
    assert available_vocabularies() == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name,count", sorted(EXPECTED_COUNTS.items()))
def test_packaged_counts_without_duplicates(name, count):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicate would warn, and shift the labels
        entries = load_vocabulary(name)
    assert len(entries) == count
    assert all(class_synonyms(e) for e in entries)


def test_loading_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(load_vocabulary("ade20k_847")) == 847


# Classes of ADE20K-150 whose raw name is not among the prompt-engineered synonyms (OpenSeg's
# renames, which FC-CLIP and the paper's baselines use): label -> prompt-engineered first name.
ADE20K_150_RENAMES = {
    25: "house exterior",  # house
    63: "window screen",  # blind, screen
    82: "light bulb",  # light
    90: "airplane",  # plane
    109: "swimming pool",  # pool
    125: "plant pots",  # pot
    130: "projection screen",  # screen
    139: "ceiling fan",  # fan
}


def test_ade20k_150_raw_order_is_detectron2s():
    expected = [n.split(",")[0].strip() for n in builtin_meta.ADE20K_SEM_SEG_CATEGORIES]
    assert class_display_names(load_vocabulary("ade20k_150_raw")) == expected


def test_ade20k_150_prompt_engineered_names_follow_the_raw_order():
    raw, engineered = load_vocabulary("ade20k_150_raw"), load_vocabulary("ade20k_150")
    assert len(raw) == len(engineered) == 150
    for label, (raw_entry, entry) in enumerate(zip(raw, engineered, strict=True)):
        raw_names, names = class_synonyms(raw_entry), class_synonyms(entry)
        if label in ADE20K_150_RENAMES:
            assert names[0] == ADE20K_150_RENAMES[label], label
        else:  # the same class: it shares a name with the raw entry
            assert set(raw_names) & set(names), (label, raw_entry, entry)
    # Anchors: more synonyms than the raw names, several per class.
    assert class_synonyms(engineered[12])[:3] == ["person", "child", "girl"]
    assert class_synonyms(engineered[8]) == ["windowpane", "window", "windows"]
    assert class_synonyms(engineered[149]) == ["flag", "flags"]
    synonyms = sum(len(class_synonyms(e)) for e in engineered)
    assert synonyms > sum(len(class_synonyms(e)) for e in raw) and synonyms / 150 > 2


def test_cityscapes_order_is_train_id_order():
    categories = sorted(builtin_meta.CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])
    names = class_display_names(load_vocabulary("cityscapes_19"))
    assert names == [c["name"] for c in categories]


def test_coco_panoptic_order_is_detectron2s():
    names = class_display_names(load_vocabulary("coco_panoptic_133"))
    expected = [COCO_RENAMES.get(c["name"], c["name"]) for c in builtin_meta.COCO_CATEGORIES]
    assert names == expected
    assert names[79] == "toothbrush" and names[80] == "banner"  # 80 things, then 53 stuff


def test_voc_20_is_voc_21_without_background():
    voc21 = load_vocabulary("pascal_voc_21")
    assert class_synonyms(voc21[0])[0] == "background"
    assert load_vocabulary("pascal_voc_20") == voc21[1:]
    assert class_display_names(voc21[1:]) == list(VOC_CLASS_NAMES)


@pytest.mark.parametrize(
    "name,index,display",
    [
        ("ade20k_847", 0, "wall"),
        ("ade20k_847", 26, "house exterior"),
        ("ade20k_847", 846, "adding machine"),
        ("pascal_context_459", 0, "accordion"),
        ("pascal_context_459", 61, "computer case"),  # official name: "case"
        ("pascal_context_459", 458, "wool"),
        ("pascal_context_59", 0, "aeroplane"),
        ("pascal_context_59", 58, "wood piece"),
    ],
)
def test_known_entries(name, index, display):
    assert class_display_names(load_vocabulary(name))[index] == display


def test_synonyms_of_a_packaged_entry():
    voc = load_vocabulary("pascal_context_59")
    assert class_synonyms(voc[22]) == ["dog", "dogs", "puppy", "puppies"]


def test_load_returns_a_fresh_list():
    first = load_vocabulary("cityscapes_19")
    first.clear()
    assert len(load_vocabulary("cityscapes_19")) == 19


# ---------------------------------------------------------------------------- parsing
def test_parse_string_classes_and_synonyms():
    assert parse_vocabulary_string("cat; dog, puppy; sky") == ["cat", "dog, puppy", "sky"]


def test_parse_normalises_whitespace_and_empty_parts():
    parsed = parse_vocabulary_string("  big \t  cat ;;  dog ,, puppy ;  ")
    assert parsed == ["big cat", "dog, puppy"]


def test_class_synonyms_dedups_inside_a_class():
    assert class_synonyms(" dog ,  puppy,,dog ") == ["dog", "puppy"]
    assert class_synonyms(" , ") == []


@pytest.mark.parametrize("text", ["", "   ", " ; ;; ", ",;,"])
def test_empty_vocabulary_is_a_clear_error(text):
    with pytest.raises(ValueError, match="empty.*';' separates classes"):
        parse_vocabulary_string(text)


def test_duplicates_are_removed_with_a_warning_naming_them():
    with pytest.warns(UserWarning, match=r"removed 2 duplicate.*'Cat'.*class 0.*'dog'.*class 1"):
        parsed = parse_vocabulary_string("cat; dog; Cat; sky;  dog ")
    assert parsed == ["cat", "dog", "sky"]


def test_a_name_shared_by_two_classes_is_an_error(tmp_path):
    with pytest.raises(
        ValueError, match=r"'dog' is in class 0 \('dog'\) and class 1 \('dog, cat'\)"
    ):
        parse_vocabulary_string("dog; dog, cat; cat")
    # Compared ignoring case and whitespace runs; lists and files are checked the same way.
    with pytest.raises(ValueError, match=r"'big dog' is in class 0 \('Big Dog'\) and class 2"):
        parse_vocabulary_string("Big  Dog; cat; puppy, big dog")
    assert parse_vocabulary_string("dog, Dog; cat") == ["dog, Dog", "cat"]  # one class: fine
    with pytest.raises(ValueError, match="vocabulary list: the name 'pot'"):
        resolve_vocabulary(["pot", "pot, flowerpot"])
    path = tmp_path / "v.txt"
    path.write_text("sky\nsea, SKY\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: the name 'SKY' is in class 0"):
        load_vocabulary(str(path))


def test_packaged_benchmark_lists_keep_their_shared_names():
    # ADE20K-150 gives "screen" to "screen door, screen" and "blind, screen", as the benchmark.
    vocabulary = load_vocabulary("ade20k_150_raw")
    assert "screen" in class_synonyms(vocabulary[58]) and "screen" in class_synonyms(vocabulary[63])


@pytest.mark.parametrize(
    "text",
    ["cat; \u200b; dog", "cat; dog, \u200b\u200c", "\ufeff; cat", "cat; \u0301", "cat; \x07"],
)
def test_invisible_class_names_are_an_error(text):
    with pytest.raises(ValueError, match="is invisible"):
        parse_vocabulary_string(text)
    with pytest.raises(ValueError, match="vocabulary list: .*is invisible"):
        resolve_vocabulary(text.split(";"))


def test_invisible_characters_are_stripped_at_name_edges():
    assert parse_vocabulary_string("\u200bdog\u200d; cat\ufeff, \u2060kitty") == [
        "dog",
        "cat, kitty",
    ]
    assert parse_vocabulary_string("a\u200db; c") == [
        "a\u200db",
        "c",
    ]  # inside: kept (emoji, scripts)
    with pytest.raises(ValueError, match="control character"):
        parse_vocabulary_string("do\x00g; cat")
    with pytest.raises(ValueError, match="empty"):  # Unicode spaces only: no class at all
        parse_vocabulary_string("\u3000; \u00a0 ;")


@pytest.mark.parametrize("spec", [None, 3, b"cat; dog", {"cat": 0}])
def test_resolve_refuses_what_is_not_a_vocabulary(spec):
    with pytest.raises(ValueError, match="packaged name.*inline string.*list of class entries"):
        resolve_vocabulary(spec)


def test_normalize_rejects_a_single_string():
    with pytest.raises(ValueError, match="parse_vocabulary_string"):
        normalize_vocabulary("cat; dog")


# ---------------------------------------------------------------------------- files, names
def test_load_file_with_comments_and_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my classes\n\nzebra\n  horse ,  pony  \n\n# end\n", encoding="utf-8")
    assert load_vocabulary(str(path)) == ["zebra", "horse, pony"]


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary(str(path))


def test_unknown_name_lists_the_packaged_ones():
    with pytest.raises(ValueError, match="ade20k_150.*parse_vocabulary_string"):
        load_vocabulary("ade20k_151")


def test_resolve_accepts_names_strings_and_lists(tmp_path):
    assert len(resolve_vocabulary("pascal_voc_20")) == 20
    assert resolve_vocabulary("cat;") == ["cat"]
    assert resolve_vocabulary(["  cat", "dog,puppy"]) == ["cat", "dog, puppy"]
    path = tmp_path / "v.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    assert resolve_vocabulary(str(path)) == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        resolve_vocabulary([])


# ---------------------------------------------------------------------------- evaluation
def test_dataset_vocabularies_replace_a_benchmark_vocabulary(monkeypatch):
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer

    import uniovseg.data.datasets  # noqa: F401  (registers the benchmarks)
    from uniovseg.config import load_config
    from uniovseg.engine.trainer import Trainer, dataset_vocabularies, with_vocabulary

    seen = []

    class Model:
        def set_dataset_metadata(self, metadata):
            seen.append((metadata.name, metadata.vocabulary, len(metadata.stuff_classes)))

    monkeypatch.setattr(
        DefaultTrainer, "test", classmethod(lambda cls, cfg, m, evaluators=None: {})
    )
    key = "MODEL.UNIOVSEG.OPEN_VOCAB.DATASET_VOCABULARIES"
    datasets = "('ade20k_150_sem_seg_val', 'ade20k_847_sem_seg_val')"
    cfg = load_config("", ["DATASETS.TEST", datasets])
    Trainer.test(cfg, Model())  # the defaults: prompt-engineered names
    raw = ["ade20k_150_sem_seg_val=ade20k_150_raw"]
    Trainer.test(load_config("", ["DATASETS.TEST", datasets, key, str(raw)]), Model())
    assert seen == [
        ("ade20k_150_sem_seg_val", "ade20k_150", 150),
        ("ade20k_847_sem_seg_val", "ade20k_847", 847),
        ("ade20k_150_sem_seg_val", "ade20k_150_raw", 150),
        ("ade20k_847_sem_seg_val", "ade20k_847", 847),
    ]
    assert MetadataCatalog.get("ade20k_150_sem_seg_val").vocabulary == "ade20k_150"  # unchanged

    metadata = MetadataCatalog.get("ade20k_150_sem_seg_val")
    with pytest.raises(ValueError, match="has 847 classes but dataset"):
        with_vocabulary(metadata, "ade20k_847")
    for bad in (["ade20k_150_raw"], ["a=x", "a=y"], ["=ade20k_150_raw"]):
        with pytest.raises(ValueError, match="DATASET=VOCABULARY"):
            dataset_vocabularies(load_config("", [key, str(bad)]))
