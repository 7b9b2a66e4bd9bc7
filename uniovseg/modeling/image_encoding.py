"""What the network computes from a batch of test images once.

:class:`ImageEncoding` is the output of :meth:`~uniovseg.modeling.meta_arch.UniOVSeg.encode`:
the backbone's dense CLIP map, the pixel decoder's features and the prompt decoder's
prompt-independent memory of a batch of padded inputs, with their frames. Every later step
(prompt decoding, automatic masks, region embeddings, classification) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .image_frame import ImageFrame
from .mask_decoder import DecoderMemory
from .pixel_decoder import PixelDecoderOutput

__all__ = ["ImageEncoding"]


@dataclass(frozen=True)
class ImageEncoding:
    """The image-dependent computation of a batch of B padded inputs, done once.

    Attributes:
        clip_dense: [B, C, S / 32, S / 32] dense CLIP map (``"clip_vis_dense"``), for region
            embeddings.
        pixel_features: The pixel decoder's output (mask features and multi-scale features).
        decoder_memory: The prompt decoder's prompt-independent memory of ``pixel_features``,
            shared by every chunk of prompts.
        frames: One :class:`ImageFrame` per image.
    """

    clip_dense: torch.Tensor
    pixel_features: PixelDecoderOutput
    decoder_memory: DecoderMemory
    frames: tuple[ImageFrame, ...]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame(self) -> ImageFrame:
        """The frame of a single-image encoding."""
        if len(self.frames) != 1:
            raise ValueError(f"this encoding holds {len(self.frames)} images; select one first")
        return self.frames[0]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(S, S) of the padded inputs (the frame of prompts and low-res logits)."""
        return self.frames[0].padded_size

    def select(self, index: int) -> ImageEncoding:
        """The encoding of image ``index`` alone (views, no copy)."""
        one = slice(index, index + 1)
        memory = self.decoder_memory
        return ImageEncoding(
            clip_dense=self.clip_dense[one],
            pixel_features=PixelDecoderOutput(
                self.pixel_features.mask_features[one],
                [f[one] for f in self.pixel_features.multi_scale_features],
            ),
            decoder_memory=DecoderMemory(
                mask_features=memory.mask_features[one],
                pixel_embeds=memory.pixel_embeds[one],
                level_embeds=[e[one] for e in memory.level_embeds],
                key_values=[(k[one], v[one]) for k, v in memory.key_values],
            ),
            frames=(self.frames[index],),
        )
