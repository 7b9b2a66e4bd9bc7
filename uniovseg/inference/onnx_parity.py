"""Parity of an ONNX export with the PyTorch model, measured with onnxruntime.

:func:`check_onnx_parity` runs one image through both and reports maximum absolute differences:

* the image encoder's outputs (ONNX encoder vs :meth:`UniOVSeg.encode`);
* for each prompt type and prompt count, the decoder alone (the ONNX decoder fed PyTorch's
  memory, vs :meth:`UniOVSeg.decode_prompts`) and end to end (ONNX encoder -> ONNX decoder vs
  PyTorch), with the share of low-resolution mask pixels whose sign (mask or not) differs.

The PyTorch side runs in float32 (no autocast, whatever ``MODEL.UNIOVSEG.TEST.AUTOCAST`` says)
with the model's own deformable-attention backend (the compiled kernel where it is built): the
numbers are the gap a user switching from the PyTorch model to the ONNX graphs sees.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from uniovseg.inference.onnx_export import encoder_input, read_manifest
from uniovseg.inference.onnx_graphs import (
    PROMPT_INPUT_NAMES,
    flatten_memory,
    memory_layout,
    memory_tensor_names,
)

__all__ = [
    "ParityReport",
    "PromptParity",
    "check_onnx_parity",
    "require_onnxruntime",
    "synthetic_image",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPT_COUNTS = (1, 3, 17)


@dataclass(frozen=True)
class PromptParity:
    """ONNX vs PyTorch on ``num_prompts`` prompts of one type.

    Attributes:
        prompt_type: ``"point"`` or ``"box"``.
        num_prompts: P.
        mask_logits_diff: Max |ONNX - PyTorch| of the mask logits, decoder alone.
        iou_logits_diff: Same for the IoU logits.
        end_to_end_mask_logits_diff: Max |ONNX - PyTorch| of the mask logits, ONNX encoder ->
            ONNX decoder vs the PyTorch model.
        end_to_end_iou_logits_diff: Same for the IoU logits.
        mask_sign_mismatch: Share of low-res mask pixels where ``logits > 0`` differs, end to end.
        mask_logits_scale: Max |PyTorch mask logit|, for scale.
    """

    prompt_type: str
    num_prompts: int
    mask_logits_diff: float
    iou_logits_diff: float
    end_to_end_mask_logits_diff: float
    end_to_end_iou_logits_diff: float
    mask_sign_mismatch: float
    mask_logits_scale: float


@dataclass(frozen=True)
class ParityReport:
    """What :func:`check_onnx_parity` measured.

    Attributes:
        image: What was encoded (a path or ``"synthetic"``).
        image_size: (H0, W0) of that image.
        input_size: S of the padded input.
        encoder_diff: Max |ONNX - PyTorch| over every image-encoder output.
        encoder_scale: Max |PyTorch| over those outputs.
        prompts: One row per prompt type and count.
    """

    image: str
    image_size: tuple[int, int]
    input_size: int
    encoder_diff: float
    encoder_scale: float
    prompts: list[PromptParity]

    @property
    def max_decoder_diff(self) -> float:
        """The largest mask or IoU logit difference of the decoders alone."""
        return max(max(r.mask_logits_diff, r.iou_logits_diff) for r in self.prompts)

    @property
    def max_end_to_end_diff(self) -> float:
        """The largest mask or IoU logit difference end to end."""
        return max(
            max(r.end_to_end_mask_logits_diff, r.end_to_end_iou_logits_diff) for r in self.prompts
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        """The report as a plain-text table."""
        lines = [
            f"image {self.image} ({self.image_size[0]}x{self.image_size[1]}, input "
            f"{self.input_size}): encoder max |diff| {self.encoder_diff:.2e} (outputs up to "
            f"{self.encoder_scale:.3g})",
            f"{'prompts':>10} {'P':>3}  {'mask diff':>10} {'IoU diff':>10}  "
            f"{'mask e2e':>10} {'IoU e2e':>10} {'sign flips':>10}  {'|mask| max':>10}",
        ]
        for r in self.prompts:
            lines.append(
                f"{r.prompt_type:>10} {r.num_prompts:>3}  {r.mask_logits_diff:>10.2e} "
                f"{r.iou_logits_diff:>10.2e}  {r.end_to_end_mask_logits_diff:>10.2e} "
                f"{r.end_to_end_iou_logits_diff:>10.2e} {r.mask_sign_mismatch:>10.2e}  "
                f"{r.mask_logits_scale:>10.3g}"
            )
        return "\n".join(lines)


def synthetic_image(height: int = 96, width: int = 160) -> np.ndarray:
    """A deterministic uint8 [H, W, 3] test picture: colour ramps and a disc."""
    yy, xx = np.mgrid[0:height, 0:width]
    picture = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    disc = (yy - height // 2) ** 2 + (xx - width // 3) ** 2 < (min(height, width) // 4) ** 2
    picture[disc] = (200, 40, 120)
    return picture.astype(np.uint8)


def check_onnx_parity(
    model,
    export_dir: str,
    *,
    image: np.ndarray | None = None,
    image_name: str = "synthetic",
    prompt_counts: tuple[int, ...] = DEFAULT_PROMPT_COUNTS,
    seed: int = 0,
) -> ParityReport:
    """Runs an image and random prompts through an export and the PyTorch model.

    Args:
        model: The exported :class:`~uniovseg.modeling.meta_arch.UniOVSeg`.
        export_dir: The folder :func:`~uniovseg.inference.onnx_export.export_onnx` wrote.
        image: uint8 [H, W, 3] RGB; None: :func:`synthetic_image`.
        image_name: What ``image`` is, for the report.
        prompt_counts: Prompt counts P to decode, each with each prompt type.
        seed: Seed of the random prompts (inside the image's valid region).

    Raises:
        ModuleNotFoundError: onnxruntime is not installed.
        FileNotFoundError, ValueError: not an export folder; an export of another model layout
            or input size.
    """
    ort = require_onnxruntime()
    manifest = read_manifest(export_dir)
    model.eval()
    size = model.test_input_size
    names = memory_tensor_names(*memory_layout(model))
    encoder_outputs = [o["name"] for o in manifest["image_encoder"]["outputs"]]
    if manifest["input_size"] != size or encoder_outputs != names:
        raise ValueError(
            f"{export_dir!r} was exported from another model (input size "
            f"{manifest['input_size']}, {len(encoder_outputs)} memory tensors; this model: "
            f"{size}, {len(names)}): export this model again"
        )
    if any(c < 1 for c in prompt_counts):
        raise ValueError(f"prompt counts must be >= 1, got {list(prompt_counts)}")
    image = synthetic_image() if image is None else image

    def session(entry: dict):
        path = os.path.join(export_dir, entry["file"])
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    pixels, frame = encoder_input(model, image)
    encoded = session(manifest["image_encoder"]).run(None, {"image": pixels})
    onnx_memory = dict(zip(names, encoded, strict=True))
    with torch.no_grad():
        images = model.normalize(torch.from_numpy(pixels[0]))[None]
        encoding = model.encode(images, [frame])
    torch_memory = {
        name: t.float().cpu().numpy()
        for name, t in zip(names, flatten_memory(encoding.decoder_memory), strict=True)
    }
    encoder_diff = max(_max_diff(onnx_memory[n], torch_memory[n]) for n in names)
    encoder_scale = max(float(np.abs(torch_memory[n]).max()) for n in names)

    rng = np.random.default_rng(seed)
    rows = []
    for prompt_type, entry in manifest["decoders"].items():
        decoder = session(entry)
        wanted = [i["name"] for i in entry["inputs"][1:]]
        input_name = PROMPT_INPUT_NAMES[prompt_type]
        for count in prompt_counts:
            prompts = _random_prompts(rng, prompt_type, count, frame.valid_size)
            with torch.no_grad():
                batch = torch.from_numpy(prompts)[None].to(model.device)
                reference = model.decode_prompts(encoding, batch, prompt_type=prompt_type)
            ref_masks = reference.mask_logits[0].float().cpu().numpy()
            ref_ious = reference.iou_logits[0].float().cpu().numpy()
            alone = decoder.run(None, {input_name: prompts, **{n: torch_memory[n] for n in wanted}})
            chained = decoder.run(
                None, {input_name: prompts, **{n: onnx_memory[n] for n in wanted}}
            )
            rows.append(
                PromptParity(
                    prompt_type=prompt_type,
                    num_prompts=count,
                    mask_logits_diff=_max_diff(alone[0], ref_masks),
                    iou_logits_diff=_max_diff(alone[1], ref_ious),
                    end_to_end_mask_logits_diff=_max_diff(chained[0], ref_masks),
                    end_to_end_iou_logits_diff=_max_diff(chained[1], ref_ious),
                    mask_sign_mismatch=float(np.mean((chained[0] > 0) != (ref_masks > 0))),
                    mask_logits_scale=float(np.abs(ref_masks).max()),
                )
            )
    return ParityReport(
        image=image_name,
        image_size=(int(image.shape[0]), int(image.shape[1])),
        input_size=size,
        encoder_diff=encoder_diff,
        encoder_scale=encoder_scale,
        prompts=rows,
    )


def require_onnxruntime():
    """The ``onnxruntime`` module; ModuleNotFoundError saying what to install when missing."""
    try:
        import onnxruntime
    except ImportError:
        raise ModuleNotFoundError(
            "checking an ONNX export needs onnxruntime: pip install onnxruntime"
        ) from None
    return onnxruntime


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"ONNX output {a.shape} and PyTorch output {b.shape} differ in shape")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _random_prompts(
    rng: np.random.Generator, prompt_type: str, count: int, valid_size: tuple[int, int]
) -> np.ndarray:
    """float32 [count, 2 | 4] points or boxes inside the valid region (padded-frame pixels)."""
    height, width = valid_size
    scale = np.array([width, height], dtype=np.float64)
    if prompt_type == "point":
        return (rng.uniform(0.05, 0.95, (count, 2)) * scale).astype(np.float32)
    corners = rng.uniform(0.0, 1.0, (count, 2, 2)) * scale
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
