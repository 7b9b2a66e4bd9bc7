"""The regular grid of point prompts used by automatic (whole-image) mask generation."""

from __future__ import annotations

import torch

__all__ = ["build_point_grid", "layer_points_per_side"]


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
