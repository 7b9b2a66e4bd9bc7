"""ONNX export: the image encoder and the prompt decoders as ONNX graphs, with a manifest that
tells an onnxruntime (or onnxruntime-web) user how to feed them.

An export is a folder of four files::

    image_encoder.onnx   image [1, 3, S, S] (padded RGB, 0-255) -> the decoder memory tensors
    point_decoder.onnx   points [P, 2] + memory -> mask_logits [P, M, S/4, S/4], iou_logits [P, M]
    box_decoder.onnx     boxes [P, 4] + memory  -> mask_logits [P, 1, S/4, S/4], iou_logits [P, 1]
    uniovseg_onnx.json   the manifest: every input and output (name, shape, dtype, meaning), the
                         frames, the preprocessing (resize, padding, normalisation) and the
                         post-processing

The split is SAM's: the encoder runs once per image, the decoders once per batch of prompts,
with a dynamic number of prompts P. A decoder's inputs besides the prompts are encoder outputs
of the same name; feed them by name. Points and boxes get one graph each, because the model
decodes them differently (a point gives M multi-granularity masks from its own tokens and heads,
a box one mask), exactly as :meth:`UniOVSeg.decode_prompts` does with its ``prompt_type``; a
prompt is one positive point or one box (the model has no negative points and no combined
prompts).

The exporter is torch's TorchScript tracer (``torch.onnx.export(..., dynamo=False)``): it
exports the whole model in seconds. torch's default dynamo exporter fails on the image encoder
(the deformable attention's input checks read the level table's values:
``GuardOnDataDependentSymNode: Could not guard on data-dependent expression``) and takes minutes
even for the decoders. The deformable attention runs its PyTorch path while exporting
(:func:`~uniovseg.inference.onnx_graphs.pytorch_deform_attn`). Graphs are float32.
"""

from __future__ import annotations

import json
import logging
import os
import warnings

import numpy as np
import torch

from uniovseg.atomic_files import atomic_folder, check_replaceable_folder
from uniovseg.inference.onnx_graphs import (
    PROMPT_INPUT_NAMES,
    PROMPT_WIDTHS,
    ImageEncoderGraph,
    PromptDecoderGraph,
    memory_layout,
    memory_tensor_names,
    pytorch_deform_attn,
)
from uniovseg.modeling.image_frame import ImageFrame
from uniovseg.modeling.image_preprocessing import resize_and_pad

__all__ = [
    "DECODER_FILES",
    "check_opset",
    "DEFAULT_OPSET",
    "ENCODER_FILE",
    "MANIFEST_FILE",
    "PARITY_FILE",
    "encoder_input",
    "export_onnx",
    "read_manifest",
    "require_onnx",
]

logger = logging.getLogger(__name__)

ENCODER_FILE = "image_encoder.onnx"
DECODER_FILES = {"point": "point_decoder.onnx", "box": "box_decoder.onnx"}
MANIFEST_FILE = "uniovseg_onnx.json"
# Written beside the graphs by `tools/export_onnx.py --check`.
PARITY_FILE = "parity.json"
EXPORT_FILES = (ENCODER_FILE, *DECODER_FILES.values(), MANIFEST_FILE, PARITY_FILE)
MANIFEST_FORMAT = "uniovseg-onnx"
MANIFEST_VERSION = 1
DEFAULT_OPSET = 17
# GridSample (the deformable attention's and the prompt encoder's sampling) is opset 16; 20 is
# the newest opset of torch's TorchScript exporter.
MIN_OPSET, MAX_OPSET = 16, 20
# Prompts in the example inputs that the graphs are traced with: neither 0 nor 1 (sizes that
# tracers may treat as special), and none of the counts the tests check.
_EXAMPLE_PROMPTS = 5
_ONNX_DTYPES = {1: "float32", 7: "int64", 9: "bool", 10: "float16"}


def export_onnx(model, output_dir: str, *, opset: int = DEFAULT_OPSET, source: str = "") -> dict:
    """Exports a model's image encoder and prompt decoders to ``output_dir``.

    Example::

        predictor = UniOVSegPredictor.from_pretrained("bundles/stage1", device="cpu")
        manifest = export_onnx(predictor.model, "onnx/stage1")

    Args:
        model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` (put in eval mode). Its
            deformable attention runs its PyTorch path during the export and is restored after.
        output_dir: The export folder: new, empty, or an earlier export (replaced as a whole).
        opset: ONNX opset, 16-20.
        source: Where the model comes from (a bundle folder, a config), for the manifest.

    Returns:
        The manifest (also written as ``uniovseg_onnx.json``).

    Raises:
        ValueError: an opset outside 16-20; not a UniOVSeg model.
        FileExistsError: ``output_dir`` is a file, or a folder holding other files.
        ModuleNotFoundError: the ``onnx`` package is not installed.
    """
    check_opset(opset)
    if not hasattr(model, "decode_prompts") or not hasattr(model, "sem_seg_head"):
        raise ValueError(f"export_onnx takes a UniOVSeg model, got {type(model).__name__}")
    onnx = require_onnx()
    check_replaceable_folder(output_dir, known_files=EXPORT_FILES, kind="an ONNX export")
    model.eval()
    size = model.test_input_size
    # A smooth gradient: any image traces the same graph (no control flow depends on values).
    ramp = torch.linspace(0.0, 255.0, size, device=model.device)
    grey = torch.full((size, size), 128.0, device=model.device)
    image = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), grey])
    image = image[None]
    with torch.no_grad(), pytorch_deform_attn(model), atomic_folder(output_dir) as folder:
        encoder = ImageEncoderGraph(model)
        memory = encoder(image)
        memory_names = memory_tensor_names(*memory_layout(model))
        encoder_path = os.path.join(folder, ENCODER_FILE)
        _export(encoder, (image,), encoder_path, ["image"], memory_names, opset, dynamic_axes=None)
        decoders = {}
        for prompt_type, file_name in DECODER_FILES.items():
            prompts = _example_prompts(prompt_type, size).to(model.device)
            input_name = PROMPT_INPUT_NAMES[prompt_type]
            path = os.path.join(folder, file_name)
            dynamic = {
                name: {0: "num_prompts"} for name in (input_name, "mask_logits", "iou_logits")
            }
            _export(
                PromptDecoderGraph(model, prompt_type),
                (prompts, *memory),
                path,
                [input_name, *memory_names],
                ["mask_logits", "iou_logits"],
                opset,
                dynamic_axes=dynamic,
            )
            decoders[prompt_type] = _graph_entry(onnx, path, file_name)
        encoder_entry = _graph_entry(onnx, encoder_path, ENCODER_FILE)
        manifest = _manifest(model, encoder_entry, decoders, opset=int(opset), source=source)
        with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.write("\n")
    logger.info("Exported the ONNX graphs to %s", os.path.abspath(output_dir))
    return manifest


def read_manifest(export_dir: str) -> dict:
    """The manifest of an export folder.

    Raises:
        FileNotFoundError: no such folder, or no manifest in it (not an export).
        ValueError: a manifest of another format or version.
    """
    path = os.path.join(export_dir, MANIFEST_FILE)
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"the ONNX export folder {export_dir!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{export_dir!r} holds no {MANIFEST_FILE}: not an ONNX export of uniovseg (write one "
            "with tools/export_onnx.py)"
        )
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path!r} is not a version-{MANIFEST_VERSION} {MANIFEST_FORMAT} manifest; export again"
        )
    return manifest


def encoder_input(model, image: np.ndarray) -> tuple[np.ndarray, ImageFrame]:
    """The image encoder's input for an image: the model's test resize and padding, in numpy.

    What an ONNX user does before the encoder (the manifest's ``preprocessing`` says it in
    words): the same :func:`~uniovseg.modeling.image_preprocessing.resize_and_pad` as
    :meth:`UniOVSeg.preprocess_image`, without the normalisation, which the graph does.

    Args:
        model: The exported model (its test resize and pad value are used).
        image: uint8 [H, W, 3] RGB.

    Returns:
        (float32 [1, 3, S, S] RGB in 0-255, the image's frame).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
    frame = model.inference_frame(image.shape[:2])
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    padded = resize_and_pad(pixels, frame, pad_value=model.pad_value)
    return padded.numpy().astype(np.float32)[None], frame


def check_opset(opset: int) -> None:
    """Raises ValueError for an opset the export cannot write (outside 16-20)."""
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: use {MIN_OPSET}-{MAX_OPSET} (GridSample needs 16; "
            f"{MAX_OPSET} is the newest opset of torch's TorchScript exporter)"
        )


def require_onnx():
    """The ``onnx`` module; ModuleNotFoundError saying what to install when it is missing."""
    try:
        import onnx
    except ImportError:
        raise ModuleNotFoundError(
            "ONNX export needs the onnx package: pip install onnx (and onnxruntime to check the "
            "exported graphs)"
        ) from None
    return onnx


# ---------------------------------------------------------------------- internals
def _example_prompts(prompt_type: str, size: int) -> torch.Tensor:
    """[_EXAMPLE_PROMPTS, 2 | 4] prompts spread over an S x S frame (padded-frame pixels)."""
    centres = torch.linspace(0.2, 0.8, _EXAMPLE_PROMPTS) * size
    points = torch.stack([centres, centres.flip(0)], dim=-1)
    if PROMPT_WIDTHS[prompt_type] == 2:
        return points
    half = 0.1 * size
    return torch.cat([points - half, points + half], dim=-1)


def _export(module, args, path, input_names, output_names, opset, *, dynamic_axes) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo exporter, which cannot
        # export the encoder (see the module docstring). The tracer warns at every shape check
        # of the model's input validation: shapes other than the prompt count are fixed in these
        # graphs, and the parity check runs several prompt counts through them.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        # ... and calls a deprecated logging helper of its own.
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            path,
            dynamo=False,
            opset_version=int(opset),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _graph_entry(onnx, path: str, file_name: str) -> dict:
    """The file and the inputs/outputs (name, shape, dtype) of an exported graph, read back
    from it: the tracer drops inputs that the graph does not read (e.g. the attention level of
    a layer that does not exist), so the file, not the wrapper, says what to feed."""
    graph = onnx.load(path, load_external_data=False).graph

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        dtype = _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))
        return {"name": value.name, "shape": shape, "dtype": dtype}

    return {
        "file": file_name,
        "inputs": [describe(v) for v in graph.input],
        "outputs": [describe(v) for v in graph.output],
    }


def _manifest(model, encoder: dict, decoders: dict, *, opset: int, source: str) -> dict:
    size = model.test_input_size
    mask_logits = decoders["point"]["outputs"][0]["shape"]
    stride = size // int(mask_logits[-1])
    resize = model.test_resize
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": source,
        "exporter": {
            "torch": torch.__version__,
            "method": "torch.onnx.export(dynamo=False), the TorchScript tracer",
            "opset": opset,
            "dtype": "float32",
        },
        "usage": [
            "resize and pad the image as 'preprocessing' says: the encoder's 'image' input",
            "run image_encoder.onnx once per image",
            "map the prompts into the padded frame ('frames', 'prompts')",
            "run point_decoder.onnx (points) or box_decoder.onnx (boxes): its inputs besides the "
            "prompts are image_encoder outputs of the same name (a decoder may read a subset)",
            "post-process mask_logits and iou_logits as 'postprocessing' says",
        ],
        "image_encoder": encoder,
        "decoders": {
            prompt_type: {**entry, "masks_per_prompt": model.num_mask_outputs(prompt_type)}
            for prompt_type, entry in decoders.items()
        },
        "input_size": size,
        "preprocessing": {
            "description": model.describe_test_resize(),
            "resize_mode": resize["resize_mode"],
            "resize_rule": (
                "longest_side: scale = S / max(H0, W0); shortest_edge: scale = min_size / "
                "min(H0, W0), then capped so that the longest side is <= max_size; each side "
                "becomes int(side * scale + 0.5), at least 1 (detectron2's ResizeShortestEdge)"
            ),
            "min_size": resize["min_size"],
            "max_size": resize["max_size"],
            "interpolation": "bilinear on the uint8 image (PIL, antialiased when shrinking)",
            "pad": "the resized image at the top-left of an S x S canvas, the rest pad_value",
            "pad_value": model.pad_value,
            "layout": "float32 [1, 3, S, S], RGB, values 0-255 (not normalised)",
            "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in model.pixel_std.flatten()],
            "normalization": "inside image_encoder.onnx: (image - pixel_mean) / pixel_std",
        },
        "frames": {
            "original": "(H0, W0): the image as given",
            "valid": "(h, w): the resized image, top-left in the padded frame",
            "padded": "(S, S): the encoder input; prompts and mask logits are in this frame",
            "prompts": (
                "pixels of the padded frame: x = x0 * w / W0, y = y0 * h / H0 for a point "
                "(x0, y0) of the original image; points (x, y), boxes (x1, y1, x2, y2); each "
                "row is one prompt (one positive point or one box)"
            ),
        },
        "postprocessing": {
            "mask_stride": stride,
            "mask_logits": (
                f"[P, M, S/{stride}, S/{stride}] logits over the padded frame; to the original "
                "image (the release's rule): bilinear resize to (S, S), bilinear resize to "
                "(L, L) with L = max(H0, W0), keep [:H0, :W0] (align_corners=false), "
                "mask = logits > 0. When the resized image does not fill the input (h and w "
                "both < S, shortest_edge resizing): resize to (S, S), keep [:h, :w], resize to "
                "(H0, W0)"
            ),
            "iou_logits": "[P, M]; sigmoid gives the predicted IoU of each mask",
            "box_masks_inside_box": bool(model.box_masks_inside_box),
            "box_masks_inside_box_note": (
                "when true, the PyTorch model clears a box prompt's mask outside its box "
                "after resizing to the original image; the graphs return the logits as predicted"
            ),
        },
    }
