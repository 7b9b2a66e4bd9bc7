"""2-d positional encodings: random Fourier features (the release) and sine (the paper).

Both encode normalised (x, y) positions in [0, 1] (x to the right, y down, relative to the width
and height of the frame) into ``2 * num_pos_feats`` channels, and give the encoding of a feature
map's pixel centres. Feature maps and prompt corners use the same encoder class, so their
encodings live in the same space.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "POSITION_ENCODINGS",
    "PositionEmbeddingRandom",
    "PositionEmbeddingSine",
    "PositionEncoding",
    "build_position_encoding",
]

POSITION_ENCODINGS = ("random", "sine")


class PositionEncoding(nn.Module):
    """Base class: subclasses implement :meth:`encode_coords`; :meth:`forward` encodes a grid."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        if num_pos_feats < 1:
            raise ValueError(f"num_pos_feats must be positive, got {num_pos_feats}.")
        self.num_pos_feats = num_pos_feats

    @property
    def out_channels(self) -> int:
        """Channels of an encoding: ``2 * num_pos_feats``."""
        return 2 * self.num_pos_feats

    def encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Encodes normalised positions.

        Args:
            coords: float [..., 2], (x, y) divided by the frame's (W, H), so [0, 1] inside it.

        Returns:
            float32 [..., out_channels].
        """
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Encodes the pixel centres of a feature map.

        Pixel (i, j) of an h x w map covers [j, j+1) x [i, i+1) in map pixels; its centre is
        ((j + 0.5) / w, (i + 0.5) / h) in normalised coordinates.

        Args:
            features: [B, C, h, w] feature map; only its size, device and dtype are used.

        Returns:
            [1, out_channels, h, w] in ``features.dtype`` (broadcasts over the batch).
        """
        height, width = features.shape[-2:]
        ys = (torch.arange(height, device=features.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=features.device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
        return self.encode_coords(grid).permute(2, 0, 1).unsqueeze(0).to(features.dtype)


class PositionEmbeddingRandom(PositionEncoding):
    """Random Fourier features (Tancik et al. 2020), as in SAM and the Uni-OVSeg release.

    ``enc(p) = [sin(2 pi (2p - 1) G), cos(2 pi (2p - 1) G)]`` with a Gaussian matrix ``G`` of
    shape [2, num_pos_feats] drawn once at construction. ``G`` is a persistent buffer: it is
    saved in and loaded from checkpoints (a model that re-drew it would not match its weights),
    and it is not a parameter (never trained, no weight decay).
    """

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        """
        Args:
            num_pos_feats: Number of random frequencies F; the encoding has 2F channels.
            scale: Standard deviation of the frequencies (the release uses 1).
        """
        super().__init__(num_pos_feats)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        self.register_buffer(
            "positional_encoding_gaussian_matrix",
            scale * torch.randn(2, num_pos_feats),
            persistent=True,
        )

    def encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != 2:
            raise ValueError(f"coords must end with (x, y), got shape {tuple(coords.shape)}.")
        # float32 even under autocast: sin/cos of large arguments lose their phase in bf16.
        centred = 2.0 * coords.float() - 1.0
        phases = 2.0 * math.pi * (centred @ self.positional_encoding_gaussian_matrix.float())
        return torch.cat([phases.sin(), phases.cos()], dim=-1)


class PositionEmbeddingSine(PositionEncoding):
    """Sine encoding of DETR / Mask2Former (the paper's choice), on normalised positions.

    Each axis gets ``num_pos_feats`` channels: ``sin`` / ``cos`` (interleaved) of
    ``scale * p / temperature ** (2 * (k // 2) / num_pos_feats)``; the y channels come first.
    Unlike DETR, which normalises a map by ``(i + 1) / h``, pixel centres ``(i + 0.5) / h`` are
    used so that a map position and a prompt at the same place get the same encoding.
    """

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi
    ) -> None:
        """
        Args:
            num_pos_feats: Channels per axis (the encoding has ``2 * num_pos_feats``); even.
            temperature: Base of the geometric progression of wavelengths.
            scale: Multiplier of the normalised positions (2 pi: one period spans the frame at
                the highest wavelength index 0).
        """
        super().__init__(num_pos_feats)
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even for sin/cos pairs, got {num_pos_feats}.")
        self.temperature = temperature
        self.scale = scale

    def encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != 2:
            raise ValueError(f"coords must end with (x, y), got shape {tuple(coords.shape)}.")
        index = torch.arange(self.num_pos_feats, device=coords.device, dtype=torch.float32)
        wavelengths = self.temperature ** (
            2 * torch.div(index, 2, rounding_mode="floor") / index.numel()
        )
        scaled = coords.float()[..., None] * self.scale / wavelengths  # [..., 2, F]
        encoded = torch.stack([scaled[..., 0::2].sin(), scaled[..., 1::2].cos()], dim=-1)
        encoded = encoded.flatten(-2)  # interleave: sin(f0), cos(f1), sin(f2), ...
        return torch.cat([encoded[..., 1, :], encoded[..., 0, :]], dim=-1)  # (y, x)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"scale={self.scale:.4f}"
        )


def build_position_encoding(kind: str, embed_dim: int) -> PositionEncoding:
    """Builds the positional encoding named by a config string.

    Args:
        kind: ``"random"`` (random Fourier features, the release) or ``"sine"`` (the paper).
        embed_dim: Channels of the encoding; even.

    Returns:
        A :class:`PositionEncoding` with ``out_channels == embed_dim``.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even to split into sin/cos halves, got {embed_dim}.")
    if kind == "random":
        return PositionEmbeddingRandom(embed_dim // 2)
    if kind == "sine":
        return PositionEmbeddingSine(embed_dim // 2)
    raise ValueError(f"Unknown position encoding {kind!r}; choose one of {POSITION_ENCODINGS}.")
