"""Per-stage and end-to-end inference timing of :class:`~uniovseg.modeling.meta_arch.UniOVSeg`.

Stages are timed on the model's real ``model([{"image": ...}])``: its steps run as named stages
(:mod:`uniovseg.modeling.inference_stages`) and :func:`run_observed` lets a
:class:`~benchmark_suite.timing.StageTimer` (or a FLOP counter) observe them, with a
device synchronisation at every boundary. The end-to-end times are taken without observer; the
ratio of the per-run stage sums to them (``stage_sum_over_end_to_end``, expected close to 1)
shows the cost of those boundaries.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from uniovseg.modeling.inference_stages import observe_stages

from .flops import StageFlopCounter
from .inputs import BenchmarkImage, SyntheticMaskLogits, use_synthetic_masks
from .memory import PeakMemoryMeter
from .timing import StageTimer, summarize, synchronize

__all__ = [
    "PATH_STAGES",
    "STAGE_LABELS",
    "benchmark_inference",
    "compile_model",
    "precision_context",
    "run_observed",
]

logger = logging.getLogger(__name__)

# Stage name -> what it covers (the markdown table's first column).
STAGE_LABELS: dict[str, str] = {
    "preprocess": "preprocess (resize, normalise, pad)",
    "backbone": "backbone (frozen CLIP ConvNeXt)",
    "pixel_decoder": "pixel decoder (deformable encoder + FPN)",
    "mask_decoder": "prompt + mask decoder (all grid chunks)",
    "synthetic_mask_logits": "synthetic mask logits (benchmark only, not model cost)",
    "mask_postprocess": "mask post-processing (filters, stability, NMS, upsampling, soft masks)",
    "region_embedding": "region embedding (mask pooling + adapter + projection)",
    "classification": "classification (text classifier)",
    # The generator returns the soft masks at the original size (it resizes the kept masks
    # anyway); this stage only resizes them when it did not.
    "mask_resize": "soft masks at the original size, if not from post-processing",
    "semantic_assembly": "semantic assembly",
    "panoptic_assembly": "panoptic assembly",
}
_MASK_STAGES = (
    "preprocess",
    "backbone",
    "pixel_decoder",
    "mask_decoder",
    "synthetic_mask_logits",
    "mask_postprocess",
)
_OPEN_VOCAB_STAGES = ("region_embedding", "classification", "mask_resize")
# The stages each end-to-end output kind runs through.
PATH_STAGES: dict[str, tuple[str, ...]] = {
    "automatic": _MASK_STAGES,
    "semantic": _MASK_STAGES + _OPEN_VOCAB_STAGES + ("semantic_assembly",),
    "panoptic": _MASK_STAGES + _OPEN_VOCAB_STAGES + ("panoptic_assembly",),
}
# Output kind -> OpenVocabInference.outputs for the end-to-end run.
_OPEN_VOCAB_OUTPUTS = {"automatic": (), "semantic": ("sem_seg",), "panoptic": ("panoptic_seg",)}


def precision_context(device: torch.device, dtype: str) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` ("bf16" or "fp16") on ``device``; a no-op for "fp32"."""
    if dtype == "fp32":
        return nullcontext()
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype!r}")
    half = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=half)


def compile_model(model) -> list[str]:
    """Wraps the heavy modules of a UniOVSeg model in ``torch.compile`` (in place).

    The backbone and the prompt decoder are called as modules (``nn.Module.compile``); the pixel
    decoder is called through ``forward_features``, whose bound method is replaced by its
    compiled version. Compilation happens lazily at the first call (the warm-up).

    Returns:
        The names of the compiled parts.
    """
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.compile")
    model.backbone.compile()
    pixel_decoder = model.sem_seg_head.pixel_decoder
    pixel_decoder.forward_features = torch.compile(pixel_decoder.forward_features)
    model.sem_seg_head.predictor.compile()
    return ["backbone", "sem_seg_head.pixel_decoder.forward_features", "sem_seg_head.predictor"]


@torch.no_grad()
def run_observed(model, image: torch.Tensor, observer) -> int:
    """One image through the model's own automatic open-vocabulary inference, its stages
    observed by ``observer`` (a :class:`~benchmark_suite.timing.StageTimer` or
    :class:`~benchmark_suite.flops.StageFlopCounter`).

    With a vocabulary both semantic and panoptic assembly run (each its own stage); the
    model's configured outputs are restored afterwards.

    Args:
        model: A UniOVSeg model in eval mode.
        image: uint8 [3, H, W] RGB; outputs are at (H, W).
        observer: Receives the stages (one call of ``timer.end_run()`` is left to the caller).

    Returns:
        K, the number of masks the automatic generator kept.
    """
    open_vocab = model.open_vocab
    previous = open_vocab.outputs if open_vocab is not None else ()
    try:
        if open_vocab is not None:
            open_vocab.set_outputs(
                _OPEN_VOCAB_OUTPUTS["semantic"] + _OPEN_VOCAB_OUTPUTS["panoptic"]
            )
        with observe_stages(observer):
            (output,) = model([{"image": image}])
    finally:
        if open_vocab is not None:
            open_vocab.set_outputs(previous)
    return len(output["automatic_masks"])


def _time_over_images(
    run_one: Callable[[BenchmarkImage], object],
    images: Sequence[BenchmarkImage],
    *,
    repeat: int,
    warmup: int,
    device: torch.device,
    meter: PeakMemoryMeter,
) -> tuple[list[float], int]:
    """``warmup`` untimed runs on the first image, then ``repeat`` rounds over every image.

    Returns:
        (seconds per timed run, peak memory bytes over the timed runs).
    """
    for _ in range(warmup):
        run_one(images[0])
    meter.reset()
    times = []
    for _ in range(repeat):
        for image in images:
            synchronize(device)
            start = time.perf_counter()
            run_one(image)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times, meter.peak_bytes()


def benchmark_inference(
    model,
    images: Sequence[BenchmarkImage],
    *,
    repeat: int,
    warmup: int,
    dtype: str = "fp32",
    synthetic_masks: SyntheticMaskLogits | None = None,
    meter: PeakMemoryMeter | None = None,
) -> dict:
    """Times the inference stages, the backbone alone and each end-to-end output kind.

    Args:
        model: A UniOVSeg model in eval mode, with a vocabulary for the open-vocabulary outputs.
        images: The inputs; each timed round runs every image once.
        repeat: Timed rounds per measurement.
        warmup: Untimed runs (first image) before each measurement.
        dtype: "fp32", or "bf16"/"fp16" autocast.
        synthetic_masks: Replace the decoder's outputs (see :class:`SyntheticMaskLogits`);
            None keeps the model's own masks.
        meter: Peak-memory meter of the model's device (created when None).

    Returns:
        A JSON-ready dict: ``stages`` (stage -> summary, ms), ``stage_peak_memory_bytes``
        (stage -> highest memory while it ran, nested stages included), ``stage_sums`` (kind ->
        summary of the per-run sums of its stages), ``end_to_end`` (kind -> summary),
        ``end_to_end_model_ms`` (kind -> median minus the synthetic-logits stage's median: the
        model's own cost), ``backbone_alone`` (summary), ``stage_sum_over_end_to_end`` (kind ->
        ratio of medians), ``semantic_over_backbone`` (semantic model cost over the backbone
        alone, or None without a vocabulary), ``peak_memory_bytes`` (kind -> bytes, plus
        ``"stages"``), ``peak_memory_kind``, ``num_masks`` (image name -> K per timed run)
        and ``stage_flops`` (stage -> median over the images of its operation count, see
        :class:`~benchmark_suite.flops.StageFlopCounter`).
    """
    device = model.device
    meter = meter or PeakMemoryMeter(device)
    # Per-stage peaks: the timer resets the meter at every stage boundary.
    timer = StageTimer(device, meter=meter)
    open_vocab = model.open_vocab
    has_vocabulary = open_vocab is not None and open_vocab.text_classifier.num_classes > 0
    kinds = ["automatic", "semantic", "panoptic"] if has_vocabulary else ["automatic"]
    num_masks: dict[str, list[int]] = {}

    def synthetic() -> AbstractContextManager:
        if synthetic_masks is None:
            return nullcontext()
        return use_synthetic_masks(model, synthetic_masks)

    def staged(item: BenchmarkImage) -> None:
        with precision_context(device, dtype):
            k = run_observed(model, item.image, timer)
        num_masks.setdefault(item.name, []).append(k)
        timer.end_run()

    with synthetic():
        _time_over_images(staged, images, repeat=repeat, warmup=warmup, device=device, meter=meter)
        del timer.records[:warmup], timer.peak_records[:warmup]
        stage_flops = _count_stage_flops(model, images, dtype=dtype)
    runs = timer.records
    stage_peaks = timer.peak_memory()
    num_masks = {name: ks[-repeat:] for name, ks in num_masks.items()}
    stage_sums = {
        kind: summarize([sum(r.get(s, 0.0) for s in PATH_STAGES[kind]) for r in runs])
        for kind in kinds
    }
    logger.info("stages done: %s", {k: round(v["median_ms"]) for k, v in stage_sums.items()})

    padded = [model.preprocess_image(item.image)[0] for item in images]
    index = {item.name: i for i, item in enumerate(images)}

    @torch.no_grad()
    def backbone_only(item: BenchmarkImage) -> None:
        with precision_context(device, dtype):
            model.backbone(padded[index[item.name]])

    backbone_times, _ = _time_over_images(
        backbone_only, images, repeat=repeat, warmup=warmup, device=device, meter=meter
    )
    padded.clear()  # the padded inputs are not needed any more

    @torch.no_grad()
    def full(item: BenchmarkImage) -> None:
        with precision_context(device, dtype):
            model([{"image": item.image}])

    end_to_end, peaks = {}, {"stages": max(stage_peaks.values())}
    previous_outputs = open_vocab.outputs if open_vocab is not None else ()
    try:
        for kind in kinds:
            if open_vocab is not None:
                open_vocab.set_outputs(_OPEN_VOCAB_OUTPUTS[kind])
            with synthetic():
                times, peaks[kind] = _time_over_images(
                    full, images, repeat=repeat, warmup=warmup, device=device, meter=meter
                )
            end_to_end[kind] = summarize(times)
            logger.info("end to end %s: %.0f ms", kind, end_to_end[kind]["median_ms"])
    finally:
        if open_vocab is not None:
            open_vocab.set_outputs(previous_outputs)

    backbone_alone = summarize(backbone_times)
    stages = timer.summaries()
    # The synthetic logits are benchmark scaffolding, not model cost: the model's own end-to-end
    # time subtracts their median (0 without them).
    synthetic_ms = stages.get("synthetic_mask_logits", {}).get("median_ms", 0.0)
    model_ms = {kind: end_to_end[kind]["median_ms"] - synthetic_ms for kind in kinds}
    return {
        "stages": stages,
        "stage_peak_memory_bytes": stage_peaks,
        "stage_sums": stage_sums,
        "end_to_end": end_to_end,
        "end_to_end_model_ms": model_ms,
        "backbone_alone": backbone_alone,
        "stage_sum_over_end_to_end": {
            kind: stage_sums[kind]["median_ms"] / end_to_end[kind]["median_ms"] for kind in kinds
        },
        "semantic_over_backbone": (
            model_ms["semantic"] / backbone_alone["median_ms"] if "semantic" in model_ms else None
        ),
        "peak_memory_bytes": peaks,
        "peak_memory_kind": meter.kind,
        "num_masks": num_masks,
        "stage_flops": stage_flops,
    }


def _count_stage_flops(model, images, *, dtype: str) -> dict[str, float]:
    """One untimed, counted run per image -> stage -> median operation count."""
    counts: dict[str, list[int]] = {}
    for item in images:
        counter = StageFlopCounter()
        with counter, precision_context(model.device, dtype):
            run_observed(model, item.image, counter)
        for stage, flops in counter.flops.items():
            counts.setdefault(stage, []).append(flops)
    return {stage: float(statistics.median(values)) for stage, values in counts.items()}
