"""Inference APIs: a segment-anything-shaped predictor and automatic mask generator, image
reading and drawing helpers.

This layer sits on :mod:`uniovseg.modeling` and is never imported by it (the layered import
contract in ``pyproject.toml``, checked by ``lint-imports``). Exports are resolved lazily
(PEP 562) so that ``import uniovseg.inference`` stays cheap (no torch) for code that only
reads images.
"""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "AutomaticMaskGenerator": "uniovseg.inference.automatic_mask_generator_api",
    "automatic_records": "uniovseg.inference.automatic_mask_generator_api",
    "UniOVSegPredictor": "uniovseg.inference.predictor",
    "save_pretrained": "uniovseg.inference.model_bundle",
    "load_pretrained": "uniovseg.inference.model_bundle",
    "export_onnx": "uniovseg.inference.onnx_export",
    "check_onnx_parity": "uniovseg.inference.onnx_parity",
    "PromptPrediction": "uniovseg.inference.predictions",
    "MaskLabels": "uniovseg.inference.predictions",
    "SemanticPrediction": "uniovseg.inference.predictions",
    "PanopticPrediction": "uniovseg.inference.predictions",
    "ConceptPrediction": "uniovseg.inference.predictions",
    "ConceptResult": "uniovseg.inference.predictions",
    "ConceptInstance": "uniovseg.inference.predictions",
    "ResizeLongestSide": "uniovseg.inference.prompts",
    "parse_points": "uniovseg.inference.prompts",
    "parse_boxes": "uniovseg.inference.prompts",
    "read_image": "uniovseg.inference.image_io",
    "to_rgb_uint8": "uniovseg.inference.image_io",
    "ImageReadError": "uniovseg.inference.image_io",
    "collect_image_paths": "uniovseg.inference.image_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
