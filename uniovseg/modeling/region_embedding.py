"""Region embeddings: CLIP features pooled under masks and projected into CLIP space.

Paper Eq. 5: ``r_i = F_v(P(x^v, m_i))``: mask pooling ``P`` of the frozen CLIP dense map ``x^v``
followed by CLIP's visual projector ``F_v`` (for the ConvNeXt CLIP: the trunk head's LayerNorm
and the visual head). With the multi-scale feature adapter (Appendix A), the "advanced" region
embedding is ``r'_i = F_v(P(x^v, m_i) + sum_s P(Delta_s, m_i))`` where ``Delta_s`` is the adapter's
residual computed from pixel-decoder features at scale s (see
:mod:`uniovseg.modeling.feature_adapter`). Pooling is linear, so each residual is pooled at its own
resolution and added in pooled space, before the (non-linear) projector.

Masks at any resolution are brought to a feature map's resolution by *area* resizing (the
fraction of each feature cell that a mask covers; exact average pooling for the usual integer
stride ratios), not by bilinear sampling, so that a small mask between feature-cell centres still
pools the cells it covers.

These functions serve both stage-2 training (matching and the alignment loss) and
open-vocabulary inference (classifying the automatic masks): see
:meth:`uniovseg.modeling.meta_arch.UniOVSeg.region_embeddings`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "clip_dense_at_sizes",
    "embed_regions",
    "mask_pool",
    "project_pooled",
    "resize_masks",
]

# Lower bound of a mask's total weight: an empty mask pools to zeros, never NaN.
_MIN_MASK_WEIGHT = 1e-6


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes soft masks to a feature resolution by area averaging.

    Args:
        masks: float [B, N, H, W] masks with values in [0, 1].
        size: (h, w) of the target feature map.

    Returns:
        float [B, N, h, w]: each cell holds the mean mask value over the input pixels it covers
        (area interpolation); bilinear when upsampling. The input itself when sizes match.
    """
    if masks.dim() != 4:
        raise ValueError(f"resize_masks expects masks [B, N, H, W], got {tuple(masks.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks
    if masks.shape[1] == 0:
        return masks.new_zeros((masks.shape[0], 0, *size))
    if size[0] <= masks.shape[-2] and size[1] <= masks.shape[-1]:
        return F.interpolate(masks, size=size, mode="area")
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask-weighted average of a feature map (paper Eq. 5's ``P``).

    Args:
        features: [B, C, h, w].
        masks: [B, N, h, w] soft masks at the features' resolution (see :func:`resize_masks`).

    Returns:
        [B, N, C]: ``sum_p m(p) x(p) / sum_p m(p)``; an empty mask gives zeros.
    """
    if features.shape[0] != masks.shape[0] or features.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"mask_pool: masks {tuple(masks.shape)} must match the batch and size of features "
            f"{tuple(features.shape)}; resize them with resize_masks first"
        )
    masks = masks.to(features.dtype)
    pooled = torch.einsum("bnhw,bchw->bnc", masks, features)
    return pooled / masks.sum(dim=(-2, -1)).clamp(min=_MIN_MASK_WEIGHT).unsqueeze(-1)


def project_pooled(backbone, pooled: torch.Tensor) -> torch.Tensor:
    """CLIP's visual projector ``F_v`` applied to pooled dense features.

    The ConvNeXt trunk head pools globally and normalises; on a 1x1 map its pooling is the
    identity, so feeding it each pooled vector applies exactly its norm (and any pre-logits),
    then the visual head projects into the joint space. This is the second half of
    ``CLIPConvNeXtBackbone.embed_regions`` (the tests check that both agree).

    Args:
        backbone: A :class:`~uniovseg.modeling.clip_backbone.CLIPConvNeXtBackbone`.
        pooled: [B, N, C] pooled ``clip_vis_dense`` features.

    Returns:
        [B, N, D] region embeddings, not normalised. Differentiable w.r.t. ``pooled``.
    """
    batch, num, channels = pooled.shape
    visual = backbone.clip_model.visual
    x = visual.trunk.forward_head(pooled.reshape(batch * num, channels, 1, 1))
    x = visual.head(x.flatten(1))
    return x.reshape(batch, num, x.shape[-1])  # explicit: num may be 0


def embed_regions(
    backbone,
    dense_features: torch.Tensor,
    masks: torch.Tensor,
    *,
    adapter=None,
    adapter_features: dict[str, torch.Tensor] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Region embeddings ``r_i`` (Eq. 5) or, with an adapter, ``r'_i`` (Appendix A).

    Args:
        backbone: The CLIP backbone (for its projector).
        dense_features: [B, C, h, w] CLIP dense map (``"clip_vis_dense"``).
        masks: [B, N, H, W] soft masks in [0, 1] covering the same (padded) frame as the
            features, at any resolution.
        adapter: Optional :class:`~uniovseg.modeling.feature_adapter.MultiScaleFeatureAdapter`;
            its pooled residual is added before the projector.
        adapter_features: The adapter's inputs by name (required with ``adapter``), e.g. from
            ``adapter.select_features(pixel_decoder_output)``.
        normalize: L2-normalise the embeddings.

    Returns:
        [B, N, D] embeddings in CLIP space.
    """
    if dense_features.dim() != 4 or masks.dim() != 4 or masks.shape[0] != dense_features.shape[0]:
        raise ValueError(
            "embed_regions expects dense_features [B, C, h, w] and masks [B, N, H, W] with the "
            f"same B, got {tuple(dense_features.shape)} and {tuple(masks.shape)}"
        )
    masks = masks.to(dense_features.dtype)
    pooled = mask_pool(dense_features, resize_masks(masks, dense_features.shape[-2:]))
    if adapter is not None:
        if adapter_features is None:
            raise ValueError("embed_regions: pass adapter_features together with the adapter")
        pooled = pooled + adapter(adapter_features, masks)
    embeds = project_pooled(backbone, pooled)
    return F.normalize(embeds, dim=-1) if normalize else embeds


@torch.no_grad()
def clip_dense_at_sizes(
    backbone,
    images: torch.Tensor,
    sizes: tuple[int, ...],
    *,
    known: dict[int, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The CLIP dense map of the same (padded, square) images at several input sizes.

    The multi-scale ensemble (paper Eq. 7) re-runs the frozen CLIP on the image resized to each
    size. Resizing the whole padded canvas is the same as resizing the image and padding it,
    since the padding is bottom/right and scales with it; masks in the canvas frame therefore
    stay valid at every size.

    Args:
        backbone: The CLIP backbone.
        images: Normalised [B, 3, S, S].
        sizes: Input sides, multiples of the backbone's ``size_divisibility``.
        known: Dense maps already computed, by input side (e.g. the training pass at S).

    Returns:
        One [B, C, size / 32, size / 32] map per entry of ``sizes``.
    """
    known = dict(known or {})
    out = []
    for size in sizes:
        size = int(size)
        if size % backbone.size_divisibility:
            raise ValueError(
                f"ensemble input size {size} must be a multiple of {backbone.size_divisibility}"
            )
        if size not in known:
            resized = images
            if tuple(images.shape[-2:]) != (size, size):
                resized = F.interpolate(
                    images,
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=size < images.shape[-1],
                )
            known[size] = backbone(resized)["clip_vis_dense"]
        out.append(known[size])
    return out
