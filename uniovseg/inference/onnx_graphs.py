"""The model's inference steps as modules with flat tensor inputs and outputs, for ONNX export.

An ONNX graph takes and returns named tensors, while :meth:`UniOVSeg.encode` returns an
:class:`~uniovseg.modeling.image_encoding.ImageEncoding` whose prompt-decoder memory
(:class:`~uniovseg.modeling.mask_decoder.DecoderMemory`) is a structure of lists and pairs. The
wrappers here only translate between the two; the computation is the model's own:

* :class:`ImageEncoderGraph`: padded RGB pixels -> :meth:`UniOVSeg.normalize` ->
  :meth:`UniOVSeg.encode` -> the decoder memory as flat tensors (:func:`memory_tensor_names`);
* :class:`PromptDecoderGraph`: prompts of one type + those tensors ->
  :meth:`UniOVSeg.decode_prompts` -> mask logits and IoU logits.

The dense CLIP map and the pixel decoder's multi-scale features of the encoding are not
outputs: prompt decoding reads only the decoder memory (open-vocabulary classification, which
reads the CLIP map, is not exported).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from uniovseg.layers.ms_deform_attn import MSDeformAttn
from uniovseg.modeling.image_encoding import ImageEncoding
from uniovseg.modeling.mask_decoder import DecoderMemory
from uniovseg.modeling.pixel_decoder import PixelDecoderOutput

__all__ = [
    "PROMPT_INPUT_NAMES",
    "PROMPT_WIDTHS",
    "ImageEncoderGraph",
    "PromptDecoderGraph",
    "flatten_memory",
    "memory_layout",
    "memory_tensor_names",
    "pytorch_deform_attn",
    "unflatten_memory",
]

# Width of one prompt row: (x, y) points, (x1, y1, x2, y2) boxes.
PROMPT_WIDTHS = {"point": 2, "box": 4}
# Graph input name of each prompt type's [P, width] tensor.
PROMPT_INPUT_NAMES = {"point": "points", "box": "boxes"}


def memory_tensor_names(num_levels: int, num_layers: int) -> list[str]:
    """Names of a decoder memory's tensors, in the order of :func:`flatten_memory`.

    ``mask_features``, ``pixel_embeds``, ``level_embeds_{l}`` for each attended level l, then
    ``keys_{i}``, ``values_{i}`` for each decoder layer i.
    """
    names = ["mask_features", "pixel_embeds"]
    names += [f"level_embeds_{level}" for level in range(num_levels)]
    for layer in range(num_layers):
        names += [f"keys_{layer}", f"values_{layer}"]
    return names


def flatten_memory(memory: DecoderMemory) -> tuple[torch.Tensor, ...]:
    """A :class:`DecoderMemory` as the flat tuple named by :func:`memory_tensor_names`."""
    pairs = [tensor for key_value in memory.key_values for tensor in key_value]
    return (memory.mask_features, memory.pixel_embeds, *memory.level_embeds, *pairs)


def unflatten_memory(
    tensors: tuple[torch.Tensor, ...], num_levels: int, num_layers: int
) -> DecoderMemory:
    """The inverse of :func:`flatten_memory`."""
    expected = 2 + num_levels + 2 * num_layers
    assert len(tensors) == expected, f"{len(tensors)} memory tensors, expected {expected}"
    levels = list(tensors[2 : 2 + num_levels])
    pairs = tensors[2 + num_levels :]
    key_values = [(pairs[2 * i], pairs[2 * i + 1]) for i in range(num_layers)]
    return DecoderMemory(tensors[0], tensors[1], levels, key_values)


def memory_layout(model) -> tuple[int, int]:
    """(attended levels, decoder layers) of a UniOVSeg model's decoder memory."""
    predictor = model.sem_seg_head.predictor
    return predictor.num_feature_levels, predictor.num_layers


@contextmanager
def pytorch_deform_attn(model: nn.Module) -> Iterator[None]:
    """Within the block, every deformable-attention module of ``model`` runs its PyTorch path.

    The compiled kernels (``uniovseg._C``) are opaque to the ONNX exporter; the PyTorch path
    (``F.grid_sample`` per level, :func:`~uniovseg.layers.ms_deform_attn.ms_deform_attn`)
    computes the same function with ONNX operators (``GridSample``, opset 16+).
    """
    modules = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    backends = [m.backend for m in modules]
    for module in modules:
        module.backend = "pytorch"
    try:
        yield
    finally:
        for module, backend in zip(modules, backends, strict=True):
            module.backend = backend


class ImageEncoderGraph(nn.Module):
    """Padded RGB pixels -> the prompt decoder's memory of the image, as flat tensors."""

    def __init__(self, model) -> None:
        """
        Args:
            model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` in eval mode.
        """
        super().__init__()
        self.model = model
        size = model.test_input_size
        # A square frame: encode() needs frames only to carry them into the encoding.
        self.frame = model.inference_frame((size, size))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Args:
            image: float32 [1, 3, S, S] RGB in 0-255: the image resized into the top-left
                ``valid_size`` of the frame and padded with the model's grey (not normalised).

        Returns:
            The tensors named by :func:`memory_tensor_names`.
        """
        images = self.model.normalize(image[0])[None]
        return flatten_memory(self.model.encode(images, [self.frame]).decoder_memory)


class PromptDecoderGraph(nn.Module):
    """Prompts of one type + the image's decoder memory -> mask logits and IoU logits."""

    def __init__(self, model, prompt_type: str) -> None:
        """
        Args:
            model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` in eval mode.
            prompt_type: ``"point"`` or ``"box"``.
        """
        super().__init__()
        if prompt_type not in PROMPT_WIDTHS:
            raise ValueError(
                f"prompt_type must be one of {sorted(PROMPT_WIDTHS)}, got {prompt_type!r}"
            )
        self.model = model
        self.prompt_type = prompt_type
        self.num_levels, self.num_layers = memory_layout(model)
        size = model.test_input_size
        self.frame = model.inference_frame((size, size))

    def forward(
        self, prompts: torch.Tensor, *memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            prompts: float32 [P, 2] points (x, y) or [P, 4] boxes (x1, y1, x2, y2), in pixels of
                the padded S x S frame; each row is one prompt.
            memory: The tensors named by :func:`memory_tensor_names` (the image encoder's
                outputs).

        Returns:
            ``mask_logits`` [P, M, S / 4, S / 4] over the padded frame and ``iou_logits``
            [P, M]; M = the multi-mask outputs for points, 1 for boxes.
        """
        decoder_memory = unflatten_memory(memory, self.num_levels, self.num_layers)
        # decode_prompts reads the decoder memory and the padded frame only; the dense CLIP
        # map and the multi-scale features are not inputs of this graph (empty placeholders).
        mask_features = decoder_memory.mask_features
        encoding = ImageEncoding(
            clip_dense=mask_features.new_zeros(0),
            pixel_features=PixelDecoderOutput(mask_features, []),
            decoder_memory=decoder_memory,
            frames=(self.frame,),
        )
        out = self.model.decode_prompts(encoding, prompts[None], prompt_type=self.prompt_type)
        return out.mask_logits[0], out.iou_logits[0]
