"""Prompt-conditioned mask decoder (the release's "predictor", paper Sec. 3.3 and Fig. 5).

Each prompt's tokens (see :class:`~uniovseg.modeling.prompt_encoder.PromptEncoder`) first go
through one self-attention over the prompt's own tokens, then through layers of

1. masked cross-attention: all tokens of an image attend to one pixel-decoder level (levels
   cycled coarse to fine, 32 -> 16 -> 8), each token only to the pixels inside the union of its
   prompt's previous predicted masks (probability >= 0.5); rows that would mask every pixel
   are left unmasked;
2. self-attention within each prompt's tokens only (sequences of shape [B * P, T, C]: prompts
   never see each other);
3. an FFN.

Predictions (mask logits by dot product with the stride-4 pixel features, and IoU logits) are
made before the first layer and after every layer: ``1 + num_layers`` predictions for deep
supervision. Point prompts use the ``num_multimask_outputs`` granularity tokens (each with its
own mask MLP and IoU MLP, ``mask_embed[1:]`` / ``iou_embed[1:]``); box prompts use the single-mask
token (``mask_embed[0]`` / ``iou_embed[0]``).

The release has 9 layers (10 predictions); the paper says 6 (``num_layers=6``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .position_encoding import PositionEncoding, build_position_encoding
from .prompt_encoder import PROMPT_TYPES, PromptEncoder
from .transformer_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = [
    "DecoderMemory",
    "MaskDecoderOutput",
    "MaskPrediction",
    "PromptMaskDecoder",
    "attention_mask_from_logits",
    "box_cells",
]

logger = logging.getLogger(__name__)


class MaskPrediction(NamedTuple):
    """One prediction of the decoder.

    Attributes:
        mask_logits: [B, P, M, H / 4, W / 4] raw mask logits at the mask-feature stride.
        iou_logits: [B, P, M] raw predicted-IoU logits (apply a sigmoid for a score in [0, 1];
            the release's predictor returns that sigmoid already).
    """

    mask_logits: torch.Tensor
    iou_logits: torch.Tensor


class MaskDecoderOutput(NamedTuple):
    """Output of :class:`PromptMaskDecoder`: the last prediction plus the earlier ones.

    Attributes:
        mask_logits: [B, P, M, H / 4, W / 4] of the last layer. M = num_multimask_outputs (4)
            for point prompts, 1 for box prompts.
        iou_logits: [B, P, M] of the last layer.
        aux_outputs: The ``num_layers`` earlier predictions (before the first layer first), for
            deep supervision; empty when ``return_aux=False``.
    """

    mask_logits: torch.Tensor
    iou_logits: torch.Tensor
    aux_outputs: list[MaskPrediction]


class DecoderMemory(NamedTuple):
    """The prompt-independent part of decoding, from :meth:`PromptMaskDecoder.prepare_memory`.

    Everything here depends on the image only, so it is computed once per image and shared by
    every chunk of prompts (automatic mask generation decodes 400 grid points in chunks; without
    this cache each chunk re-projected every level's keys and values in every layer).

    Attributes:
        mask_features: [B, C, H / 4, W / 4] pixel-decoder mask features (the prompt encoder
            samples content features from them).
        pixel_embeds: [B, C, H / 4, W / 4] mask features after ``feat_embed``: masks are their
            dot product with the mask embeddings.
        level_embeds: ``pixel_embeds`` resized to each attended level, [B, C, h_l, w_l]
            (attention masks).
        key_values: Per decoder layer, the (keys, values) of its cross-attention over its level,
            each [B, heads, h_l * w_l, C / heads].
    """

    mask_features: torch.Tensor
    pixel_embeds: torch.Tensor
    level_embeds: list[torch.Tensor]
    key_values: list[tuple[torch.Tensor, torch.Tensor]]


def attention_mask_from_logits(mask_logits: torch.Tensor) -> torch.Tensor:
    """Where each prompt's tokens may attend: the union of its predicted masks.

    Args:
        mask_logits: [B, P, M, h, w] mask logits at the attended level's resolution.

    Returns:
        bool [B, P, h * w], True where attention is allowed: pixels where any of the prompt's
        M masks has probability >= 0.5 (logit >= 0). A prompt whose masks are all empty may
        attend everywhere (an all-masked softmax row would be undefined).
    """
    allowed = (mask_logits >= 0).any(dim=2).flatten(2)
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty


def box_cells(
    boxes: torch.Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]
) -> torch.Tensor:
    """Cells of an (h, w) grid over the padded frame whose centre lies in each box.

    Args:
        boxes: float [B, P, 4] XYXY in pixels of the padded frame of ``image_size`` (H, W).
        image_size: (H, W) of the padded frame.
        grid_size: (h, w) of the grid (an attended feature level).

    Returns:
        bool [B, P, h * w].
    """
    (height, width), (rows, cols) = image_size, grid_size
    ys = (torch.arange(rows, device=boxes.device, dtype=boxes.dtype) + 0.5) * (height / rows)
    xs = (torch.arange(cols, device=boxes.device, dtype=boxes.dtype) + 0.5) * (width / cols)
    in_x = (xs >= boxes[..., 0:1]) & (xs <= boxes[..., 2:3])  # [B, P, w]
    in_y = (ys >= boxes[..., 1:2]) & (ys <= boxes[..., 3:4])  # [B, P, h]
    return (in_y[..., :, None] & in_x[..., None, :]).flatten(2)


def _limit_to_boxes(
    attn_mask: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    num_tokens: int,
    grid_size: tuple[int, int],
) -> torch.Tensor:
    """Intersects a [B, 1, P * T, h * w] attention mask with each prompt's box cells (see
    ``PromptMaskDecoder(box_attention_in_box=True)``)."""
    cells = box_cells(boxes, image_size, grid_size)
    # A box smaller than a cell of this level holds no cell centre: leave it unlimited here.
    cells = cells | ~cells.any(dim=-1, keepdim=True)
    batch, num_prompts, num_pixels = cells.shape
    cells = cells[:, :, None, :].expand(-1, -1, num_tokens, -1)
    cells = cells.reshape(batch, 1, num_prompts * num_tokens, num_pixels)
    limited = attn_mask & cells
    # Where the predicted masks miss the box entirely, attend to the whole box instead. (Boolean
    # algebra rather than torch.where: onnxruntime has no Where kernel for bool tensors.)
    hit = limited.any(dim=-1, keepdim=True)
    return (hit & limited) | (~hit & cells)


class PromptMaskDecoder(nn.Module):
    """Prompt tokens x multi-scale pixel features -> mask logits and IoU logits per prompt."""

    @configurable
    def __init__(
        self,
        *,
        prompt_encoder: PromptEncoder,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        num_feature_levels: int = 3,
        position_encoding: str = "random",
        box_attention_in_box: bool = False,
    ) -> None:
        """
        Args:
            prompt_encoder: Builds the prompt tokens; its ``embed_dim`` must be ``hidden_dim``.
            hidden_dim: Token and pixel-feature width C.
            num_heads: Attention heads.
            dim_feedforward: Hidden width of the FFNs (2048).
            num_layers: Decoder layers (9 in the release, 6 in the paper); predictions are made
                ``num_layers + 1`` times.
            num_feature_levels: Pixel-decoder levels cycled by the cross-attention (3).
            position_encoding: Positions of the attended pixels, ``"random"`` (release) or
                ``"sine"`` (paper).
            box_attention_in_box: Box prompts attend only inside their box: the masked
                cross-attention's allowed pixels are intersected with the level cells whose
                centre lies in the box (the box alone where the intersection is empty; no box
                limit at a level where no cell centre lies in the box). Not in the paper or the
                release (False): a box says where the object is, and without it a briefly
                trained model locks onto the part at the box centre.
        """
        super().__init__()
        if prompt_encoder.embed_dim != hidden_dim:
            raise ValueError(
                f"prompt encoder width {prompt_encoder.embed_dim} != decoder width {hidden_dim}."
            )
        if num_layers < 0 or num_feature_levels < 1:
            raise ValueError("num_layers must be >= 0 and num_feature_levels >= 1.")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.box_attention_in_box = box_attention_in_box
        self.pe_layer: PositionEncoding = build_position_encoding(position_encoding, hidden_dim)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers)
        )
        self.extra_self_attention_layer = SelfAttentionLayer(hidden_dim, num_heads)
        # Applied to the mask features before the dot product with the mask embeddings.
        self.feat_embed = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)
        self.prompt_encoder = prompt_encoder
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        num_outputs = 1 + prompt_encoder.num_multimask_outputs
        self.mask_embed = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, hidden_dim, 3) for _ in range(num_outputs)
        )
        self.iou_embed = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, 1, 3) for _ in range(num_outputs)
        )

    @classmethod
    def from_config(cls, cfg, num_feature_levels: int = 3) -> dict:
        md = cfg.MODEL.UNIOVSEG.MASK_DECODER
        return {
            "prompt_encoder": PromptEncoder(cfg),
            "hidden_dim": md.HIDDEN_DIM,
            "num_heads": md.NUM_HEADS,
            "dim_feedforward": md.DIM_FEEDFORWARD,
            "num_layers": md.NUM_LAYERS,
            "num_feature_levels": num_feature_levels,
            "position_encoding": md.POSITION_ENCODING,
            "box_attention_in_box": md.BOX_ATTENTION_IN_BOX,
        }

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        boxes: torch.Tensor,
        *,
        prompt_type: str,
        image_size: tuple[int, int],
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = True,
    ) -> MaskDecoderOutput:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps [B, C, h_l, w_l], coarse to fine
                (strides 32, 16, 8), from the pixel decoder.
            mask_features: [B, C, H / 4, W / 4] pixel-decoder mask features.
            boxes: float [B, P, 4] XYXY prompt boxes in pixels of the padded input frame (point
                prompts as small boxes, see ``PromptEncoder.points_to_boxes``).
            prompt_type: ``"point"`` (M = num_multimask_outputs masks each) or ``"box"`` (M = 1).
            image_size: (H, W) of the padded input frame.
            prompt_valid: Optional bool [B, P]; False marks padding prompts. Their boxes are
                replaced by the whole frame, so they give finite (meaningless) outputs, and they
                never affect other prompts. Callers ignore their outputs.
            return_aux: Also return the earlier predictions at full resolution (training);
                False skips them (inference: saves memory and time, same last prediction).

        Returns:
            :class:`MaskDecoderOutput`.

        Memory: the cross-attention is over [B, P * T, h * w] with a boolean mask; with many
        prompts on large inputs, call :meth:`prepare_memory` once and :meth:`decode` on chunks
        of prompts (prompts are independent).
        """
        return self.decode(
            self.prepare_memory(multi_scale_features, mask_features),
            boxes,
            prompt_type=prompt_type,
            image_size=image_size,
            prompt_valid=prompt_valid,
            return_aux=return_aux,
        )

    def prepare_memory(
        self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor
    ) -> DecoderMemory:
        """Pixel-decoder outputs (as in :meth:`forward`) -> :class:`DecoderMemory`."""
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"Expected {self.num_feature_levels} feature levels, got "
                f"{len(multi_scale_features)}."
            )
        memories, memory_pos = [], []
        for level, feature in enumerate(multi_scale_features):
            memories.append(feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level])
            memory_pos.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
        key_values = []
        for index, layer in enumerate(self.transformer_cross_attention_layers):
            level = index % self.num_feature_levels
            key_values.append(layer.project_memory(memories[level], pos=memory_pos[level]))
        pixel_embeds = self.feat_embed(mask_features)  # [B, C, H / 4, W / 4]
        # Attention masks are needed at each level's resolution. Bilinear resizing is linear
        # per channel, so resizing the pixel embeddings and taking the dot product equals
        # resizing the stride-4 mask logits (the release's recipe), at a fraction of the cost.
        level_embeds = [
            F.interpolate(pixel_embeds, size=f.shape[-2:], mode="bilinear", align_corners=False)
            for f in multi_scale_features
        ]
        return DecoderMemory(mask_features, pixel_embeds, level_embeds, key_values)

    def decode(
        self,
        memory: DecoderMemory,
        boxes: torch.Tensor,
        *,
        prompt_type: str,
        image_size: tuple[int, int],
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = True,
    ) -> MaskDecoderOutput:
        """Decodes prompts against a :class:`DecoderMemory`; other arguments as
        :meth:`forward`, whose result this equals."""
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}.")
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [B, P, 4] XYXY, got {tuple(boxes.shape)}.")
        batch, num_prompts, _ = boxes.shape
        if batch != memory.mask_features.shape[0]:
            raise ValueError(
                f"boxes are for {batch} images but the decoder memory holds "
                f"{memory.mask_features.shape[0]}."
            )
        if prompt_valid is not None:
            if prompt_valid.shape != (batch, num_prompts) or prompt_valid.dtype != torch.bool:
                raise ValueError(
                    f"prompt_valid must be bool [{batch}, {num_prompts}], got "
                    f"{prompt_valid.dtype} {tuple(prompt_valid.shape)}."
                )
            frame = boxes.new_tensor([0.0, 0.0, image_size[1], image_size[0]])
            boxes = torch.where(prompt_valid[..., None], boxes, frame)

        tokens = self.prompt_encoder(
            boxes, memory.mask_features, prompt_type=prompt_type, image_size=image_size
        )
        num_tokens = tokens.shape[2]
        # The initial tokens are also the query positions of every layer (as in the release).
        query_pos = tokens.flatten(0, 1)  # [B * P, T, C]
        x = self.extra_self_attention_layer(query_pos)

        predictions: list[MaskPrediction] = []
        attn_mask = None
        for index in range(self.num_layers + 1):
            if index > 0:
                x = (
                    self.transformer_cross_attention_layers[index - 1]
                    .attend_projected(
                        x.reshape(batch, num_prompts * num_tokens, -1),
                        memory.key_values[index - 1],
                        query_pos=query_pos.reshape(batch, num_prompts * num_tokens, -1),
                        attn_mask=attn_mask,
                    )
                    .reshape(batch * num_prompts, num_tokens, -1)
                )
                x = self.transformer_self_attention_layers[index - 1](x, query_pos=query_pos)
                x = self.transformer_ffn_layers[index - 1](x)
            mask_embeds, iou_logits = self._heads(
                x.reshape(batch, num_prompts, num_tokens, -1), prompt_type
            )
            is_last = index == self.num_layers
            if is_last or return_aux:
                mask_logits = torch.einsum("bpmc,bchw->bpmhw", mask_embeds, memory.pixel_embeds)
                predictions.append(MaskPrediction(mask_logits, iou_logits))
            if not is_last:
                level = index % self.num_feature_levels
                attn_mask = self._attention_mask(
                    mask_embeds, memory.level_embeds[level], num_tokens
                )
                if prompt_type == "box" and self.box_attention_in_box:
                    attn_mask = _limit_to_boxes(
                        attn_mask,
                        boxes,
                        image_size,
                        num_tokens,
                        memory.level_embeds[level].shape[-2:],
                    )
        last = predictions[-1]
        return MaskDecoderOutput(last.mask_logits, last.iou_logits, predictions[:-1])

    def _heads(self, x: torch.Tensor, prompt_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P, T, C] tokens -> mask embeddings [B, P, M, C] and IoU logits [B, P, M]."""
        outputs = self.decoder_norm(x)[:, :, self.prompt_encoder.num_corner_tokens :]
        # Output token k (0: single mask, 1..: granularities) has its own MLPs.
        indices = range(1, outputs.shape[2]) if prompt_type == "point" else range(1)
        mask_embeds = torch.stack([self.mask_embed[k](outputs[:, :, k]) for k in indices], dim=2)
        iou_logits = torch.cat([self.iou_embed[k](outputs[:, :, k]) for k in indices], dim=2)
        return mask_embeds, iou_logits

    @staticmethod
    def _attention_mask(
        mask_embeds: torch.Tensor, level_embeds: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        """Bool [B, 1, P * T, h * w] cross-attention mask (True: allowed), shared by the
        T tokens of a prompt and by all heads."""
        with torch.no_grad():
            logits = torch.einsum("bpmc,bchw->bpmhw", mask_embeds, level_embeds)
            allowed = attention_mask_from_logits(logits)  # [B, P, h * w]
        batch, num_prompts, num_pixels = allowed.shape
        allowed = allowed[:, :, None, :].expand(-1, -1, num_tokens, -1)
        return allowed.reshape(batch, 1, num_prompts * num_tokens, num_pixels)
