"""Pictures of predictions: masks filled and outlined over the image, with a legend beside it.

Every ``draw_*`` function takes the RGB uint8 image [H, W, 3] the prediction was made on and
returns a new RGB uint8 picture. Its top-left [H, W] block is the image with the masks drawn;
when there is something to name, a legend panel is added to the right of the image (portrait
and square images) or under it (wide ones), so that no text ever hides a pixel.

* automatic masks (:func:`draw_masks`): a colour fill and an outline per mask, no text by
  default (``max_labels`` names the first few); with classes, the legend lists the classes
  present by area and masks of one class share its hue;
* semantic and panoptic segmentations (:func:`draw_semantic`, :func:`draw_panoptic`): regions
  in their class colour, outlined; the legend lists the classes present, largest area first,
  with the share of the image they cover (and the number of instances of thing classes);
* concept prompts (:func:`draw_concepts`): each phrase's instances in shades of its colour,
  tagged "phrase score"; the legend lists every phrase, those with no instance as "none found";
* prompted masks (:func:`draw_prompts`): prompt ``n`` is drawn as a numbered marker (points) or
  a box with a numbered corner marker, both with a black and white outline that stands out on
  any photo, and its masks in the same colour; the legend maps each number to its text.

Colours are deterministic: class ``c`` always gets :func:`class_color` ``(c)`` (the colours of
:func:`colorize_labels` too), automatic masks cycle through the palette by rank and prompts by
number.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
from detectron2.utils.colormap import colormap
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "LegendEntry",
    "add_legend",
    "class_color",
    "colorize_labels",
    "draw_concepts",
    "draw_masks",
    "draw_panoptic",
    "draw_prompts",
    "draw_semantic",
    "mark_points",
]

Color = tuple[int, int, int]

# detectron2's palette without its greys, black and white: every colour stands out as a fill.
_PALETTE_ALL = colormap(rgb=True, maximum=255).astype(np.int64)  # [74, 3]
_PALETTE = _PALETTE_ALL[(_PALETTE_ALL.max(1) - _PALETTE_ALL.min(1)) > 64]  # [64, 3]
_PANEL_BACKGROUND = (255, 255, 255)
_PANEL_TEXT = (32, 32, 32)
_DARK = (0, 0, 0)
_LIGHT = (255, 255, 255)
# Legends longer than this end with a "+ N more" line (the JSON lists everything).
_MAX_LEGEND_ENTRIES = 24
# Wider than this (W / H) puts the legend under the image instead of beside it.
_WIDE_ASPECT = 1.25
_PERCENT = 100.0


class LegendEntry(NamedTuple):
    """One line of a legend.

    Attributes:
        color: RGB of the swatch.
        text: What the colour stands for.
        marker: Text drawn on a round swatch (a prompt's number); None: a square swatch.
    """

    color: Color
    text: str
    marker: str | None = None


def class_color(index: int) -> Color:
    """The colour of class ``index`` (any int; the palette has 64 colours and cycles)."""
    return tuple(int(c) for c in _PALETTE[int(index) % len(_PALETTE)])


def _shade(color: Color, index: int) -> Color:
    """A brighter or darker version of ``color``, fixed per instance index, so that instances
    of one class share a hue but stay distinguishable."""
    factor = 0.7 + 0.6 * ((index * 0.618034) % 1.0)
    return tuple(int(min(255, round(c * factor))) for c in color)


def colorize_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A label map in colour: class ``c`` in :func:`class_color` ``(c)``, other values (the
    unlabelled value 255 / 65535, negative values) black.

    Args:
        labels: int [H, W] class indices.
        num_classes: Values ``0 .. num_classes - 1`` are classes.

    Returns:
        uint8 [H, W, 3] RGB.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    lut = np.zeros((num_classes + 1, 3), dtype=np.uint8)
    for c in range(num_classes):
        lut[c] = class_color(c)
    valid = (labels >= 0) & (labels < num_classes)
    return lut[np.where(valid, labels, num_classes).astype(np.int64)]


# ----------------------------------------------------------------------------- drawing helpers
def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.uint8)


def _text_size(image_shape: tuple[int, ...]) -> int:
    """Font size in pixels for a picture of this size: readable when the picture is viewed
    scaled to a screen, never below 11 px."""
    return max(11, round(max(image_shape[:2]) / 60))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _measure(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), ends exclusive, of a bool mask; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class _Canvas:
    """A float copy of the image that masks are blended into, then outlined and marked."""

    def __init__(self, image: np.ndarray, alpha: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.pixels = image.astype(np.float32)
        self.alpha = alpha
        self.thickness = max(1, round(max(image.shape[:2]) / 500))
        self._outlines: list[tuple[list[np.ndarray], Color]] = []

    def fill(self, mask: np.ndarray, color: Color, *, outline: bool = True) -> None:
        box = _bbox(mask)
        if box is None:
            return
        x0, y0, x1, y1 = box
        crop, region = mask[y0:y1, x0:x1], self.pixels[y0:y1, x0:x1]
        region[crop] = region[crop] * (1.0 - self.alpha) + np.float32(color) * self.alpha
        if outline:
            contours, _ = cv2.findContours(
                crop.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
            )
            self._outlines.append((list(contours), color))

    def finish(self) -> np.ndarray:
        """The picture with every outline drawn (after all fills, so none is covered)."""
        out = np.ascontiguousarray(np.clip(np.rint(self.pixels), 0, 255).astype(np.uint8))
        for contours, color in self._outlines:
            cv2.drawContours(out, contours, -1, color, self.thickness, lineType=cv2.LINE_AA)
        return out


def _draw_marker(draw: ImageDraw.ImageDraw, center, text: str, color: Color, size: int) -> None:
    """A round marker filled with ``color``, ringed white then black, ``text`` on it in white
    with a black edge: readable on any background."""
    x, y = center
    font = _font(size)
    ring = max(1, size // 10)
    radius = max(0.75 * size, _measure(font, text)[0] / 2 + 2 * ring)
    draw.ellipse(
        [
            x - radius - 2 * ring,
            y - radius - 2 * ring,
            x + radius + 2 * ring,
            y + radius + 2 * ring,
        ],
        fill=_DARK,
    )
    draw.ellipse(
        [x - radius - ring, y - radius - ring, x + radius + ring, y + radius + ring], fill=_LIGHT
    )
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    draw.text(
        (x, y), text, font=font, fill=_LIGHT, anchor="mm", stroke_width=ring, stroke_fill=_DARK
    )


def _draw_tag(draw: ImageDraw.ImageDraw, center, text: str, size: int) -> None:
    """``text`` centred at ``center`` in white with a black edge (a label on a mask)."""
    draw.text(
        center,
        text,
        font=_font(size),
        fill=_LIGHT,
        anchor="mm",
        stroke_width=max(1, size // 8),
        stroke_fill=_DARK,
    )


def _inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border: a label there sits inside the mask
    (a mask's centroid can lie outside it)."""
    x0, y0, x1, y1 = _bbox(mask)
    crop = np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1)
    distance = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return x0 + int(x) - 1, y0 + int(y) - 1


# ----------------------------------------------------------------------------- legend
def add_legend(
    picture: np.ndarray, entries: Sequence[LegendEntry], *, title: str | None = None
) -> np.ndarray:
    """The picture with a legend panel to its right (portrait and square pictures) or under it
    (wide ones); the picture itself is copied unchanged into the top-left corner.

    Args:
        picture: uint8 [H, W, 3] RGB.
        entries: Lines of the legend, in order; beyond 24 the last line says how many more.
        title: Optional first line.

    Returns:
        uint8 [H', W', 3] with H' >= H, W' >= W; ``picture`` itself when ``entries`` is empty.
    """
    picture = _check_image(picture)
    if not entries:
        return picture
    entries = list(entries)
    if len(entries) > _MAX_LEGEND_ENTRIES:
        more = len(entries) - (_MAX_LEGEND_ENTRIES - 1)
        entries = entries[: _MAX_LEGEND_ENTRIES - 1]
        entries.append(LegendEntry(_PANEL_BACKGROUND, f"+ {more} more (see the JSON)"))
    height, width = picture.shape[:2]
    size = _text_size(picture.shape)
    font = _font(size)
    pad, row = max(4, size // 2), round(1.6 * size)
    swatch = round(1.5 * size)
    text_width = max(_measure(font, e.text)[0] for e in entries)
    column = pad + swatch + pad + text_width + pad
    title_height = row if title else 0
    if title:
        column = max(column, pad + _measure(font, title)[0] + pad)
    # Under wide pictures, unless a line of the legend is wider than the picture.
    beside = width <= _WIDE_ASPECT * height or column + pad > width
    if beside:  # as many rows as fit next to the image, columns balanced
        columns = math.ceil(len(entries) / max(1, (height - 2 * pad - title_height) // row))
        rows = math.ceil(len(entries) / columns)
        panel_size = (max(height, title_height + rows * row + 2 * pad), columns * column + pad)
    else:  # as many columns as fit under the image
        columns = max(1, min(len(entries), (width - pad) // column))
        rows = math.ceil(len(entries) / columns)
        panel_size = (title_height + rows * row + 2 * pad, width)
    panel = Image.new("RGB", (panel_size[1], panel_size[0]), _PANEL_BACKGROUND)
    draw = ImageDraw.Draw(panel)
    if title:
        draw.text((pad, pad + row / 2), title, font=font, fill=_PANEL_TEXT, anchor="lm")
    for i, entry in enumerate(entries):
        c, r = divmod(i, rows)
        x = pad + c * column
        y = pad + title_height + r * row + row / 2
        if entry.marker is not None:
            _draw_marker(draw, (x + swatch / 2, y), entry.marker, entry.color, size)
        elif entry.color != _PANEL_BACKGROUND:
            draw.rectangle(
                [x, y - swatch / 2 + 2, x + swatch, y + swatch / 2 - 2],
                fill=entry.color,
                outline=_PANEL_TEXT,
            )
        draw.text((x + swatch + pad, y), entry.text, font=font, fill=_PANEL_TEXT, anchor="lm")
    panel = np.asarray(panel)
    if beside:
        out = np.full((panel.shape[0], width + panel.shape[1], 3), 255, dtype=np.uint8)
        out[:height, :width] = picture
        out[:, width:] = panel
    else:
        out = np.full((height + panel.shape[0], panel.shape[1], 3), 255, dtype=np.uint8)
        out[:height, :width] = picture
        out[height:] = panel
    return out


def _share(area: int, total: int) -> str:
    percent = _PERCENT * area / max(1, total)
    return "<1%" if percent < 1 else f"{percent:.0f}%"


# ----------------------------------------------------------------------------- public drawings
def draw_masks(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    class_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    max_labels: int = 0,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Binary masks (e.g. automatic masks) over the image.

    Masks are filled and outlined, larger ones first so that small ones stay visible. No text
    is drawn on the image unless ``max_labels`` asks for it: dozens of labels hide the picture.

    Args:
        image: uint8 [H, W, 3] RGB.
        masks: bool [K, H, W], best first (e.g. by decreasing predicted IoU).
        labels: Optional K texts (e.g. ``"dog 87%"``); only the first ``max_labels`` are drawn,
            each at the point of its mask farthest from the mask's border.
        class_ids: Optional K class indices: masks of one class share its hue (one shade per
            mask). Default: one colour per mask.
        class_names: Display names by class index; with ``class_ids``, a legend lists the
            classes present (largest total area first, with their number of masks).
        max_labels: How many of ``labels`` to draw (0: none).
        points: Optional float [P, 2] (x, y) points, drawn as markers numbered from 1.
        boxes: Optional float [B, 4] XYXY boxes, drawn as outlines numbered from P + 1.
        alpha: Fill opacity in [0, 1].

    Returns:
        uint8 RGB picture (see the module docstring for its layout).
    """
    image = _check_image(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"masks must be [K, H, W] with (H, W) = {image.shape[:2]}, got {masks.shape}"
        )
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"got {len(labels)} labels for {len(masks)} masks")
    if class_ids is not None and len(class_ids) != len(masks):
        raise ValueError(f"got {len(class_ids)} class ids for {len(masks)} masks")
    if max_labels < 0:
        raise ValueError(f"max_labels must be >= 0, got {max_labels}")
    if class_ids is not None:
        colors = [_shade(class_color(c), i) for i, c in enumerate(class_ids)]
    else:
        colors = [class_color(i) for i in range(len(masks))]
    areas = masks.sum(axis=(1, 2))  # reshape(0, -1) would fail on an image without masks
    canvas = _Canvas(image, alpha)
    for k in np.argsort(-areas, kind="stable"):
        canvas.fill(masks[k], colors[k])
    picture = Image.fromarray(canvas.finish())
    draw = ImageDraw.Draw(picture)
    size = _text_size(image.shape)
    if labels is not None:
        for k in range(min(max_labels, len(masks))):
            if areas[k]:
                _draw_tag(draw, _inner_point(masks[k]), labels[k], size)
    _draw_prompt_markers(draw, points, boxes, size, canvas.thickness)
    entries = []
    if class_ids is not None and class_names is not None:
        class_ids = np.asarray(class_ids, dtype=np.int64)
        present = {}
        for c in np.unique(class_ids).tolist():
            union = masks[class_ids == c].any(axis=0)
            present[c] = int(union.sum())
        total = image.shape[0] * image.shape[1]
        for c in sorted(present, key=lambda c: -present[c]):
            count = int((class_ids == c).sum())
            text = f"{class_names[c]}" + (f" x{count}" if count > 1 else "")
            entries.append(LegendEntry(class_color(c), f"{text}  {_share(present[c], total)}"))
    return add_legend(np.asarray(picture), entries)


def _prompt_color(number: int) -> Color:
    """Colour of prompt ``number`` (1-based)."""
    return class_color(number - 1)


def _draw_prompt_markers(draw, points, boxes, size: int, thickness: int) -> None:
    """Numbered markers: points 1..P, then boxes P+1..P+B (a box's marker on its corner)."""
    points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64)
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)
    points, boxes = points.reshape(-1, 2), boxes.reshape(-1, 4)
    for i, box in enumerate(boxes, start=len(points) + 1):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=_DARK, width=thickness + 2)
        draw.rectangle([x0, y0, x1, y1], outline=_prompt_color(i), width=thickness)
    for i, box in enumerate(boxes, start=len(points) + 1):
        _draw_marker(draw, (float(box[0]), float(box[1])), str(i), _prompt_color(i), size)
    for i, (x, y) in enumerate(points, start=1):
        _draw_marker(draw, (float(x), float(y)), str(i), _prompt_color(i), size)


def mark_points(
    picture: np.ndarray,
    points: np.ndarray,
    *,
    text: str,
    color: Color = _DARK,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Points drawn as round markers like the prompts' (ringed white then black), all with one
    text and colour: e.g. clicks that are not prompts of their own.

    Args:
        picture: uint8 [H, W, 3] RGB (e.g. a ``draw_*`` result: its top-left block is the image).
        points: float [P, 2] (x, y) pixels of ``picture``.
        text: What each marker shows (a character or two).
        color: Fill of the markers.
        image_size: (H, W) of the image inside ``picture`` (without its legend): markers get
            the size of the ``draw_*`` markers on it. Default: the picture's size.

    Returns:
        A new uint8 RGB picture of the same size.
    """
    picture = _check_image(picture)
    size = _text_size(image_size if image_size is not None else picture.shape)
    picture = Image.fromarray(picture.copy())
    draw = ImageDraw.Draw(picture)
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        _draw_marker(draw, (float(x), float(y)), text, color, size)
    return np.asarray(picture)


def draw_prompts(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    texts: Sequence[str | Sequence[str]] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Prompted masks, each in its prompt's colour, with numbered prompts and a legend.

    Prompts are numbered from 1: points first, then boxes (prompt ``n`` owns ``masks[n - 1]``).
    Points are drawn as numbered markers, boxes as outlines with a numbered marker on their
    top-left corner; every marker has a white and a black ring. Several masks of one prompt
    (multimask output) are told apart by shade and listed as ``na``, ``nb``...

    Args:
        image: uint8 [H, W, 3] RGB.
        masks: The masks of each of the N = P + B prompts: N bool arrays [M_n, H, W] (or
            [H, W]), or one bool array [N, M, H, W].
        points: Optional float [P, 2] (x, y) point prompts.
        boxes: Optional float [B, 4] XYXY box prompts.
        texts: Optional legend text of each mask, per prompt (a list of M_n texts, or one text
            when M_n = 1), e.g. ``"car 87%, iou 0.91"``.
        alpha: Fill opacity in [0, 1].

    Returns:
        uint8 RGB picture (see the module docstring for its layout).
    """
    image = _check_image(image)
    per_prompt = []
    for n, prompt_masks in enumerate(masks):
        prompt_masks = np.asarray(prompt_masks, dtype=bool)
        if prompt_masks.ndim == 2:
            prompt_masks = prompt_masks[None]
        if prompt_masks.ndim != 3 or prompt_masks.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"the masks of prompt {n + 1} must be [M, H, W] with (H, W) = "
                f"{image.shape[:2]}, got {prompt_masks.shape}"
            )
        per_prompt.append(prompt_masks)
    num_points = 0 if points is None else len(np.asarray(points).reshape(-1, 2))
    num_boxes = 0 if boxes is None else len(np.asarray(boxes).reshape(-1, 4))
    if len(per_prompt) != num_points + num_boxes:
        raise ValueError(
            f"got masks for {len(per_prompt)} prompts but {num_points} points + {num_boxes} boxes"
        )
    if texts is not None:
        texts = [[t] if isinstance(t, str) else list(t) for t in texts]
        if [len(t) for t in texts] != [len(m) for m in per_prompt]:
            raise ValueError("texts must hold one text per mask of each prompt")
    canvas = _Canvas(image, alpha)
    order = []  # (area, prompt, output, colour), in prompt order
    for n, prompt_masks in enumerate(per_prompt):
        for m, mask in enumerate(prompt_masks):
            color = _prompt_color(n + 1)
            if len(prompt_masks) > 1:
                color = _shade(color, m)
            order.append((int(mask.sum()), n, m, color))
    for _, n, m, color in sorted(order, key=lambda item: -item[0]):  # small masks on top
        canvas.fill(per_prompt[n][m], color)
    picture = Image.fromarray(canvas.finish())
    size = _text_size(image.shape)
    _draw_prompt_markers(ImageDraw.Draw(picture), points, boxes, size, canvas.thickness)
    entries = []
    for area, n, m, color in order:
        number = str(n + 1) + (chr(ord("a") + m) if len(per_prompt[n]) > 1 else "")
        kind = "point" if n < num_points else "box"
        text = texts[n][m] if texts is not None else ""
        text = f"{kind}: {text or 'mask'}" if area else f"{kind}: no mask"
        entries.append(LegendEntry(color, text, marker=number))
    return add_legend(np.asarray(picture), entries)


def draw_semantic(
    image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, alpha: float = 0.5
) -> np.ndarray:
    """A semantic label map over the image, with a legend of the classes present.

    Args:
        image: uint8 [H, W, 3] RGB.
        labels: int [H, W] class indices; values outside ``[0, len(class_names))`` (e.g. -1 for
            unlabelled pixels) are left undrawn.
        class_names: Display names by class index.
        alpha: Fill opacity in [0, 1].

    Returns:
        uint8 RGB picture; the legend lists classes by decreasing area, with their share of
        the image.
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be [H, W] = {image.shape[:2]}, got {labels.shape}")
    num_classes = len(class_names)
    valid = (labels >= 0) & (labels < num_classes)
    counts = np.bincount(labels[valid].astype(np.int64).ravel(), minlength=num_classes)
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    canvas = _Canvas(image, alpha)
    for c in present:
        canvas.fill(labels == c, class_color(c))
    total = labels.size
    entries = [
        LegendEntry(class_color(c), f"{class_names[c]}  {_share(int(counts[c]), total)}")
        for c in present
    ]
    return add_legend(canvas.finish(), entries)


def draw_panoptic(
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments_info: list[dict],
    class_names: Sequence[str],
    *,
    alpha: float = 0.5,
) -> np.ndarray:
    """A panoptic segmentation over the image, with a legend of the classes present.

    Stuff segments take their class colour, thing instances a shade of it each; every segment
    is outlined, so touching instances of one class stay apart.

    Args:
        image: uint8 [H, W, 3] RGB.
        panoptic_seg: int [H, W] segment ids (0 = none).
        segments_info: Dicts with ``id``, ``category_id`` (index into ``class_names``) and
            ``isthing``.
        class_names: Display names by class index.
        alpha: Fill opacity in [0, 1].

    Returns:
        uint8 RGB picture; the legend lists classes by decreasing area, with their share of
        the image and, for thing classes, their number of instances.
    """
    image = _check_image(image)
    panoptic_seg = np.asarray(panoptic_seg)
    if panoptic_seg.shape != image.shape[:2]:
        raise ValueError(
            f"panoptic_seg must be [H, W] = {image.shape[:2]}, got {panoptic_seg.shape}"
        )
    canvas = _Canvas(image, alpha)
    areas: dict[int, int] = {}
    instances: dict[int, int] = {}
    for segment in segments_info:
        c = int(segment["category_id"])
        mask = panoptic_seg == segment["id"]
        color = class_color(c)
        if segment.get("isthing"):
            color = _shade(color, instances.get(c, 0))
            instances[c] = instances.get(c, 0) + 1
        canvas.fill(mask, color)
        areas[c] = areas.get(c, 0) + int(mask.sum())
    total = panoptic_seg.size
    entries = []
    for c in sorted(areas, key=lambda c: -areas[c]):
        count = instances.get(c, 0)
        text = class_names[c] + (f" x{count}" if count > 1 else "")
        entries.append(LegendEntry(class_color(c), f"{text}  {_share(areas[c], total)}"))
    return add_legend(canvas.finish(), entries)


def draw_concepts(
    image: np.ndarray,
    phrases: Sequence[str],
    masks: Sequence[np.ndarray],
    scores: Sequence[Sequence[float]],
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """The instances of a concept query, each tagged with its phrase and score, and a legend
    that lists every phrase: its number of instances, or "none found".

    Phrase ``i`` has colour :func:`class_color` ``(i)``; its instances are shades of it.

    Args:
        image: uint8 [H, W, 3] RGB.
        phrases: The P display names of the phrases.
        masks: Per phrase, bool [N_i, H, W] (N_i may be 0).
        scores: Per phrase, the N_i scores in [0, 1].
        alpha: Fill opacity in [0, 1].

    Returns:
        uint8 RGB picture (see the module docstring for its layout).
    """
    image = _check_image(image)
    if not len(phrases) == len(masks) == len(scores):
        raise ValueError(f"{len(phrases)} phrases, {len(masks)} mask sets, {len(scores)} scores")
    all_masks, class_ids, labels = [], [], []
    for i, (phrase, phrase_masks, phrase_scores) in enumerate(
        zip(phrases, masks, scores, strict=True)
    ):
        phrase_masks = np.asarray(phrase_masks, dtype=bool).reshape(-1, *image.shape[:2])
        if len(phrase_masks) != len(phrase_scores):
            raise ValueError(
                f"phrase {phrase!r}: {len(phrase_masks)} masks, {len(phrase_scores)} scores"
            )
        all_masks += list(phrase_masks)
        class_ids += [i] * len(phrase_masks)
        labels += [f"{phrase} {score:.0%}" for score in phrase_scores]
    stack = np.stack(all_masks) if all_masks else np.zeros((0, *image.shape[:2]), dtype=bool)
    picture = draw_masks(
        image, stack, labels=labels, class_ids=class_ids, max_labels=len(labels), alpha=alpha
    )
    entries = []
    for i, (phrase, phrase_scores) in enumerate(zip(phrases, scores, strict=True)):
        count = len(phrase_scores)
        text = (
            f"{phrase}: none found"
            if not count
            else f"{phrase} x{count}  best {max(phrase_scores):.0%}"
        )
        entries.append(LegendEntry(class_color(i), text))
    return add_legend(picture, entries)
