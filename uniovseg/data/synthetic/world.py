"""The world definition: every kind, colour, texture, part structure, count and caption word.

A world is described by one YAML (or JSON) file, so a new world needs no code changes; the code
only knows the drawing primitives (shape types, texture layer types) and English grammar. The
packaged default is ``uniovseg/data/synthetic/default_world.yaml``, which documents every key.

Geometry is resolution-free: object sizes, texture scales and layout positions are fractions of
the image side, and part shapes live in a normalised ``[0, 1] x [0, 1]`` object box, so the same
world renders at 64 or 1024 pixels.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "SPLITS",
    "CaptionSpec",
    "ColorSpec",
    "PartSpec",
    "ShapeSpec",
    "StuffKind",
    "TextureLayer",
    "ThingKind",
    "World",
    "default_world_path",
    "load_world",
]

SPLITS = ("sa1b", "captions", "eval", "pretrain")
SHAPE_TYPES = ("rect", "ellipse", "polygon", "pieslice", "star")
TEXTURE_TYPES = ("fill", "noise", "gradient", "waves", "bricks", "speckle", "blobs", "dashes")
ZONES = ("full", "top", "bottom", "patch")
LAYOUTS = ("single", "horizon", "patch")
RGB = tuple[int, int, int]


def default_world_path() -> str:
    """Absolute path of the packaged default world definition."""
    return str(resources.files("uniovseg.data.synthetic").joinpath("default_world.yaml"))


@dataclass(frozen=True)
class ShapeSpec:
    """One drawing primitive in the normalised object box (x right, y down, both in [0, 1]).

    Attributes:
        type: One of ``rect``, ``ellipse``, ``pieslice`` (use ``box``, ``(x0, y0, x1, y1)``),
            ``polygon`` (uses ``points``, ``((x, y), ...)``) or ``star`` (uses ``box``,
            ``num_points`` and ``inner``, the inner radius as a fraction of the outer one).
        box: Bounding box of rect/ellipse/pieslice/star.
        points: Polygon vertices.
        start: Pieslice start angle in degrees (clockwise from 3 o'clock, as PIL).
        end: Pieslice end angle in degrees.
        num_points: Number of star tips.
        inner: Inner radius ratio of a star.
    """

    type: str
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    start: float = 0.0
    end: float = 360.0
    num_points: int = 5
    inner: float = 0.45


@dataclass(frozen=True)
class ColorSpec:
    """How a part is coloured: the object's attribute colour or one of fixed palette colours.

    Attributes:
        from_object: Use the object's sampled attribute colour (``$color`` in YAML).
        names: Palette names to choose from (one per object) when not ``from_object``.
        shade: Brightness multiplier applied to the chosen colour.
    """

    from_object: bool
    names: tuple[str, ...]
    shade: float = 1.0


@dataclass(frozen=True)
class PartSpec:
    """A named part of a thing (e.g. the roof of a house).

    Attributes:
        name: Part name.
        color: Colour rule.
        shapes: Primitives whose union is the part; later parts are drawn on top.
        separate: Each shape is its own part instance (e.g. the two wheels of a car) instead of
            one union mask.
    """

    name: str
    color: ColorSpec
    shapes: tuple[ShapeSpec, ...]
    separate: bool = False


@dataclass(frozen=True)
class ThingKind:
    """A countable object class.

    Attributes:
        name: Class name, used in captions and as the evaluation label.
        plural: Plural form used in captions ("two cars").
        colors: Attribute colours an instance may take (palette names).
        size: Range of the longer box side as a fraction of the image side.
        aspect: Range of box width / height.
        flip: Whether instances may be mirrored left-right.
        parts: Parts in drawing order.
    """

    name: str
    plural: str
    colors: tuple[str, ...]
    size: tuple[float, float]
    aspect: tuple[float, float]
    flip: bool
    parts: tuple[PartSpec, ...]


@dataclass(frozen=True)
class TextureLayer:
    """One procedural texture layer; layers of a stuff kind are composited in order.

    Attributes:
        type: One of ``fill``, ``noise``, ``gradient``, ``waves``, ``bricks``, ``speckle``,
            ``blobs``, ``dashes`` (parameters documented in :mod:`.textures`).
        colors: RGB colours the layer uses, 0-255.
        params: Remaining numeric parameters of the layer type.
    """

    type: str
    colors: tuple[RGB, ...]
    params: tuple[tuple[str, Any], ...]

    def param(self, key: str, default: Any) -> Any:
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class StuffKind:
    """An amorphous background class.

    Attributes:
        name: Class name.
        zones: Layout slots it may fill: ``full`` (whole image), ``top``, ``bottom`` (of a
            horizon layout), ``patch`` (a blob over another kind).
        texture: Texture layers.
        phrases: Adverbial phrases naming it in captions ("on the grass").
        noun_phrases: Noun phrases for background-only captions ("green grass").
    """

    name: str
    zones: tuple[str, ...]
    texture: tuple[TextureLayer, ...]
    phrases: tuple[str, ...]
    noun_phrases: tuple[str, ...]


@dataclass(frozen=True)
class CaptionSpec:
    """Caption generation rules (see the ``captions`` section of the default world).

    Attributes:
        max_objects: At most this many objects are named per caption.
        color_prob: Probability of naming an object's colour.
        size_prob: Probability of naming its size (when small or large).
        position_prob: Probability of naming its position.
        background_prob: Probability of naming the background.
        group_prob: Probability of merging same-kind, same-colour objects ("two red cars").
        small_area: Visible area fraction below which an object is "small".
        large_area: Visible area fraction above which an object is "large".
        small_words: Words for small objects.
        large_words: Words for large objects.
        position_words: Words for ``left``, ``right``, ``top``, ``bottom``, ``center``.
        hallucinate_prob: Noise: probability of naming one absent thing kind.
        omit_prob: Noise: probability of leaving each present object unnamed.
        wrong_color_prob: Noise: probability of a wrong colour word.
        templates: ``objects_and_background``, ``objects_only``, ``background_only`` sentence
            templates with ``{objects}``, ``{background}``, ``{background_np}`` fields.
        refined_template: Noise-free template of ``refined_caption``.
        write_refined: Whether manifests carry a noise-free ``refined_caption``.
    """

    max_objects: int
    color_prob: float
    size_prob: float
    position_prob: float
    background_prob: float
    group_prob: float
    small_area: float
    large_area: float
    small_words: tuple[str, ...]
    large_words: tuple[str, ...]
    position_words: tuple[tuple[str, tuple[str, ...]], ...]
    hallucinate_prob: float
    omit_prob: float
    wrong_color_prob: float
    templates: tuple[tuple[str, tuple[str, ...]], ...]
    refined_template: str
    write_refined: bool


@dataclass(frozen=True)
class SceneSpec:
    """How a scene is laid out.

    Attributes:
        num_things: Inclusive range of the number of things placed.
        layouts: Weights of the background layouts ``single``, ``horizon``, ``patch``.
        horizon: Range of the horizon height (fraction of the image height).
        horizon_wobble: Amplitude of the horizon's waviness (fraction of the height).
        patch_size: Range of a patch's diameter (fraction of the image side).
        min_visible: An object is re-placed (or dropped) if it would hide more than
            ``1 - min_visible`` of an earlier object.
        placement_attempts: Tries per object before it is dropped.
    """

    num_things: tuple[int, int]
    layouts: tuple[tuple[str, float], ...]
    horizon: tuple[float, float]
    horizon_wobble: float
    patch_size: tuple[float, float]
    min_visible: float
    placement_attempts: int


@dataclass(frozen=True)
class World:
    """A parsed, validated world definition.

    Attributes:
        name: World name.
        palette: Colour name -> RGB.
        things: Thing kinds (their order is their evaluation order, before the stuff kinds).
        stuff: Stuff kinds.
        raw: The definition as a plain dict (written next to the generated data).
    """

    name: str
    palette: dict[str, RGB]
    things: tuple[ThingKind, ...]
    stuff: tuple[StuffKind, ...]
    raw: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        """Evaluation class names: things first, then stuff, in definition order."""
        return [t.name for t in self.things] + [s.name for s in self.stuff]

    def section(self, key: str, split: str | None = None) -> dict[str, Any]:
        """A top-level section, with the ``splits.<split>.<key>`` overrides merged in."""
        base = copy.deepcopy(self.raw.get(key, {}))
        if split is not None:
            override = self.raw.get("splits", {}).get(split, {}).get(key, {})
            base.update(copy.deepcopy(override))
        return base

    def scene_spec(self, split: str) -> SceneSpec:
        """Scene layout rules of one split."""
        return _parse_scene(self.section("scene", split), f"scene (split {split})")

    def caption_spec(self, split: str) -> CaptionSpec:
        """Caption rules of one split."""
        return _parse_captions(self.section("captions", split), f"captions (split {split})")


def load_world(path_or_dict: str | os.PathLike | dict[str, Any] | None = None) -> World:
    """Loads and validates a world definition.

    Args:
        path_or_dict: A YAML/JSON file path, an already parsed dict, or None for the default.

    Returns:
        The validated :class:`World`.

    Raises:
        ValueError: If a key is missing or has a wrong value; the message names the key.
    """
    if path_or_dict is None:
        path_or_dict = default_world_path()
    if isinstance(path_or_dict, dict):
        raw = copy.deepcopy(path_or_dict)
    else:
        path = os.fspath(path_or_dict)
        if not os.path.isfile(path):
            raise ValueError(f"World definition {path!r} does not exist; pass a YAML/JSON file.")
        with open(path, encoding="utf-8") as f:
            raw = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError("A world definition must be a mapping with 'palette', 'things', 'stuff'.")
    palette = {}
    for name, rgb in _get(raw, "palette", dict, "").items():
        palette[str(name)] = _rgb(rgb, f"palette.{name}")
    things = tuple(
        _parse_thing(t, palette, f"things[{i}]")
        for i, t in enumerate(_get(raw, "things", list, ""))
    )
    stuff = tuple(
        _parse_stuff(s, palette, f"stuff[{i}]") for i, s in enumerate(_get(raw, "stuff", list, ""))
    )
    if not things or not stuff:
        raise ValueError("A world needs at least one thing kind and one stuff kind.")
    names = [t.name for t in things] + [s.name for s in stuff]
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be unique across things and stuff, got {names}.")
    if not any("full" in s.zones for s in stuff):
        raise ValueError("At least one stuff kind needs the zone 'full' (single-kind backgrounds).")
    for split in raw.get("splits", {}):
        if split not in SPLITS:
            raise ValueError(f"splits.{split}: unknown split; use one of {SPLITS}.")
    world = World(str(raw.get("name", "world")), palette, things, stuff, raw)
    for split in SPLITS:  # validate every split's merged sections now, not mid-generation
        world.scene_spec(split)
        world.caption_spec(split)
    return world


def _get(d: dict, key: str, typ: type, where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ValueError(f"World definition: '{where}{key}' is missing.")
        return default
    value = d[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ):
        raise ValueError(
            f"World definition: '{where}{key}' must be a {typ.__name__}, got {value!r}."
        )
    return value


def _rgb(value: Any, where: str) -> RGB:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        raise ValueError(f"World definition: '{where}' must be [r, g, b] with ints in 0-255.")
    return (int(value[0]), int(value[1]), int(value[2]))


def _range(value: Any, where: str, lo: float = 0.0, hi: float = float("inf")) -> tuple:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) for v in value)
        or not lo <= value[0] <= value[1] <= hi
    ):
        raise ValueError(
            f"World definition: '{where}' must be [low, high] with {lo} <= low <= high <= {hi}."
        )
    return (value[0], value[1])


def _color_ref(value: Any, palette: dict, where: str) -> RGB:
    if isinstance(value, str):
        if value not in palette:
            raise ValueError(f"World definition: '{where}': colour {value!r} is not in palette.")
        return palette[value]
    return _rgb(value, where)


def _parse_shape(d: dict, where: str) -> ShapeSpec:
    typ = _get(d, "type", str, where + ".")
    if typ not in SHAPE_TYPES:
        raise ValueError(f"World definition: '{where}.type' {typ!r} unknown; use {SHAPE_TYPES}.")
    if typ == "polygon":
        pts = _get(d, "points", list, where + ".")
        if len(pts) < 3 or not all(isinstance(p, list) and len(p) == 2 for p in pts):
            raise ValueError(f"World definition: '{where}.points' needs >= 3 [x, y] pairs.")
        return ShapeSpec("polygon", points=tuple((float(x), float(y)) for x, y in pts))
    box = _get(d, "box", list, where + ".")
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"World definition: '{where}.box' must be [x0, y0, x1, y1], x0<x1, y0<y1.")
    return ShapeSpec(
        typ,
        box=tuple(float(v) for v in box),
        start=float(d.get("start", 0.0)),
        end=float(d.get("end", 360.0)),
        num_points=int(d.get("num_points", 5)),
        inner=float(d.get("inner", 0.45)),
    )


def _parse_color_spec(value: Any, palette: dict, where: str) -> ColorSpec:
    shade = 1.0
    if isinstance(value, dict):
        shade = float(_get(value, "shade", float, where + ".", 1.0))
        value = value.get("name")
    if not isinstance(value, str | list):
        raise ValueError(f"World definition: '{where}' must be '$color', a colour name or a list.")
    if value == "$color":
        return ColorSpec(True, (), shade)
    names = (value,) if isinstance(value, str) else tuple(value)
    for n in names:
        _color_ref(n, palette, where)
    if not names:
        raise ValueError(f"World definition: '{where}' lists no colour.")
    return ColorSpec(False, names, shade)


def _parse_thing(d: Any, palette: dict, where: str) -> ThingKind:
    if not isinstance(d, dict):
        raise ValueError(f"World definition: '{where}' must be a mapping.")
    name = _get(d, "name", str, where + ".")
    colors = tuple(_get(d, "colors", list, where + "."))
    for c in colors:
        _color_ref(c, palette, f"{where}.colors")
    if not colors:
        raise ValueError(f"World definition: '{where}.colors' is empty.")
    parts = []
    for j, p in enumerate(_get(d, "parts", list, where + ".")):
        pw = f"{where}.parts[{j}]"
        shapes = tuple(
            _parse_shape(s, f"{pw}.shapes[{k}]") for k, s in enumerate(_get(p, "shapes", list, pw))
        )
        if not shapes:
            raise ValueError(f"World definition: '{pw}.shapes' is empty.")
        parts.append(
            PartSpec(
                name=_get(p, "name", str, pw + "."),
                color=_parse_color_spec(p.get("color", "$color"), palette, pw + ".color"),
                shapes=shapes,
                separate=bool(p.get("separate", False)),
            )
        )
    if not parts:
        raise ValueError(f"World definition: '{where}.parts' is empty.")
    return ThingKind(
        name=name,
        plural=str(d.get("plural", name + "s")),
        colors=colors,
        size=_range(_get(d, "size", list, where + "."), f"{where}.size", 0.0, 1.0),
        aspect=_range(d.get("aspect", [1.0, 1.0]), f"{where}.aspect", 0.05),
        flip=bool(d.get("flip", False)),
        parts=tuple(parts),
    )


def _parse_stuff(d: Any, palette: dict, where: str) -> StuffKind:
    if not isinstance(d, dict):
        raise ValueError(f"World definition: '{where}' must be a mapping.")
    name = _get(d, "name", str, where + ".")
    zones = tuple(_get(d, "zones", list, where + "."))
    if not zones or any(z not in ZONES for z in zones):
        raise ValueError(f"World definition: '{where}.zones' must list some of {ZONES}.")
    layers = []
    for j, layer in enumerate(_get(d, "texture", list, where + ".")):
        lw = f"{where}.texture[{j}]"
        typ = _get(layer, "type", str, lw + ".")
        if typ not in TEXTURE_TYPES:
            raise ValueError(f"World definition: '{lw}.type' {typ!r} unknown; use {TEXTURE_TYPES}.")
        colors = tuple(_color_ref(c, palette, f"{lw}.colors") for c in layer.get("colors", []))
        if not colors:
            raise ValueError(f"World definition: '{lw}.colors' is empty.")
        params = tuple(sorted((k, v) for k, v in layer.items() if k not in ("type", "colors")))
        layers.append(TextureLayer(typ, colors, params))
    if not layers:
        raise ValueError(f"World definition: '{where}.texture' is empty.")
    phrases = tuple(d.get("phrases", [f"with {name}"]))
    return StuffKind(name, zones, tuple(layers), phrases, tuple(d.get("noun_phrases", [name])))


def _parse_scene(d: dict, where: str) -> SceneSpec:
    w = where + "."
    num = _range(_get(d, "num_things", list, w), where + ".num_things", 0)
    layouts = _get(d, "layouts", dict, w, {"single": 1.0})
    if any(k not in LAYOUTS for k in layouts) or sum(layouts.values()) <= 0:
        raise ValueError(f"World definition: '{where}.layouts' weighs some of {LAYOUTS}, sum > 0.")
    return SceneSpec(
        num_things=(int(num[0]), int(num[1])),
        layouts=tuple((k, float(v)) for k, v in layouts.items()),
        horizon=_range(d.get("horizon", [0.35, 0.65]), where + ".horizon", 0.0, 1.0),
        horizon_wobble=float(d.get("horizon_wobble", 0.03)),
        patch_size=_range(d.get("patch_size", [0.25, 0.5]), where + ".patch_size", 0.0, 2.0),
        min_visible=float(d.get("min_visible", 0.4)),
        placement_attempts=int(d.get("placement_attempts", 8)),
    )


def _parse_captions(d: dict, where: str) -> CaptionSpec:
    w = where + "."
    noise = _get(d, "noise", dict, w, {})
    attr = _get(d, "attribute_probs", dict, w, {})
    templates = _get(d, "templates", dict, w)
    for key in ("objects_and_background", "objects_only", "background_only"):
        if not templates.get(key):
            raise ValueError(f"World definition: '{where}.templates.{key}' needs >= 1 template.")
    positions = _get(d, "position_words", dict, w)
    for key in ("left", "right", "top", "bottom", "center"):
        if not positions.get(key):
            raise ValueError(f"World definition: '{where}.position_words.{key}' is missing.")
    probs = {
        "color_prob": float(attr.get("color", 0.8)),
        "size_prob": float(attr.get("size", 0.3)),
        "position_prob": float(attr.get("position", 0.3)),
        "background_prob": float(d.get("background_prob", 0.8)),
        "group_prob": float(d.get("group_prob", 0.7)),
        "hallucinate_prob": float(noise.get("hallucinate", 0.0)),
        "omit_prob": float(noise.get("omit", 0.0)),
        "wrong_color_prob": float(noise.get("wrong_color", 0.0)),
    }
    for key, value in probs.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"World definition: '{where}' {key} must be in [0, 1], got {value}.")
    return CaptionSpec(
        max_objects=int(d.get("max_objects", 3)),
        small_area=float(d.get("small_area", 0.02)),
        large_area=float(d.get("large_area", 0.1)),
        small_words=tuple(d.get("small_words", ["small"])),
        large_words=tuple(d.get("large_words", ["large"])),
        position_words=tuple((k, tuple(v)) for k, v in positions.items()),
        templates=tuple((k, tuple(v)) for k, v in templates.items()),
        refined_template=str(d.get("refined_template", "{objects} {background}.")),
        write_refined=bool(d.get("write_refined", True)),
        **probs,
    )
