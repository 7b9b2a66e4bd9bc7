"""Samples and renders one scene of a world, with its masks at every granularity.

A scene is a textured background of one to two stuff regions (one kind, a horizon between a top
and a bottom kind, or a patch of one kind on another) with things placed on top. Things are drawn
in order (painter's algorithm), so later things occlude earlier ones, and the parts of a thing
occlude each other in their listed order. Every mask kept here is a *visible* mask, so a part mask
always lies inside its object's mask, and object masks never overlap each other or the stuff.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .textures import render_texture, value_noise
from .world import SceneSpec, ShapeSpec, ThingKind, World

__all__ = ["PartInstance", "RenderSpec", "Scene", "StuffRegion", "ThingInstance", "sample_scene"]


@dataclass(frozen=True)
class RenderSpec:
    """Photometric rendering parameters (the world's ``render`` section).

    Attributes:
        color_jitter: Each part's colour moves by up to this much per channel (0-255 units).
        shading: Objects are this much brighter at the top than at the bottom (fraction).
        pixel_noise: Std of Gaussian noise added to the final image (0-255 units).
    """

    color_jitter: float = 12.0
    shading: float = 0.15
    pixel_noise: float = 3.0

    @classmethod
    def from_section(cls, d: dict) -> RenderSpec:
        try:
            return cls(**{k: float(v) for k, v in d.items() if k != "jpeg_quality"})
        except TypeError as e:
            raise ValueError(
                f"World definition 'render': {e}; keys: color_jitter, shading, "
                "pixel_noise, jpeg_quality."
            ) from e


@dataclass
class PartInstance:
    """A visible part of a thing: ``name`` and a bool (H, W) ``mask``."""

    name: str
    mask: np.ndarray


@dataclass
class ThingInstance:
    """A placed thing.

    Attributes:
        kind: Index into ``world.things``.
        color: Its attribute colour (a palette name).
        parts: Visible parts (may be empty when fully hidden).
        mask: Visible object mask, bool (H, W): the union of the part masks.
        full_area: Pixels it covered inside the frame before later things hid some of it.
    """

    kind: int
    color: str
    parts: list[PartInstance]
    mask: np.ndarray
    full_area: int


@dataclass
class StuffRegion:
    """A background region: ``kind`` (index into ``world.stuff``), visible bool ``mask``."""

    kind: int
    mask: np.ndarray


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        things: Placed things, in drawing order.
        stuff: Background regions (several may share a kind).
    """

    image: np.ndarray
    things: list[ThingInstance] = field(default_factory=list)
    stuff: list[StuffRegion] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image.shape[0], self.image.shape[1]

    def crop(self, x0: int, y0: int, x1: int, y1: int, *, min_fraction: float = 0.5) -> Scene:
        """The window ``[y0, y1) x [x0, x1)`` as a scene of its own.

        Things keep their place in the list only when at least ``min_fraction`` of their visible
        area falls inside the window (a sliver at the border is not "in" the crop).
        """
        sl = (slice(y0, y1), slice(x0, x1))
        things = []
        for t in self.things:
            inside = int(t.mask[sl].sum())
            if inside > 0 and inside >= min_fraction * t.mask.sum():
                parts = [PartInstance(p.name, p.mask[sl]) for p in t.parts]
                things.append(ThingInstance(t.kind, t.color, parts, t.mask[sl], inside))
        stuff = [StuffRegion(s.kind, s.mask[sl]) for s in self.stuff if s.mask[sl].any()]
        return Scene(np.ascontiguousarray(self.image[sl]), things, stuff)


def _window(box: tuple[float, float, float, float], hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the frame that an object box can touch."""
    bx, by, bw, bh = box
    y0, y1 = max(0, math.floor(by) - 1), min(hw[0], math.ceil(by + bh) + 2)
    x0, x1 = max(0, math.floor(bx) - 1), min(hw[1], math.ceil(bx + bw) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _rasterize(
    shape: ShapeSpec, box: tuple[float, float, float, float], flip: bool, win: tuple[slice, slice]
) -> np.ndarray:
    """Draws one primitive of the normalised object box into a bool mask of the window ``win``.

    Args:
        shape: The primitive, in normalised object-box coordinates.
        box: Object box (x, y, w, h) in frame pixels.
        flip: Mirror the object left-right.
        win: (rows, columns) slices of the frame covered by the returned mask.

    Returns:
        bool array of shape (rows, columns) of ``win``.
    """
    bx, by, bw, bh = box
    ox, oy = win[1].start, win[0].start

    def pt(u: float, v: float) -> tuple[float, float]:
        return (bx - ox + (1.0 - u if flip else u) * bw, by - oy + v * bh)

    canvas = Image.new("L", (win[1].stop - ox, win[0].stop - oy), 0)
    draw = ImageDraw.Draw(canvas)
    if shape.type == "polygon":
        draw.polygon([pt(u, v) for u, v in shape.points], fill=1)
    else:
        u0, v0, u1, v1 = shape.box
        (xa, ya), (xb, yb) = pt(u0, v0), pt(u1, v1)
        rect = [min(xa, xb), ya, max(xa, xb), yb]
        if shape.type == "rect":
            draw.rectangle(rect, fill=1)
        elif shape.type == "ellipse":
            draw.ellipse(rect, fill=1)
        elif shape.type == "pieslice":
            # Mirroring maps the angle a (clockwise from 3 o'clock) to 180 - a.
            start, end = (
                (180.0 - shape.end, 180.0 - shape.start) if flip else (shape.start, shape.end)
            )
            draw.pieslice(rect, start, end, fill=1)
        else:  # star, tip up
            cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
            rx, ry = (rect[2] - rect[0]) / 2, (rect[3] - rect[1]) / 2
            pts = []
            for k in range(2 * shape.num_points):
                r = 1.0 if k % 2 == 0 else shape.inner
                a = -math.pi / 2 + math.pi * k / shape.num_points
                pts.append((cx + r * rx * math.cos(a), cy + r * ry * math.sin(a)))
            draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def _sample_layout(
    rng: np.random.Generator, world: World, spec: SceneSpec, hw: tuple[int, int]
) -> tuple[np.ndarray, list[int]]:
    """Background regions: a region-index map (H, W) int and the stuff kind of each region."""
    h, w = hw
    by_zone = {
        z: [i for i, s in enumerate(world.stuff) if z in s.zones]
        for z in ("full", "top", "bottom", "patch")
    }
    feasible = []
    for name, weight in spec.layouts:
        ok = {
            "single": bool(by_zone["full"]),
            "horizon": bool(by_zone["top"])
            and len(set(by_zone["top"] + by_zone["bottom"])) > 1
            and bool(by_zone["bottom"]),
            "patch": bool(by_zone["full"])
            and len(set(by_zone["full"] + by_zone["patch"])) > 1
            and bool(by_zone["patch"]),
        }[name]
        if ok and weight > 0:
            feasible.append((name, weight))
    weights = np.array([wt for _, wt in feasible])
    layout = feasible[rng.choice(len(feasible), p=weights / weights.sum())][0]
    regions = np.zeros((h, w), dtype=np.int32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if layout == "single":
        return regions, [int(rng.choice(by_zone["full"]))]
    if layout == "horizon":
        top = int(rng.choice(by_zone["top"]))
        bottom = int(rng.choice([k for k in by_zone["bottom"] if k != top]))
        level = rng.uniform(*spec.horizon) * h
        period = rng.uniform(0.4, 1.2) * w
        phase = rng.uniform(0, 2 * np.pi)
        boundary = level + spec.horizon_wobble * h * np.sin(2 * np.pi * xx / period + phase)
        regions[yy >= boundary] = 1
        return regions, [top, bottom]
    base = int(rng.choice(by_zone["full"]))
    patch = int(rng.choice([k for k in by_zone["patch"] if k != base]))
    side = max(h, w)
    radius = rng.uniform(*spec.patch_size) * side / 2
    cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    squash = rng.uniform(0.5, 1.0)
    # A wobbly ellipse: the distance is modulated by smooth noise so that outlines look natural.
    dist = np.hypot((xx - cx) / radius, (yy - cy) / (radius * squash))
    dist = dist * (0.8 + 0.4 * value_noise(rng, h, w, 0.3))
    regions[dist <= 1.0] = 1
    return regions, [base, patch]


def _place_thing(rng, kind: ThingKind, hw):
    """Box (x, y, w, h) in pixels and flip flag of a new instance; at most 20% leaves the frame."""
    h, w = hw
    size = rng.uniform(*kind.size) * max(h, w)
    aspect = rng.uniform(*kind.aspect)
    bw, bh = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
    cx = rng.uniform(0.3 * bw, w - 0.3 * bw) if w > 0.6 * bw else w / 2
    cy = rng.uniform(0.3 * bh, h - 0.3 * bh) if h > 0.6 * bh else h / 2
    flip = bool(kind.flip and rng.random() < 0.5)
    return (cx - bw / 2, cy - bh / 2, bw, bh), flip


def _paint_thing(rng, world, render, image, kind_idx, color, box, win, drawn) -> ThingInstance:
    """Paints a thing's parts in order (each one jittered, shaded colour) into ``image`` and
    returns its instance with full-frame masks; later parts hide earlier ones."""
    kind = world.things[kind_idx]
    hw = image.shape[:2]
    rows = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
    shade = 1.0 + render.shading * (0.5 - (rows - box[1]) / max(box[3], 1.0))  # (rows, 1)
    region = image[win]
    local: list[tuple[str, np.ndarray]] = []
    for part, masks in zip(kind.parts, drawn, strict=True):
        names = (color,) if part.color.from_object else part.color.names
        base = np.asarray(world.palette[names[int(rng.integers(len(names)))]], np.float32)
        rgb = (
            base * part.color.shade + rng.uniform(-1, 1, 3).astype(np.float32) * render.color_jitter
        )
        part_mask = np.logical_or.reduce(masks)
        region[part_mask] = (shade * rgb[None, :])[np.nonzero(part_mask)[0]]
        for _, prev in local:
            prev &= ~part_mask
        if part.separate:
            pieces = [m.copy() for m in masks]
            for a in range(len(pieces)):  # later shapes of one part hide earlier ones too
                for b in range(a + 1, len(pieces)):
                    pieces[a] &= ~pieces[b]
            local.extend((part.name, m) for m in pieces)
        else:
            local.append((part.name, part_mask.copy()))

    def full(m: np.ndarray) -> np.ndarray:
        out = np.zeros(hw, dtype=bool)
        out[win] = m
        return out

    union = np.logical_or.reduce([m for ms in drawn for m in ms])
    parts = [PartInstance(name, full(m)) for name, m in local if m.any()]
    return ThingInstance(kind_idx, color, parts, full(union), int(union.sum()))


def sample_scene(
    rng: np.random.Generator,
    world: World,
    spec: SceneSpec,
    render: RenderSpec,
    image_size: tuple[int, int],
) -> Scene:
    """Samples and renders one scene.

    Args:
        rng: The scene's own random generator (the scene is a pure function of its state).
        world: World definition.
        spec: Layout rules (of the split being generated).
        render: Photometric rules.
        image_size: (H, W) in pixels.

    Returns:
        The rendered :class:`Scene` with visible part, object and background masks.
    """
    h, w = image_size
    regions, region_kinds = _sample_layout(rng, world, spec, (h, w))
    image = render_texture(rng, h, w, world.stuff[region_kinds[0]].texture)
    for i, k in enumerate(region_kinds[1:], start=1):
        tex = render_texture(rng, h, w, world.stuff[k].texture)
        np.copyto(image, tex, where=(regions == i)[..., None])

    things: list[ThingInstance] = []
    occupied = np.zeros((h, w), dtype=bool)
    num = int(rng.integers(spec.num_things[0], spec.num_things[1] + 1))
    for _ in range(num):
        kind_idx = int(rng.integers(len(world.things)))
        kind = world.things[kind_idx]
        color = kind.colors[int(rng.integers(len(kind.colors)))]
        for _attempt in range(spec.placement_attempts):
            box, flip = _place_thing(rng, kind, (h, w))
            win = _window(box, (h, w))
            drawn = [[_rasterize(s, box, flip, win) for s in part.shapes] for part in kind.parts]
            union = np.logical_or.reduce([m for ms in drawn for m in ms])
            if union.any() and all(
                (t.mask[win] & union).sum() <= t.mask.sum() - spec.min_visible * t.full_area
                for t in things
            ):
                break
        else:
            continue  # no placement keeps earlier things visible enough: drop this thing
        things.append(_paint_thing(rng, world, render, image, kind_idx, color, box, win, drawn))
        for t in things[:-1]:
            t.mask[win] &= ~union
            for p in t.parts:
                p.mask[win] &= ~union
        occupied[win] |= union

    stuff = []
    for i, k in enumerate(region_kinds):
        mask = (regions == i) & ~occupied
        if mask.any():
            stuff.append(StuffRegion(k, mask))
    if render.pixel_noise > 0:
        image += render.pixel_noise * rng.standard_normal((h, w, 1), dtype=np.float32)
    np.clip(np.rint(image, out=image), 0, 255, out=image)
    return Scene(image.astype(np.uint8), things, stuff)
