"""The regular grid of point prompts used by automatic (whole-image) mask generation."""

from __future__ import annotations

import torch

from .image_frame import ImageFrame

__all__ = ["build_point_grid", "inference_point_grid", "layer_points_per_side"]


def build_point_grid(points_per_side: int, image_size: tuple[int, int]) -> torch.Tensor:
    """A ``points_per_side x points_per_side`` grid of points at the cell centres of a region.

    The region is split into ``points_per_side`` equal cells along each axis and one point is put
    at the centre of every cell, so no point ever lies on the border or outside the region. Pass
    the size of the *valid* (unpadded) image region: with the release's bottom/right padding the
    grid then covers the image only, never the padding.

    The release scales the same unit-square cell centres by ``size - 1`` instead of ``size``
    (pixel-index coordinates), which puts its points less than one pixel up/left of these.

    Args:
        points_per_side: Number of points along each axis (release: 20), >= 1.
        image_size: ``(h, w)`` of the valid region in input pixels; the region starts at (0, 0).

    Returns:
        float32 tensor [points_per_side**2, 2] of ``(x, y)`` continuous pixel coordinates
        (pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``), in row-major order:
        rows (y) outer, columns (x) inner. Every x lies in (0, w) and every y in (0, h).
    """
    if isinstance(points_per_side, bool) or not isinstance(points_per_side, int):
        raise ValueError(f"points_per_side must be an int >= 1, got {points_per_side!r}")
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(
            f"image_size must be (h, w) of the valid image region with h, w > 0, got {image_size}"
        )
    height, width = float(image_size[0]), float(image_size[1])
    # Cell centres: (i + 0.5) / n of the side. float64 then float32 keeps them exact enough that
    # grids of the same region built in different places agree bit for bit.
    centres = (torch.arange(points_per_side, dtype=torch.float64) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(centres * height, centres * width, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).to(torch.float32)


def inference_point_grid(points_per_side: int, frame: ImageFrame) -> torch.Tensor:
    """The test-time grid of point prompts (automatic masks, the paper's 20 x 20 grid
    protocol), placed as the release places it, to the bit.

    The release spreads ``linspace(1 / 2n, 1 - 1 / 2n, n)`` (float32) over a span of pixel
    *indices*: the original size minus one, times (S - 1) / (max(H0, W0) - 1), with S the input
    side. That keeps its points up to one pixel up/left of the cell centres of the valid region
    that :func:`build_point_grid` (used for training) gives. Here S generalises to the valid
    region's longest side, which is S in the release's geometry (longest side to S).

    Args:
        points_per_side: Number of points along each axis (release: 20), >= 1.
        frame: The image's frames: the grid is placed from ``original_size`` and ``valid_size``.

    Returns:
        float32 [points_per_side**2, 2] ``(x, y)`` in padded-input pixels, row-major (rows, y,
        outer); every point is inside the valid region.
    """
    if isinstance(points_per_side, bool) or not isinstance(points_per_side, int):
        raise ValueError(f"points_per_side must be an int >= 1, got {points_per_side!r}")
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    (height, width), valid_size = frame.original_size, frame.valid_size
    last_index = torch.tensor([width - 1, height - 1])
    # The release divides by max(H0, W0) - 1, which is 0 for a 1 x 1 image: its grid is NaN
    # there; ours collapses onto pixel (0, 0).
    ratio = (max(valid_size) - 1.0) / last_index.amax().clamp(min=1)  # float32, as released
    span = last_index * ratio
    offset = 1 / (2 * points_per_side)
    fractions = torch.linspace(offset, 1 - offset, points_per_side)
    xs, ys = torch.meshgrid(fractions, fractions, indexing="xy")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) * span


def layer_points_per_side(points_per_side: int, layer: int, downscale_factor: int) -> int:
    """Points per side of the grid of crop layer ``layer`` (0: the whole image).

    Layer ``i`` uses ``points_per_side / downscale_factor**i`` points per side, rounded down
    (segment-anything's ``crop_n_points_downscale_factor``): its crops are smaller, so a
    sparser grid gives about the same point density in image pixels.

    Args:
        points_per_side: Points per side of layer 0, >= 1.
        layer: Crop layer index, >= 0.
        downscale_factor: Integer >= 1.

    Returns:
        An int >= 0; 0 means the layer's grid would be empty (callers refuse such settings).
    """
    if layer < 0 or downscale_factor < 1:
        raise ValueError(
            f"layer must be >= 0 and downscale_factor >= 1, got {layer} and {downscale_factor}"
        )
    return int(points_per_side) // int(downscale_factor) ** int(layer)
