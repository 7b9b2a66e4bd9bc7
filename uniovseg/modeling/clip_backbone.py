"""The frozen open_clip ConvNeXt CLIP as a detectron2 backbone, region embedder and text encoder.

One open_clip model serves three roles (paper Sec. 3): its image tower gives the multi-scale
features of the pixel decoder (res2..res5) and the dense map that CLIP regions are pooled from;
mask pooling followed by the tower's head gives region embeddings in CLIP space (paper Eq. 5);
its text tower embeds class names and captions. Everything stays frozen.

open_clip's ConvNeXt CLIP (e.g. ``convnext_large_d_320``) has ``visual.trunk``, a timm ConvNeXt
(``stem``, ``stages[0..3]``, ``norm_pre``, ``head``: pool -> LayerNorm -> flatten), and
``visual.head``, the MLP/linear projection into the joint space. The model is kept as the
attribute ``clip_model`` so parameter names (``backbone.clip_model.*``) match the authors'
checkpoint.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from . import region_embedding
from .clip_text_encoding import can_skip_padding, encode_text_tokens, pooled_token_positions
from .open_clip_loading import load_open_clip

logger = logging.getLogger(__name__)

__all__ = ["CLIPConvNeXtBackbone", "build_clip_backbone", "load_open_clip"]

# Names of the four ConvNeXt stage outputs, in stage order (strides 4, 8, 16, 32).
_STAGE_NAMES = ("res2", "res3", "res4", "res5")
# Name of the dense CLIP map (trunk norm_pre output, the input of the CLIP head).
DENSE_FEATURE_NAME = "clip_vis_dense"
# CLIP's learned temperature is clamped at 100 (as in CLIP training and FC-CLIP inference).
_MAX_LOGIT_SCALE = 100.0


@BACKBONE_REGISTRY.register()
class CLIPConvNeXtBackbone(Backbone):
    """Frozen open_clip ConvNeXt CLIP: multi-scale features, region embeddings, text embeddings.

    The whole module is frozen: no parameter requires grad, it stays in eval mode whatever
    ``train()`` is called with, and :meth:`forward` runs under ``torch.no_grad()``.
    :meth:`embed_regions` is differentiable with respect to its inputs (masks and dense features),
    so losses on region embeddings train the modules that produce those inputs.
    """

    @configurable
    def __init__(self, *, model_name: str, pretrained: str, text_chunk_size: int = 256):
        """
        Args:
            model_name: open_clip model config name whose vision tower is a timm ConvNeXt, e.g.
                ``"convnext_large_d_320"`` or the packaged ``"uniovseg_tiny_convnext"``.
            pretrained: ``""`` (random weights), an open_clip tag, or a local weights file; see
                :func:`~uniovseg.modeling.open_clip_loading.load_open_clip`.
            text_chunk_size: :meth:`encode_text` runs the text tower on at most this many texts
                at a time, to bound memory.
        """
        super().__init__()
        if text_chunk_size < 1:
            raise ValueError(f"text_chunk_size must be >= 1, got {text_chunk_size}.")
        import open_clip

        clip_model = load_open_clip(model_name, pretrained)
        trunk = getattr(getattr(clip_model, "visual", None), "trunk", None)
        if (
            trunk is None
            or not all(hasattr(trunk, a) for a in ("stem", "stages", "norm_pre", "feature_info"))
            or len(trunk.stages) != len(_STAGE_NAMES)
        ):
            raise ValueError(
                f"open_clip model {model_name!r} has no timm ConvNeXt vision trunk "
                "(visual.trunk.stem, 4 stages, norm_pre); CLIPConvNeXtBackbone needs a ConvNeXt "
                "CLIP such as 'convnext_large_d_320'."
            )
        self.clip_model = clip_model
        self.clip_model.requires_grad_(False)
        self._model_name = model_name
        self._text_chunk_size = text_chunk_size
        self._embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])
        self._tokenizer = open_clip.get_tokenizer(model_name)

        stage_info = dict(zip(_STAGE_NAMES, trunk.feature_info[-len(_STAGE_NAMES) :], strict=True))
        self._out_features = [*_STAGE_NAMES, DENSE_FEATURE_NAME]
        self._out_feature_channels = {n: i["num_chs"] for n, i in stage_info.items()}
        self._out_feature_strides = {n: i["reduction"] for n, i in stage_info.items()}
        self._out_feature_channels[DENSE_FEATURE_NAME] = trunk.num_features
        self._out_feature_strides[DENSE_FEATURE_NAME] = stage_info[_STAGE_NAMES[-1]]["reduction"]
        self.train(False)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec | None = None) -> dict:
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(
                f"CLIPConvNeXtBackbone takes RGB images; got {input_shape.channels} input channels "
                "(check MODEL.PIXEL_MEAN / MODEL.PIXEL_STD, which must have 3 entries)."
            )
        return {
            "model_name": cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME,
            "pretrained": cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED,
            "text_chunk_size": cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE,
        }

    # ------------------------------------------------------------------ properties
    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of the coarsest stride (32) for exact stride ratios."""
        return self._out_feature_strides[_STAGE_NAMES[-1]]

    @property
    def embed_dim(self) -> int:
        """Dimension D of the joint image-text space (768 for convnext_large_d_320)."""
        return self._embed_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's temperature, ``exp(logit_scale)`` clamped at 100: a float scalar tensor."""
        return self.clip_model.logit_scale.detach().exp().clamp(max=_MAX_LOGIT_SCALE)

    @property
    def tokenizer(self):
        """The model's own open_clip tokenizer: ``list[str] -> LongTensor [T, context_length]``."""
        return self._tokenizer

    def train(self, mode: bool = True) -> CLIPConvNeXtBackbone:
        """Ignores ``mode``: the frozen CLIP always runs in eval mode (no drop-path, no dropout)."""
        return super().train(False)

    # ------------------------------------------------------------------ image tower
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the ConvNeXt trunk without gradients.

        Args:
            images: float tensor [B, 3, H, W], normalised with CLIP's pixel mean/std; H and W
                should be multiples of :attr:`size_divisibility` (32).

        Returns:
            ``"res2"``, ``"res3"``, ``"res4"``, ``"res5"``: the stage outputs [B, C_i, H/s, W/s]
            with strides s = 4, 8, 16, 32 (192/384/768/1536 channels for convnext_large), and
            ``"clip_vis_dense"``: the trunk's ``norm_pre`` output [B, C_5, H/32, W/32], the
            input of the CLIP head (identical to res5 when ``norm_pre`` is the identity). Every
            map is contiguous (NCHW strides).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"CLIPConvNeXtBackbone expects images of shape [B, 3, H, W], got "
                f"{tuple(images.shape)}."
            )
        trunk = self.clip_model.visual.trunk
        outputs = {}
        with torch.no_grad():
            x = trunk.stem(images)
            for name, stage in zip(_STAGE_NAMES, trunk.stages, strict=True):
                x = stage(x)
                # timm's ConvNeXt blocks return channels-last strides; the release hands the
                # pixel decoder contiguous maps, and the decoder's kernels then sum in its order
                # (with channels-last maps the converted release drifted 10x further from it).
                outputs[name] = x.contiguous()
            outputs[DENSE_FEATURE_NAME] = trunk.norm_pre(x).contiguous()
        return outputs

    def embed_regions(self, dense_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Embeds mask regions into CLIP space by mask pooling (paper Eq. 5).

        Each mask's weighted average of the dense map goes through the CLIP trunk head
        (LayerNorm) and the visual head (projection), exactly as CLIP's global average pool does
        for the whole image: a mask of ones gives ``clip_model.encode_image``. Differentiable
        with respect to both inputs; no gradient reaches the frozen weights. The one
        implementation is :func:`uniovseg.modeling.region_embedding.embed_regions`; this checks
        the inputs against this backbone and skips the normalisation.

        Args:
            dense_features: [B, C, h, w] dense CLIP map (``"clip_vis_dense"`` of :meth:`forward`,
                possibly adapted), C = ``output_shape()["clip_vis_dense"].channels``.
            masks: [B, N, H, W] float soft masks with values in [0, 1], at any resolution;
                resized to (h, w) by area averaging (see ``region_embedding.resize_masks``). An
                empty mask yields the embedding of an all-zero feature (finite, never NaN).

        Returns:
            [B, N, D] region embeddings, D = :attr:`embed_dim`, not L2-normalised.
        """
        if dense_features.dim() != 4 or masks.dim() != 4:
            raise ValueError(
                "embed_regions expects dense_features [B, C, h, w] and masks [B, N, H, W], got "
                f"{tuple(dense_features.shape)} and {tuple(masks.shape)}."
            )
        expected_channels = self._out_feature_channels[DENSE_FEATURE_NAME]
        if (
            dense_features.shape[1] != expected_channels
            or masks.shape[0] != dense_features.shape[0]
        ):
            raise ValueError(
                f"embed_regions: dense_features {tuple(dense_features.shape)} must have "
                f"{expected_channels} channels and masks {tuple(masks.shape)} the same batch size."
            )
        return region_embedding.embed_regions(self, dense_features, masks, normalize=False)

    # ------------------------------------------------------------------ text tower
    def encode_text(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor:
        """Embeds texts with the CLIP text tower, ``text_chunk_size`` texts at a time.

        Runs under ``torch.no_grad()``: text embeddings are constants of the frozen model.

        Args:
            texts: T strings (prompts, captions or entity names); tokenised with the model's own
                tokenizer and truncated to its context length.
            normalize: L2-normalise each embedding (the usual input of cosine-similarity logits).

        Returns:
            [T, D] float embeddings on the model's device ([0, D] for an empty list).
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("encode_text expects a list of strings, e.g. ['a photo of a cat.'].")
        device = self.clip_model.logit_scale.device
        if not texts:
            return torch.zeros(0, self.embed_dim, device=device)
        with torch.no_grad():
            tokens = self._tokenizer(list(texts)).to(device)
            if not can_skip_padding(self.clip_model):
                chunks = [
                    self.clip_model.encode_text(chunk, normalize=normalize)
                    for chunk in tokens.split(self._text_chunk_size)
                ]
                return torch.cat(chunks)
            # Texts sorted by length, so that each chunk stops at its own longest text.
            positions = pooled_token_positions(self.clip_model, tokens)
            order = torch.argsort(positions, stable=True)
            embeds = None
            for chunk in order.split(self._text_chunk_size):
                chunk_embeds = encode_text_tokens(self.clip_model, tokens[chunk], positions[chunk])
                if embeds is None:
                    embeds = chunk_embeds.new_empty((len(texts), chunk_embeds.shape[-1]))
                embeds[chunk] = chunk_embeds
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def output_shape(self) -> dict[str, ShapeSpec]:
        """ShapeSpec(channels, stride) of res2..res5 and clip_vis_dense."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def build_clip_backbone(cfg, input_shape: ShapeSpec | None = None) -> CLIPConvNeXtBackbone:
    """Builds the backbone from ``cfg.MODEL.UNIOVSEG.CLIP``; what detectron2's ``build_backbone``
    does when ``MODEL.BACKBONE.NAME == "CLIPConvNeXtBackbone"``."""
    return CLIPConvNeXtBackbone(cfg, input_shape)
