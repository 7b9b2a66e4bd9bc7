"""The stage-1 segmentation head: pixel decoder + prompt mask decoder.

Its attribute names give the checkpoint layout of the release: ``sem_seg_head.pixel_decoder.*``
and ``sem_seg_head.predictor.*`` when the meta-architecture stores it as ``sem_seg_head``.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .mask_decoder import DecoderMemory, MaskDecoderOutput, PromptMaskDecoder
from .pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderOutput

__all__ = ["SegmentationHead"]


class SegmentationHead(nn.Module):
    """Backbone features + prompt boxes -> per-prompt mask and IoU logits.

    Run :meth:`forward_features` once per image batch and :meth:`forward_prompts` on as many
    chunks of prompts as memory requires, or :meth:`forward` for both at once. Many chunks of
    the same images: pass :meth:`prepare_prompt_memory`'s result instead of the pixel features,
    so that the prompt-independent work is done once.
    """

    @configurable
    def __init__(
        self, *, pixel_decoder: MSDeformAttnPixelDecoder, predictor: PromptMaskDecoder
    ) -> None:
        """
        Args:
            pixel_decoder: Backbone features -> mask features + multi-scale features.
            predictor: The prompt mask decoder; its width must equal the pixel decoder's
                ``conv_dim`` and ``mask_dim``.
        """
        super().__init__()
        if not pixel_decoder.conv_dim == pixel_decoder.mask_dim == predictor.hidden_dim:
            raise ValueError(
                f"PIXEL_DECODER.CONV_DIM ({pixel_decoder.conv_dim}), PIXEL_DECODER.MASK_DIM "
                f"({pixel_decoder.mask_dim}) and MASK_DECODER.HIDDEN_DIM "
                f"({predictor.hidden_dim}) must be equal: the decoder attends to the pixel "
                "features and adds sampled mask features to its tokens."
            )
        num_levels = len(pixel_decoder.transformer_in_features)
        if predictor.num_feature_levels != num_levels:
            raise ValueError(
                f"The predictor cycles {predictor.num_feature_levels} levels but the pixel "
                f"decoder outputs {num_levels}."
            )
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        """
        Args:
            cfg: A config with :func:`uniovseg.config.add_uniovseg_config` applied.
            input_shape: Backbone output shapes by name (res2..res5).
        """
        num_levels = len(cfg.MODEL.UNIOVSEG.PIXEL_DECODER.TRANSFORMER_IN_FEATURES)
        return {
            "pixel_decoder": MSDeformAttnPixelDecoder(cfg, input_shape),
            "predictor": PromptMaskDecoder(cfg, num_feature_levels=num_levels),
        }

    def forward_features(self, features: dict[str, torch.Tensor]) -> PixelDecoderOutput:
        """Backbone features by name -> :class:`PixelDecoderOutput` (prompt independent)."""
        return self.pixel_decoder.forward_features(features)

    def prepare_prompt_memory(self, pixel_features: PixelDecoderOutput) -> DecoderMemory:
        """Pixel features -> the decoder's prompt-independent :class:`DecoderMemory`."""
        return self.predictor.prepare_memory(
            pixel_features.multi_scale_features, pixel_features.mask_features
        )

    def forward_prompts(
        self,
        pixel_features: PixelDecoderOutput | DecoderMemory,
        boxes: torch.Tensor,
        *,
        prompt_type: str,
        image_size: tuple[int, int],
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = True,
    ) -> MaskDecoderOutput:
        """Decodes prompts against precomputed pixel features or decoder memory; arguments as
        :meth:`PromptMaskDecoder.forward`."""
        if isinstance(pixel_features, PixelDecoderOutput):
            pixel_features = self.prepare_prompt_memory(pixel_features)
        return self.predictor.decode(
            pixel_features,
            boxes,
            prompt_type=prompt_type,
            image_size=image_size,
            prompt_valid=prompt_valid,
            return_aux=return_aux,
        )

    def forward(
        self,
        features: dict[str, torch.Tensor],
        boxes: torch.Tensor,
        *,
        prompt_type: str,
        image_size: tuple[int, int],
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = True,
    ) -> MaskDecoderOutput:
        """
        Args:
            features: Backbone maps by name (res2..res5), [B, C_name, H / s, W / s].
            boxes: float [B, P, 4] XYXY prompt boxes in pixels of the padded input frame.
            prompt_type: ``"point"`` or ``"box"``.
            image_size: (H, W) of the padded input frame.
            prompt_valid: Optional bool [B, P], False for padding prompts.
            return_aux: Return the earlier predictions for deep supervision.

        Returns:
            :class:`~uniovseg.modeling.mask_decoder.MaskDecoderOutput`.
        """
        return self.forward_prompts(
            self.forward_features(features),
            boxes,
            prompt_type=prompt_type,
            image_size=image_size,
            prompt_valid=prompt_valid,
            return_aux=return_aux,
        )
