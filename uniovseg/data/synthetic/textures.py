"""Procedural textures of stuff kinds, built from composited layers.

Every layer returns an RGB image and an opacity map; the stuff kind's layers are painted over one
another in order. Lengths (``scale``, ``wavelength``, ``brick``...) are fractions of the longer
image side, so a texture looks the same at any resolution. Layer types and their keys:

- ``fill``: ``colors[0]`` everywhere.
- ``noise``: value noise blending ``colors[0]`` -> ``colors[1]``; ``scale`` (feature size,
  default 0.1), ``octaves`` (default 2).
- ``gradient``: vertical blend ``colors[0]`` (top) -> ``colors[1]`` (bottom).
- ``waves``: wavy horizontal bands between ``colors[0]`` and ``colors[1]``; ``wavelength``
  (default 0.08), ``wobble`` (default 0.3, in wavelengths).
- ``bricks``: running-bond bricks ``colors[0]`` with mortar ``colors[1]``; ``brick`` ([w, h],
  default [0.14, 0.06]), ``mortar`` (fraction of the brick height, default 0.18), ``jitter``
  (per-brick brightness spread, default 0.12).
- ``speckle``: isolated pixels of ``colors[0]``; ``density`` (default 0.03).
- ``blobs``: soft blobs of ``colors[0]`` where value noise exceeds ``threshold`` (default 0.6);
  ``scale`` (default 0.2), ``softness`` (default 0.1), ``opacity`` (default 1).
- ``dashes``: horizontal dashed lines of ``colors[0]``; ``spacing`` (default 0.3), ``length``
  (default 0.08), ``gap`` (default 0.06), ``thickness`` (default 0.015).

Every layer also takes ``grain``: the std of per-pixel Gaussian noise added to its colour (0-255
units, default 0).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import TextureLayer

__all__ = ["render_texture", "value_noise"]


def value_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Smooth random field in [0, 1].

    Args:
        rng: Random generator.
        height: Output height H.
        width: Output width W.
        scale: Feature size as a fraction of the longer side.

    Returns:
        float32 array (H, W) in [0, 1].
    """
    side = max(height, width)
    cells = max(1, int(round(1.0 / max(scale, 1e-3))))
    gy = max(2, int(round(cells * height / side)) + 1)
    gx = max(2, int(round(cells * width / side)) + 1)
    grid = rng.random((gy, gx), dtype=np.float32)
    field = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(field, dtype=np.float32), 0.0, 1.0)


def _blend(colors: tuple, t: np.ndarray) -> np.ndarray:
    c0 = np.asarray(colors[0], dtype=np.float32)
    c1 = np.asarray(colors[1 if len(colors) > 1 else 0], dtype=np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _layer(rng: np.random.Generator, h: int, w: int, layer: TextureLayer):
    """One layer: colour, (H, W, 3) or a broadcastable (3,), and opacity, (H, W) or None."""
    side = max(h, w)
    p = layer.param
    flat = np.asarray(layer.colors[0], dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if layer.type == "fill":
        return flat, None
    if layer.type == "noise":
        scale, octaves = float(p("scale", 0.1)), int(p("octaves", 2))
        t = sum(0.5**o * value_noise(rng, h, w, scale / 2**o) for o in range(octaves))
        return _blend(layer.colors, t / sum(0.5**o for o in range(octaves))), None
    if layer.type == "gradient":
        return _blend(layer.colors, np.broadcast_to(yy / max(h - 1, 1), (h, w))), None
    if layer.type == "waves":
        lam = float(p("wavelength", 0.08)) * side
        wobble = float(p("wobble", 0.3))
        ph = rng.uniform(0, 2 * np.pi, size=2)
        arg = 2 * np.pi * (yy / lam + wobble * np.sin(xx / (2 * lam) + ph[0])) + ph[1]
        return _blend(layer.colors, 0.5 + 0.5 * np.sin(arg)), None
    if layer.type == "bricks":
        bw, bh = (float(v) * side for v in p("brick", [0.14, 0.06]))
        mortar = max(1.0, float(p("mortar", 0.18)) * bh)
        oy, ox = rng.uniform(0, bh), rng.uniform(0, bw)
        row = np.floor((yy + oy) / bh)
        shifted = xx + ox + (row % 2) * bw / 2
        col = np.floor(shifted / bw)
        in_mortar = ((yy + oy) % bh < mortar) | (shifted % bw < mortar)
        # One brightness per brick: hash the (row, col) index into a small random table.
        table = 1.0 + float(p("jitter", 0.12)) * rng.uniform(-1, 1, size=997).astype(np.float32)
        shade = table[((row * 131 + col) % 997).astype(np.int64)]
        rgb = np.asarray(layer.colors[0], np.float32) * shade[..., None]
        mortar_rgb = np.asarray(layer.colors[-1], np.float32)
        return np.where(in_mortar[..., None], mortar_rgb, rgb), None
    if layer.type == "speckle":
        alpha = rng.random((h, w), dtype=np.float32) < float(p("density", 0.03))
        return flat, alpha.astype(np.float32)
    if layer.type == "blobs":
        t = value_noise(rng, h, w, float(p("scale", 0.2)))
        soft = max(float(p("softness", 0.1)), 1e-3)
        alpha = np.clip((t - float(p("threshold", 0.6))) / soft, 0, 1) * float(p("opacity", 1.0))
        return flat, alpha.astype(np.float32)
    if layer.type == "dashes":
        spacing = float(p("spacing", 0.3)) * side
        length, gap = float(p("length", 0.08)) * side, float(p("gap", 0.06)) * side
        thick = max(1.0, float(p("thickness", 0.015)) * side)
        oy, ox = rng.uniform(0, spacing), rng.uniform(0, length + gap)
        on = ((yy + oy) % spacing < thick) & ((xx + ox) % (length + gap) < length)
        return flat, on.astype(np.float32)
    raise AssertionError(f"texture type {layer.type!r} passed validation but is not drawable")


def render_texture(
    rng: np.random.Generator, height: int, width: int, layers: tuple[TextureLayer, ...]
) -> np.ndarray:
    """Renders a stuff kind's texture over the whole frame.

    Args:
        rng: Random generator (the texture's phase, noise and layout).
        height: H.
        width: W.
        layers: The kind's texture layers, bottom first.

    Returns:
        float32 array (H, W, 3), values about 0-255 (not clipped).
    """
    out = np.zeros((height, width, 3), dtype=np.float32)
    for layer in layers:
        rgb, alpha = _layer(rng, height, width, layer)
        grain = float(layer.param("grain", 0.0))
        if grain > 0:
            rgb = rgb + grain * rng.standard_normal((height, width, 1), dtype=np.float32)
        if alpha is None:
            out[:] = rgb
        else:
            out += (rgb - out) * alpha[..., None]
    return out
