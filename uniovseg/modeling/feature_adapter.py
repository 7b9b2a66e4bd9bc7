"""Multi-scale feature adapter (paper Appendix A, Fig. 6): one LoRA adapter per feature scale.

The paper feeds "the multi-scale visual features and the CLIP visual features" into an adapter
made of LoRA adapters (linear A, a non-linearity, linear B), one per scale, to get the advanced
region embeddings ``r'_i``; the release has no stage-2 code, so the wiring below is our design:

* Inputs: the pixel decoder's outputs, which stage 1 trained to separate regions: the
  multi-scale features (``multi_scale_0/1/2``: strides 32, 16, 8 by default, ``conv_dim``
  channels) and the stride-4 ``mask_features`` (``mask_dim`` channels).
* Per scale s: ``Delta_s = B_s(act(A_s(x_s)))``, a residual in the CLIP dense space (C channels of
  ``clip_vis_dense``), rank r (release: 8), A a per-pixel linear map (1x1 conv), B linear without
  bias, **initialised to zero** so that stage 2 starts exactly from the baseline (raw CLIP
  pooling).
* Output: the residual pooled under each mask,
  ``sum_s P(Delta_s, m_i) = sum_s B_s P(act(A_s x_s), m_i)``. B is linear and mask pooling is a
  normalised weighted average, so B is applied after pooling the rank-r map: identical to
  pooling the C-channel residual (C = 1536 for ConvNeXt-L) but without ever building it. Each
  scale is pooled at its own resolution, so the stride-4 adapter sees mask detail that the
  stride-32 CLIP map cannot. The caller adds this to ``P(x^v, m_i)`` before CLIP's projector
  (:func:`uniovseg.modeling.region_embedding.embed_regions`).
"""

from __future__ import annotations

import math

import torch
from detectron2.config import configurable
from torch import nn

from .pixel_decoder import PixelDecoderOutput
from .region_embedding import mask_pool, resize_masks

__all__ = ["LoRAAdapter", "MultiScaleFeatureAdapter", "adapter_feature_names"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
MASK_FEATURES = "mask_features"
_MULTI_SCALE_PREFIX = "multi_scale_"


def adapter_feature_names(num_multi_scale_levels: int) -> list[str]:
    """Names of the pixel-decoder outputs the adapter can take, coarse to fine:
    ``multi_scale_0`` .. ``multi_scale_{L-1}``, then ``mask_features``."""
    return [f"{_MULTI_SCALE_PREFIX}{i}" for i in range(num_multi_scale_levels)] + [MASK_FEATURES]


class LoRAAdapter(nn.Module):
    """``x [B, C_in, h, w] -> act(A x)`` per pixel, and ``B`` (zero-initialised) on pooled
    vectors: the two halves of one low-rank adapter."""

    def __init__(
        self, in_channels: int, out_channels: int, *, rank: int = 8, activation: str = "gelu"
    ) -> None:
        """
        Args:
            in_channels: Channels of the adapted feature map.
            out_channels: Channels of the residual (the CLIP dense map's).
            rank: Width r of the bottleneck (release: 8).
            activation: Non-linearity between A and B: "gelu", "relu" or "silu".
        """
        super().__init__()
        if rank < 1:
            raise ValueError(f"MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.RANK must be >= 1, got {rank}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"ADAPTER.ACTIVATION={activation!r}: use one of {sorted(_ACTIVATIONS)}"
            )
        self.down = nn.Conv2d(in_channels, rank, kernel_size=1)  # A
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, out_channels, bias=False)  # B
        # LoRA's initialisation: A as an ordinary layer, B = 0 (the adapter starts as identity).
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, h, w] -> [B, r, h, w]: ``act(A x)``."""
        return self.act(self.down(x))


class MultiScaleFeatureAdapter(nn.Module):
    """One :class:`LoRAAdapter` per pixel-decoder feature scale; outputs the pooled residual."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        out_channels: int,
        rank: int = 8,
        activation: str = "gelu",
    ) -> None:
        """
        Args:
            in_channels: Adapted feature name -> channels, names from
                :func:`adapter_feature_names` (e.g. ``{"multi_scale_0": 256, ...,
                "mask_features": 256}``).
            out_channels: Channels C of the CLIP dense map (``clip_vis_dense``).
            rank: LoRA rank (release: 8).
            activation: Non-linearity between A and B.
        """
        super().__init__()
        if not in_channels:
            raise ValueError("MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.IN_FEATURES must not be empty")
        self.in_features = list(in_channels)
        self.adapters = nn.ModuleDict(
            {
                name: LoRAAdapter(channels, out_channels, rank=rank, activation=activation)
                for name, channels in in_channels.items()
            }
        )
        self.out_channels = int(out_channels)

    @classmethod
    def from_config(cls, cfg, clip_dense_channels: int) -> dict:
        """
        Args:
            cfg: A config with the uniovseg keys.
            clip_dense_channels: Channels of the backbone's ``clip_vis_dense``.
        """
        pd = cfg.MODEL.UNIOVSEG.PIXEL_DECODER
        known = adapter_feature_names(len(pd.TRANSFORMER_IN_FEATURES))
        names = list(cfg.MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.IN_FEATURES)
        unknown = [n for n in names if n not in known]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.IN_FEATURES={names}: use distinct names from "
                f"{known} (the pixel decoder's outputs)"
            )
        return {
            "in_channels": {n: pd.MASK_DIM if n == MASK_FEATURES else pd.CONV_DIM for n in names},
            "out_channels": clip_dense_channels,
            "rank": cfg.MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.RANK,
            "activation": cfg.MODEL.UNIOVSEG.ALIGNMENT.ADAPTER.ACTIVATION,
        }

    def select_features(self, pixel_features: PixelDecoderOutput) -> dict[str, torch.Tensor]:
        """Picks the adapted maps out of a pixel-decoder output, by name."""
        available = {
            f"{_MULTI_SCALE_PREFIX}{i}": f
            for i, f in enumerate(pixel_features.multi_scale_features)
        }
        available[MASK_FEATURES] = pixel_features.mask_features
        missing = [n for n in self.in_features if n not in available]
        if missing:
            raise ValueError(
                f"the pixel decoder output has no {missing}; it has {sorted(available)}"
            )
        return {n: available[n] for n in self.in_features}

    def forward(self, features: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """Pooled residual ``sum_s B_s P(act(A_s x_s), m)``.

        Args:
            features: Adapted maps by name, each [B, C_in, h_s, w_s] over the same padded
                frame as the masks (see :meth:`select_features`).
            masks: [B, N, H, W] soft masks in [0, 1], any resolution.

        Returns:
            [B, N, C] residual to add to the pooled CLIP dense features (zeros at
            initialisation, exactly).
        """
        total = None
        for name, adapter in self.adapters.items():
            hidden = adapter.hidden(features[name])
            pooled = mask_pool(hidden, resize_masks(masks.to(hidden.dtype), hidden.shape[-2:]))
            residual = adapter.up(pooled)
            total = residual if total is None else total + residual
        return total
