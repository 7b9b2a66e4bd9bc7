"""Visual prompt encoder: points and boxes -> query tokens of the mask decoder (paper Eq. 2).

Every prompt is an XYXY box (a point becomes a small box around it). Each prompt gives
``2 + 1 + num_multimask_outputs`` tokens (7 by default):

- 2 corner tokens: ``pos_enc(corner) + corner_emb[k] + type_emb + attr_emb[positive] (points
  only) + content``, where ``content`` is the pixel-decoder mask feature bilinearly sampled at
  the box centre (the paper's q^feat) and ``type_emb`` is ``point_emb`` or ``box_emb``;
- 1 single-mask token (``mask_emb[0]``, used for boxes) and ``num_multimask_outputs``
  granularity tokens (``mask_emb[1:]``, used for points), learned and shared by all prompts.

The release uses the same tensor as the decoder's query content and query position; so does
:class:`uniovseg.modeling.mask_decoder.PromptMaskDecoder`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .position_encoding import PositionEncoding, build_position_encoding

__all__ = ["PROMPT_TYPES", "PromptEncoder", "points_to_boxes"]

logger = logging.getLogger(__name__)

PROMPT_TYPES = ("point", "box")

# The release trains and infers on a 1024 x 1024 canvas and turns a point into a box of
# +/- 2 px on it; on other input sizes the margin is scaled with the input so that the box has
# the same size in normalised coordinates (what the position encoding sees).
_REFERENCE_CANVAS = 1024.0


def points_to_boxes(
    points: torch.Tensor, image_size: tuple[int, int], half_size: float = 2.0
) -> torch.Tensor:
    """Turns point prompts into the small anchor boxes the model takes.

    Args:
        points: float [..., 2], (x, y) in input pixels of the padded frame.
        image_size: (H, W) of the padded input frame.
        half_size: Half side of the box in pixels of a 1024 x 1024 canvas (2 in the release);
            scaled by W / 1024 along x and H / 1024 along y.

    Returns:
        float [..., 4] XYXY boxes centred on the points (not clipped to the frame).
    """
    if points.shape[-1] != 2:
        raise ValueError(f"points must end with (x, y), got shape {tuple(points.shape)}.")
    height, width = image_size
    margin = points.new_tensor(
        [half_size * width / _REFERENCE_CANVAS, half_size * height / _REFERENCE_CANVAS]
    )
    return torch.cat([points - margin, points + margin], dim=-1)


class PromptEncoder(nn.Module):
    """Boxes (points as small boxes) + stride-4 pixel features -> [B, P, T, C] prompt tokens."""

    num_corner_tokens = 2

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_multimask_outputs: int = 4,
        position_encoding: str = "random",
        point_box_half_size: float = 2.0,
    ) -> None:
        """
        Args:
            embed_dim: Token width C; equals the pixel decoder's mask-feature channels.
            num_multimask_outputs: Granularity tokens (masks per point prompt); 4 in the release.
            position_encoding: Corner encoding, ``"random"`` (release) or ``"sine"`` (paper).
            point_box_half_size: Half side of the box a point becomes, in pixels of a
                1024 x 1024 canvas (see :func:`points_to_boxes`).
        """
        super().__init__()
        if num_multimask_outputs < 1:
            raise ValueError(f"num_multimask_outputs must be >= 1, got {num_multimask_outputs}.")
        self.embed_dim = embed_dim
        self.num_multimask_outputs = num_multimask_outputs
        self.point_box_half_size = point_box_half_size
        self.pos_emb: PositionEncoding = build_position_encoding(position_encoding, embed_dim)
        self.corner_emb = nn.Parameter(torch.empty(1, self.num_corner_tokens, embed_dim))
        self.point_emb = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.box_emb = nn.Parameter(torch.empty(1, 1, embed_dim))
        # Index 1 marks a positive (foreground) point; index 0 (negative) is kept for
        # checkpoint compatibility, no released path uses it.
        self.attr_emb = nn.Embedding(2, embed_dim)
        self.mask_emb = nn.Parameter(torch.empty(1, 1 + num_multimask_outputs, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) for every embedding (the release's initialisation)."""
        for param in (self.corner_emb, self.point_emb, self.box_emb, self.mask_emb):
            nn.init.normal_(param)
        nn.init.normal_(self.attr_emb.weight)

    @classmethod
    def from_config(cls, cfg) -> dict:
        pe = cfg.MODEL.UNIOVSEG.PROMPT_ENCODER
        return {
            "embed_dim": cfg.MODEL.UNIOVSEG.MASK_DECODER.HIDDEN_DIM,
            "num_multimask_outputs": pe.NUM_MULTIMASK_OUTPUTS,
            "position_encoding": pe.POSITION_ENCODING,
            "point_box_half_size": pe.POINT_BOX_HALF_SIZE,
        }

    @property
    def num_tokens(self) -> int:
        """Tokens per prompt: 2 corners + 1 single-mask + ``num_multimask_outputs``."""
        return self.num_corner_tokens + 1 + self.num_multimask_outputs

    def points_to_boxes(self, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """:func:`points_to_boxes` with this encoder's configured half size."""
        return points_to_boxes(points, image_size, self.point_box_half_size)

    def forward(
        self,
        boxes: torch.Tensor,
        mask_features: torch.Tensor,
        *,
        prompt_type: str,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """
        Args:
            boxes: float [B, P, 4] XYXY in pixels of the padded input frame (continuous
                coordinates: pixel i covers [i, i+1)); points already turned into boxes by
                :meth:`points_to_boxes`.
            mask_features: [B, C, H / 4, W / 4] pixel-decoder mask features covering the
                padded input frame.
            prompt_type: ``"point"`` or ``"box"`` (one type per call).
            image_size: (H, W) of the padded input frame; positions are normalised by it.

        Returns:
            [B, P, T, C] tokens, T = :attr:`num_tokens`: corners first, then the single-mask
            token, then the granularity tokens.
        """
        # The caller (PromptMaskDecoder.decode, the public entry) has validated the prompt type
        # and the shapes.
        batch, num_prompts, _ = boxes.shape
        height, width = image_size
        scale = boxes.new_tensor([width, height]).float()
        # Normalised by the padded input frame; the release divides by its fixed 1024 crop
        # size, which is that frame at its input size. It also adds 0.5 to the corners it
        # encodes (integer pixel indices -> centres) but not to the centre it samples; we take
        # continuous coordinates for both (a sub-pixel difference).
        corners = boxes.float().view(batch, num_prompts, 2, 2) / scale  # normalised (x, y)

        # Content: bilinear sample at the box centre (grid_sample, align_corners=False, so
        # normalised 0 and 1 are the frame's outer edges, matching the corner normalisation).
        centres = corners.mean(dim=2)  # [B, P, 2]
        grid = (2.0 * centres - 1.0).unsqueeze(2).to(mask_features.dtype)  # [B, P, 1, 2]
        content = F.grid_sample(mask_features, grid, mode="bilinear", align_corners=False)
        content = content.squeeze(-1).transpose(1, 2).unsqueeze(2)  # [B, P, 1, C]

        corner_tokens = self.pos_emb.encode_coords(corners) + self.corner_emb + content
        if prompt_type == "point":
            corner_tokens = corner_tokens + self.point_emb + self.attr_emb.weight[1]
        else:
            corner_tokens = corner_tokens + self.box_emb
        mask_tokens = self.mask_emb.expand(batch * num_prompts, -1, -1)
        mask_tokens = mask_tokens.reshape(batch, num_prompts, -1, self.embed_dim)
        return torch.cat([corner_tokens, mask_tokens.to(corner_tokens.dtype)], dim=2)
