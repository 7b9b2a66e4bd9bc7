"""Multi-scale deformable-attention pixel decoder (Mask2Former's, with the release's choices).

The coarsest backbone levels (res3..res5 by default) are projected to ``conv_dim`` channels and
refined jointly by a stack of deformable-attention encoder layers (Deformable DETR); the finer
levels (res2) join through an FPN step; a 1x1 convolution gives the stride-4 mask features.

Where the paper and the release differ, the defaults follow the release so that its checkpoint
loads (``sem_seg_head.pixel_decoder.*``): input projections are 1x1 conv + channel LayerNorm
(the paper says GroupNorm: ``input_proj_norm="GN"``) and positions are random Fourier features
(the paper says sine: ``position_encoding="sine"``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from ..layers.ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEncoding, build_position_encoding

__all__ = [
    "MSDeformAttnEncoderLayer",
    "MSDeformAttnPixelDecoder",
    "MSDeformAttnTransformerEncoder",
    "PixelDecoderOutput",
]

logger = logging.getLogger(__name__)


class PixelDecoderOutput(NamedTuple):
    """Output of :meth:`MSDeformAttnPixelDecoder.forward_features`.

    Attributes:
        mask_features: [B, mask_dim, H / s, W / s] per-pixel embeddings at the common stride s
            (4), the features masks are predicted from.
        multi_scale_features: The encoder's levels, coarse to fine (strides 32, 16, 8 by
            default), each [B, conv_dim, h_l, w_l]: the keys of the mask decoder's cross-attention.
    """

    mask_features: torch.Tensor
    multi_scale_features: list[torch.Tensor]


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_levels: int = 3,
        num_heads: int = 8,
        num_points: int = 4,
        deform_attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(
            embed_dim=embed_dim,
            num_levels=num_levels,
            num_heads=num_heads,
            num_points=num_points,
            backend=deform_attn_backend,
        )
        self.norm1 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            src: [B, S, C] flattened features of all levels.
            pos: [B, S, C] positional + level embeddings (added to the queries only).
            reference_points: [B, S, L, 2] normalised (x, y) of each query on every level.
            spatial_shapes: int64 [L, 2], (h, w) per level.
            level_start_index: int64 [L].

        Returns:
            [B, S, C].
        """
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index
        )
        src = self.norm1(src + self.dropout(attended))
        hidden = self.dropout(F.relu(self.linear1(src), inplace=True))
        return self.norm2(src + self.dropout(self.linear2(hidden)))


class _EncoderLayers(nn.Module):
    """Holds the encoder layers (gives the checkpoint names ``encoder.layers.{i}``)."""

    def __init__(self, layers: list[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class MSDeformAttnTransformerEncoder(nn.Module):
    """Level embeddings + a stack of deformable encoder layers over several feature levels."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_levels: int = 3,
        num_points: int = 4,
        deform_attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dim))
        layers = [
            MSDeformAttnEncoderLayer(
                embed_dim=embed_dim,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                num_levels=num_levels,
                num_heads=num_heads,
                num_points=num_points,
                deform_attn_backend=deform_attn_backend,
            )
            for _ in range(num_layers)
        ]
        self.encoder = _EncoderLayers(layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix, then the deformable-attention init, N(0, 1) levels."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs: L maps [B, C, h_l, w_l].
            pos_embeds: L positional encodings broadcastable to the maps ([1 or B, C, h_l, w_l]).

        Returns:
            memory: [B, S, C], the refined levels flattened and concatenated (S = sum h_l w_l).
            spatial_shapes: int64 [L, 2], (h_l, w_l).
        """
        batch = srcs[0].shape[0]
        flat_src, flat_pos, refs, shapes = [], [], [], []
        for level, (src, pos) in enumerate(zip(srcs, pos_embeds, strict=True)):
            height, width = src.shape[-2:]
            shapes.append((height, width))
            flat_src.append(src.flatten(2).transpose(1, 2))
            pos = pos.expand(batch, -1, -1, -1).flatten(2).transpose(1, 2)
            flat_pos.append(pos + self.level_embed[level].view(1, 1, -1))
            # Reference points: pixel centres normalised by the level's size (no padding masks:
            # detectron2 pads with zeros, the release does not mask them either).
            ys = (torch.arange(height, device=src.device, dtype=src.dtype) + 0.5) / height
            xs = (torch.arange(width, device=src.device, dtype=src.dtype) + 0.5) / width
            refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=srcs[0].device)
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]]
        )
        src = torch.cat(flat_src, dim=1)
        pos = torch.cat(flat_pos, dim=1)
        # Every query samples every level around its own normalised position.
        reference_points = torch.cat(refs, dim=0)[None, :, None, :].expand(batch, -1, len(srcs), -1)
        for layer in self.encoder.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src, spatial_shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features res2..res5 -> stride-4 mask features + 3 refined levels."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        transformer_in_features: list[str],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        input_proj_norm: str = "LN",
        position_encoding: str = "random",
        num_encoder_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        common_stride: int = 4,
        deform_attn_backend: str = "auto",
    ) -> None:
        """
        Args:
            input_shape: Backbone outputs used, name -> ShapeSpec(channels, stride), e.g.
                res2..res5 with strides 4..32.
            transformer_in_features: Names refined by the deformable encoder (res3..res5).
            conv_dim: Channels of every internal map and of ``multi_scale_features``.
            mask_dim: Channels of ``mask_features``.
            norm: Norm of the FPN convolutions (``"GN"``: GroupNorm with 32 groups).
            input_proj_norm: Norm after the encoder's 1x1 input projections: ``"LN"`` (channel
                LayerNorm, eps 1e-6, the release) or ``"GN"`` (the paper).
            position_encoding: ``"random"`` (the release) or ``"sine"`` (the paper).
            num_encoder_layers: Deformable encoder layers (6).
            num_heads: Deformable-attention heads.
            num_points: Sampling points per head and level.
            dim_feedforward: Hidden width of the encoder FFNs (1024).
            dropout: Dropout in the encoder (0 in the release).
            common_stride: Stride of ``mask_features``; backbone levels finer than the encoder's
                and at least this stride join through FPN steps.
            deform_attn_backend: Implementation of the deformable-attention op (see
                :class:`uniovseg.layers.ms_deform_attn.MSDeformAttn`).
        """
        super().__init__()
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise ValueError(
                f"transformer_in_features {missing} are not backbone outputs "
                f"{sorted(input_shape)}; fix MODEL.UNIOVSEG.PIXEL_DECODER.TRANSFORMER_IN_FEATURES."
            )
        if input_proj_norm not in ("LN", "GN"):
            raise ValueError(f"input_proj_norm must be 'LN' or 'GN', got {input_proj_norm!r}.")
        # Coarse to fine: input_proj.0 is the stride-32 level (checkpoint order).
        self.transformer_in_features = sorted(
            transformer_in_features, key=lambda name: -input_shape[name].stride
        )
        min_stride = min(input_shape[name].stride for name in transformer_in_features)
        # Fine to coarse: adapter_1 / layer_1 is the finest FPN level (checkpoint names).
        self.fpn_features = sorted(
            (
                name
                for name, spec in input_shape.items()
                if name not in transformer_in_features and common_stride <= spec.stride < min_stride
            ),
            key=lambda name: input_shape[name].stride,
        )
        strides = [input_shape[name].stride for name in self.fpn_features] or [min_stride]
        if strides[0] != common_stride:
            raise ValueError(
                f"No backbone output has the common stride {common_stride} (FPN levels: "
                f"{self.fpn_features}); add it to the backbone outputs or change COMMON_STRIDE."
            )
        self.common_stride = common_stride
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim

        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features:
            proj = nn.Sequential(
                nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1),
                get_norm(input_proj_norm, conv_dim),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        self.transformer = MSDeformAttnTransformerEncoder(
            embed_dim=conv_dim,
            num_heads=num_heads,
            num_layers=num_encoder_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_levels=len(self.transformer_in_features),
            num_points=num_points,
            deform_attn_backend=deform_attn_backend,
        )
        self.pe_layer: PositionEncoding = build_position_encoding(position_encoding, conv_dim)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        for index, name in enumerate(self.fpn_features, start=1):
            lateral = Conv2d(
                input_shape[name].channels,
                conv_dim,
                kernel_size=1,
                bias=not norm,
                norm=get_norm(norm, conv_dim),
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{index}", lateral)
            self.add_module(f"layer_{index}", output)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        pd = cfg.MODEL.UNIOVSEG.PIXEL_DECODER
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in pd.IN_FEATURES},
            "transformer_in_features": list(pd.TRANSFORMER_IN_FEATURES),
            "conv_dim": pd.CONV_DIM,
            "mask_dim": pd.MASK_DIM,
            "norm": pd.NORM,
            "input_proj_norm": pd.INPUT_PROJ_NORM,
            "position_encoding": pd.POSITION_ENCODING,
            "num_encoder_layers": pd.NUM_ENCODER_LAYERS,
            "num_heads": pd.NUM_HEADS,
            "num_points": pd.NUM_POINTS,
            "dim_feedforward": pd.DIM_FEEDFORWARD,
            "dropout": pd.DROPOUT,
            "common_stride": pd.COMMON_STRIDE,
            "deform_attn_backend": pd.DEFORM_ATTN_BACKEND,
        }

    def forward_features(self, features: dict[str, torch.Tensor]) -> PixelDecoderOutput:
        """
        Args:
            features: Backbone maps by name, each [B, C_name, H / stride, W / stride]; must
                contain every transformer input and FPN level.

        Returns:
            :class:`PixelDecoderOutput` (mask features at the common stride, the encoder's levels
            coarse to fine).
        """
        needed = self.transformer_in_features + self.fpn_features
        missing = [name for name in needed if name not in features]
        if missing:
            raise ValueError(f"Missing backbone features {missing}; got {sorted(features)}.")
        device_type = features[needed[0]].device.type
        # The deformable encoder runs in float32 even under AMP (as Mask2Former does): the
        # sampling offsets and the attention softmax are sensitive to half precision.
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos_embeds = [], []
            for proj, name in zip(self.input_proj, self.transformer_in_features, strict=True):
                src = proj(features[name].float())
                srcs.append(src)
                pos_embeds.append(self.pe_layer(src))
            memory, spatial_shapes = self.transformer(srcs, pos_embeds)
        batch = memory.shape[0]
        sizes = [int(h * w) for h, w in spatial_shapes.tolist()]
        # [B, h * w, C] chunks -> [B, C, h, w] views in channels-last layout. (A reshape of
        # the transposed chunk gives the same values but odd strides, which send the FPN's
        # bilinear upsampling down a path 5x slower: 200 ms at a 1024 input on 2 CPU threads.)
        levels = [
            chunk.reshape(batch, h, w, self.conv_dim).permute(0, 3, 1, 2)
            for chunk, (h, w) in zip(
                memory.split(sizes, dim=1), spatial_shapes.tolist(), strict=True
            )
        ]
        out = levels[-1]  # finest encoder level
        # FPN: from the finest encoder level down to the common stride.
        for index in range(len(self.fpn_features), 0, -1):
            lateral = getattr(self, f"adapter_{index}")(features[self.fpn_features[index - 1]])
            out = lateral + F.interpolate(
                out, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            out = getattr(self, f"layer_{index}")(out)
        return PixelDecoderOutput(
            mask_features=self.mask_features(out), multi_scale_features=levels
        )

    def forward(self, features: dict[str, torch.Tensor]) -> PixelDecoderOutput:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
