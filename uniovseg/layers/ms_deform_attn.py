"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), the module.

The op itself (:func:`ms_deform_attn`) and the choice between its PyTorch, C++ and CUDA paths
live in :mod:`uniovseg.layers.ms_deform_attn_function`; they are re-exported here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ms_deform_attn_function import BACKENDS, compiled_backends, ms_deform_attn

__all__ = ["MSDeformAttn", "compiled_backends", "ms_deform_attn"]


class MSDeformAttn(nn.Module):
    """Each query attends to ``num_points`` learned offsets around its reference point per level.

    Parameter names and shapes match the Deformable-DETR / Mask2Former layout, so checkpoints of
    those pixel decoders load unchanged (e.g. 3 levels, 8 heads, 4 points, C=256:
    ``sampling_offsets.weight`` [192, 256], ``attention_weights.weight`` [96, 256]).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        backend: str = "auto",
    ) -> None:
        """
        Args:
            embed_dim: Channels C of queries and values.
            num_levels: Number of feature levels L.
            num_heads: Attention heads; must divide ``embed_dim``.
            num_points: Sampling points P per head and level.
            backend: Implementation of the op: ``"auto"``, ``"pytorch"``, ``"cpp"`` or
                ``"cuda"`` (see :func:`ms_deform_attn`).
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        if min(num_levels, num_heads, num_points) < 1:
            raise ValueError("num_levels, num_heads and num_points must be positive.")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.backend = backend
        num_samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_samples * 2)
        self.attention_weights = nn.Linear(embed_dim, num_samples)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation.

        Offsets start as fixed patterns: head h looks in direction 2*pi*h/heads (scaled so the
        larger of |x|, |y| is 1), point p at distance p+1 pixels, on every level. Attention is
        uniform (zero weights and bias), projections are Xavier-uniform with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = directions.view(self.num_heads, 1, 1, 2) * scale
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [B, Q, C] query features (with positional embedding already added).
            reference_points: [B, Q, L, 2] normalised (x, y) in [0, 1] per level; offsets are
                in pixels of each level. Or [B, Q, L, 4] normalised (cx, cy, w, h) boxes;
                offsets are then fractions of half the box size divided by ``num_points``.
            value_input: [B, S, C] features of all levels, flattened and concatenated.
            spatial_shapes: int64 [L, 2], (H_l, W_l) per level.
            level_start_index: int64 [L], start of each level in S.
            value_padding_mask: Optional bool [B, S], True where ``value_input`` is padding;
                those keys contribute nothing.

        Returns:
            [B, Q, C] attended features.
        """
        batch, num_queries, channels = query.shape
        _, num_keys, _ = value_input.shape
        if channels != self.embed_dim or value_input.shape[-1] != self.embed_dim:
            raise ValueError(
                f"query {tuple(query.shape)} and value_input {tuple(value_input.shape)} must "
                f"have {self.embed_dim} channels."
            )
        if spatial_shapes.shape != (self.num_levels, 2):
            raise ValueError(
                f"spatial_shapes must be [{self.num_levels}, 2] (H, W per level), got "
                f"{tuple(spatial_shapes.shape)}."
            )
        if reference_points.shape[:3] != (batch, num_queries, self.num_levels) or (
            reference_points.shape[-1] not in (2, 4)
        ):
            raise ValueError(
                f"reference_points must be [{batch}, {num_queries}, {self.num_levels}, 2 or 4], "
                f"got {tuple(reference_points.shape)}."
            )
        head_dim = self.embed_dim // self.num_heads
        value = self.value_proj(value_input)
        if value_padding_mask is not None:
            if value_padding_mask.shape != (batch, num_keys):
                raise ValueError(
                    f"value_padding_mask must be bool [{batch}, {num_keys}], got "
                    f"{tuple(value_padding_mask.shape)}."
                )
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch, num_keys, self.num_heads, head_dim)

        sample_shape = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*sample_shape, 2)
        weights = self.attention_weights(query).view(*sample_shape[:3], -1).softmax(-1)
        weights = weights.view(sample_shape)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l).
            normalizer = spatial_shapes.flip(-1).to(offsets)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            centers = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centers + offsets / self.num_points * sizes * 0.5
        out = ms_deform_attn(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            backend=self.backend,
        )
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_levels={self.num_levels}, "
            f"num_heads={self.num_heads}, num_points={self.num_points}, backend={self.backend!r}"
        )
