"""Captions of synthetic scenes: some objects with attributes plus the background, with noise.

Like web alt-text, a caption names only some of what is visible (the larger things first), in
varied sentence forms, sometimes with a size or a position, and is noisy at configurable rates:
a present thing is left out, an absent thing is named, a colour is wrong. The vocabulary (class
names, colour words, phrases, templates) comes from the world definition; only English grammar
(articles, plurals, number words, lists) is code.

Each caption also comes with its ground-truth entities: what a perfect parser (the paper's
ChatGPT parser at its best) would extract from that text, noise included (a hallucinated thing or
a wrong colour is in the text, so it is an entity of it). A named thing gives its descriptive
words and noun as written ("large red car", "two blue balls" -> "blue balls"; positions are not
part of an entity); a named background gives its class name ("in front of a brick wall" ->
"brick"), since its phrases are free text of the world definition that always contain the name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import Scene
from .world import CaptionSpec, World

__all__ = ["CaptionPair", "caption_scene"]

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class CaptionPair:
    """``caption``: the noisy caption; ``refined``: a noise-free one naming everything visible;
    ``entities`` / ``refined_entities``: the ground-truth entities of each text (lower case, in
    order of appearance, de-duplicated; see the module docstring)."""

    caption: str
    refined: str
    entities: tuple[str, ...] = ()
    refined_entities: tuple[str, ...] = ()


@dataclass
class _Mention:
    kind: int
    color: str | None = None
    size: str | None = None
    position: str | None = None
    count: int = 1


def _choice(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _position(mask: np.ndarray) -> str:
    """Which third of the image holds the mask centroid: left/right first, then top/bottom."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    cx, cy = xs.mean() / w, ys.mean() / h
    if cx < 1 / 3:
        return "left"
    if cx > 2 / 3:
        return "right"
    if cy < 1 / 3:
        return "top"
    if cy > 2 / 3:
        return "bottom"
    return "center"


def _with_article(words: str) -> str:
    return ("an " if words[:1].lower() in "aeiou" else "a ") + words


def _phrase(world: World, m: _Mention) -> str:
    kind = world.things[m.kind]
    adjectives = " ".join(w for w in (m.size, m.color) if w)
    noun = kind.name if m.count == 1 else kind.plural
    core = f"{adjectives} {noun}".strip()
    if m.count == 1:
        core = _with_article(core)
    else:
        core = f"{_NUMBERS[m.count] if m.count < len(_NUMBERS) else m.count} {core}"
    return f"{core} {m.position}" if m.position else core


def _entity(world: World, m: _Mention) -> str:
    """The ground-truth entity of a thing mention: its adjectives and noun, no count/position."""
    kind = world.things[m.kind]
    noun = kind.name if m.count == 1 else kind.plural
    return " ".join(w for w in (m.size, m.color, noun) if w).lower()


def _entities(template: str, objects: list[str], background: list[str]) -> tuple[str, ...]:
    """Entities in the order the template writes objects and background, de-duplicated."""
    groups = [objects, background]
    if 0 <= template.find("{background}") < template.find("{objects}"):
        groups.reverse()
    return tuple(dict.fromkeys(e for group in groups for e in group))


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _group(mentions: list[_Mention]) -> list[_Mention]:
    """Merges mentions of one kind and colour that carry no size or position into a count."""
    out: list[_Mention] = []
    for m in mentions:
        for o in out:
            if (
                (o.kind, o.color) == (m.kind, m.color)
                and not (o.size or o.position)
                and not (m.size or m.position)
            ):
                o.count += m.count
                break
        else:
            out.append(_Mention(m.kind, m.color, m.size, m.position, m.count))
    return out


def _sentence(text: str) -> str:
    text = " ".join(text.split()).replace(" ,", ",").replace(" .", ".")
    return text[:1].upper() + text[1:]


def _stuff_by_area(scene: Scene) -> list[int]:
    area: dict[int, int] = {}
    for s in scene.stuff:
        area[s.kind] = area.get(s.kind, 0) + int(s.mask.sum())
    return sorted(area, key=lambda k: -area[k])


def caption_scene(
    rng: np.random.Generator, world: World, spec: CaptionSpec, scene: Scene
) -> CaptionPair:
    """Writes a noisy caption and a noise-free refined caption of a scene.

    Args:
        rng: Random generator.
        world: World definition (class names, colours, phrases).
        spec: Caption rules (of the split being generated).
        scene: The scene.

    Returns:
        A :class:`CaptionPair`.
    """
    h, w = scene.size
    templates = dict(spec.templates)
    positions = dict(spec.position_words)
    visible = sorted((t for t in scene.things if t.mask.any()), key=lambda t: -int(t.mask.sum()))
    kept = [t for t in visible if rng.random() >= spec.omit_prob][: spec.max_objects]
    stuff_kinds = _stuff_by_area(scene)
    if not kept and not stuff_kinds:  # never an empty caption: name the largest thing
        kept = visible[:1]
    mentions = []
    for t in kept:
        kind = world.things[t.kind]
        m = _Mention(t.kind)
        if rng.random() < spec.color_prob:
            m.color = t.color
            others = [c for c in kind.colors if c != t.color]
            if others and rng.random() < spec.wrong_color_prob:
                m.color = _choice(rng, others)
        frac = t.mask.sum() / (h * w)
        if rng.random() < spec.size_prob and (frac < spec.small_area or frac > spec.large_area):
            m.size = _choice(rng, spec.small_words if frac < spec.small_area else spec.large_words)
        if rng.random() < spec.position_prob:
            m.position = _choice(rng, positions[_position(t.mask)])
        mentions.append(m)
    present = {t.kind for t in visible}
    absent = [k for k in range(len(world.things)) if k not in present]
    if absent and rng.random() < spec.hallucinate_prob:
        k = int(_choice(rng, absent))
        color = _choice(rng, world.things[k].colors) if rng.random() < spec.color_prob else None
        mentions.insert(int(rng.integers(len(mentions) + 1)), _Mention(k, color))
    order = rng.permutation(len(mentions))
    mentions = [mentions[i] for i in order]
    if rng.random() < spec.group_prob:
        mentions = _group(mentions)
    objects = _join([_phrase(world, m) for m in mentions])
    object_entities = [_entity(world, m) for m in mentions]

    background, background_np = "", ""
    picked: list[int] = []
    if stuff_kinds and (rng.random() < spec.background_prob or not objects):
        n = 2 if len(stuff_kinds) > 1 and rng.random() < 0.4 else 1
        picked = stuff_kinds[:n]
        background = " ".join(_choice(rng, world.stuff[k].phrases) for k in picked)
        background_np = _join([_choice(rng, world.stuff[k].noun_phrases) for k in picked])
    background_entities = [world.stuff[k].name.lower() for k in picked]
    if objects and background:
        template = _choice(rng, templates["objects_and_background"])
        text = template.format(objects=objects, background=background)
        entities = _entities(template, object_entities, background_entities)
    elif objects:
        text = _choice(rng, templates["objects_only"]).format(objects=objects)
        entities = _entities("{objects}", object_entities, [])
    else:
        text = _choice(rng, templates["background_only"]).format(background_np=background_np)
        entities = _entities("{background}", [], background_entities)

    # Refined: every visible thing with its true colour, every stuff kind, no noise.
    refined_mentions = _group([_Mention(t.kind, t.color) for t in visible])
    refined_objects = _join([_phrase(world, m) for m in refined_mentions])
    refined_bg = " ".join(world.stuff[k].phrases[0] for k in stuff_kinds)
    stuff_entities = [world.stuff[k].name.lower() for k in stuff_kinds]
    if refined_objects:
        refined = spec.refined_template.format(objects=refined_objects, background=refined_bg)
        thing_entities = [_entity(world, m) for m in refined_mentions]
        refined_entities = _entities(spec.refined_template, thing_entities, stuff_entities)
    else:
        refined = templates["background_only"][0].format(
            background_np=_join([world.stuff[k].noun_phrases[0] for k in stuff_kinds])
        )
        refined_entities = _entities("{background}", [], stuff_entities)
    return CaptionPair(_sentence(text), _sentence(refined), entities, refined_entities)
