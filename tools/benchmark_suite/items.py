"""What one benchmark item is and how it runs in the current process.

:class:`SuiteSettings` holds a run's options, :class:`ItemSpec` one measurement; :func:`run_item`
builds the config and model an item needs and calls the matching benchmark
(:mod:`~benchmark_suite.inference` or :mod:`~benchmark_suite.workloads`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from detectron2.modeling import build_backbone, build_model

import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
from uniovseg.checkpoint import UniOVSegCheckpointer
from uniovseg.config import load_config
from uniovseg.engine.optimizer import build_optimizer

from .inference import benchmark_inference, compile_model
from .inputs import (
    SyntheticMaskLogits,
    caption_training_example,
    load_benchmark_images,
    sa1b_training_example,
    use_synthetic_masks,
)
from .memory import PeakMemoryMeter
from .workloads import benchmark_text_classifier, benchmark_training_step

__all__ = ["ItemSpec", "SuiteSettings", "build_config", "run_item"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SuiteSettings:
    """Everything a run needs (the CLI's options; see tools/benchmark.py for their meaning)."""

    inference_config: str
    train_configs: dict[str, str]  # "stage1_tiny", "stage2_full", ... -> config file
    opts: list[str] = dataclasses.field(default_factory=list)
    device: str = "cpu"
    threads: int = 2
    repeat: int = 3
    warmup: int = 1
    images: list[str] = dataclasses.field(default_factory=list)
    image_pattern: str = "*"
    num_images: int = 2
    image_size: int = 1024
    vocabulary: str = "ade20k_150"
    inference_templates: str = "name"
    masks: str = "synthetic"
    dtypes: list[str] = dataclasses.field(default_factory=lambda: ["fp32"])
    compile_modes: list[bool] = dataclasses.field(default_factory=lambda: [False])
    text_vocabularies: list[str] = dataclasses.field(
        default_factory=lambda: ["ade20k_150", "ade20k_847"]
    )
    text_repeat: int = 1
    text_sample_prompts: int = 0
    train_repeat: int = 3
    skip: list[str] = dataclasses.field(default_factory=list)
    only: list[str] = dataclasses.field(default_factory=list)
    isolate: bool = True


@dataclasses.dataclass
class ItemSpec:
    """One measurement: ``kind`` is "inference", "text_classifier" or "train"."""

    name: str
    kind: str
    config_file: str
    dtype: str = "fp32"
    compile: bool = False
    vocabulary: str = ""


def build_config(config_file: str, opts: list[str], device: str):
    """A detectron2 config: the file, random CLIP weights (unless ``opts`` set
    ``MODEL.UNIOVSEG.CLIP.PRETRAINED``), ``opts``, then the device."""
    cfg = load_config(config_file, ["MODEL.UNIOVSEG.CLIP.PRETRAINED", ""] + list(opts))
    cfg.MODEL.DEVICE = device
    return cfg


def _build_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        UniOVSegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def _run_inference(spec: ItemSpec, settings: SuiteSettings) -> dict:
    cfg = build_config(spec.config_file, settings.opts, settings.device)
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES = settings.inference_templates or (
        cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES
    )
    meter = PeakMemoryMeter(settings.device)
    start = time.perf_counter()
    model = _build_model(cfg).eval()
    build_seconds = time.perf_counter() - start
    vocabulary_seconds = 0.0
    if settings.vocabulary:
        start = time.perf_counter()
        model.set_vocabulary(settings.vocabulary)
        model.open_vocab.text_classifier.class_embeddings()  # cached: not a per-image cost
        vocabulary_seconds = time.perf_counter() - start
    model_memory = meter.current_bytes()
    compiled = compile_model(model) if spec.compile else []
    images = load_benchmark_images(
        settings.images,
        num_images=settings.num_images,
        longest_side=settings.image_size,
        pattern=settings.image_pattern,
    )
    logger.info("%s: model built in %.1f s, %d images", spec.name, build_seconds, len(images))
    result = benchmark_inference(
        model,
        images,
        repeat=settings.repeat,
        warmup=settings.warmup,
        dtype=spec.dtype,
        synthetic_masks=SyntheticMaskLogits() if settings.masks == "synthetic" else None,
        meter=meter,
    )
    size = cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE
    auto = cfg.MODEL.UNIOVSEG.AUTOMATIC
    result.update(
        {
            "config_file": spec.config_file,
            "clip_model": cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME,
            "weights": cfg.MODEL.WEIGHTS or "random",
            "input_size": f"{size}x{size}",
            "point_grid": f"{auto.POINTS_PER_SIDE}x{auto.POINTS_PER_SIDE}",
            "points_per_batch": auto.POINTS_PER_BATCH,
            "feature_adapter": model.feature_adapter is not None,
            "vocabulary": settings.vocabulary,
            "vocabulary_templates": cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES,
            "vocabulary_seconds": vocabulary_seconds,
            "images": [
                {
                    "name": i.name,
                    "size": list(i.image.shape[-2:]),
                    "source_size": list(i.source_size),
                }
                for i in images
            ],
            "masks": settings.masks,
            "dtype": spec.dtype,
            "compiled": compiled,
            "build_seconds": build_seconds,
            "model_memory_bytes": model_memory,
        }
    )
    return result


def _run_text_classifier(spec: ItemSpec, settings: SuiteSettings) -> dict:
    cfg = build_config(spec.config_file, settings.opts, settings.device)
    torch.manual_seed(0)
    backbone = build_backbone(cfg).to(settings.device).eval()
    result = benchmark_text_classifier(
        backbone,
        spec.vocabulary,
        templates=cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES,
        prompt_chunk_size=cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE,
        repeat=settings.text_repeat,
        warmup=settings.warmup,
        sample_prompts=settings.text_sample_prompts,
    )
    result.update(
        {"config_file": spec.config_file, "clip_model": cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME}
    )
    return result


def _run_training(spec: ItemSpec, settings: SuiteSettings) -> dict:
    cfg = build_config(spec.config_file, settings.opts, settings.device)
    meter = PeakMemoryMeter(settings.device)
    start = time.perf_counter()
    model = _build_model(cfg)
    build_seconds = time.perf_counter() - start
    optimizer = build_optimizer(cfg, model)
    size = cfg.INPUT.UNIOVSEG.CROP_SIZE
    alignment = cfg.MODEL.UNIOVSEG.ALIGNMENT
    captions = alignment.ENABLED and not alignment.TRAIN_MASK_BRANCH
    if captions:
        example = caption_training_example(
            size, num_entities=max(1, cfg.INPUT.UNIOVSEG.CAPTION.MAX_ENTITIES or 5)
        )
    else:
        example = sa1b_training_example(
            size,
            num_masks=cfg.INPUT.UNIOVSEG.MAX_MASKS_PER_IMAGE or 40,
            point_grid_size=cfg.INPUT.UNIOVSEG.POINT_GRID_SIZE,
        )
    # Stage 2 matches entities to automatic masks: random weights would give none.
    synthetic = captions and settings.masks == "synthetic"
    with use_synthetic_masks(model, SyntheticMaskLogits()) if synthetic else nullcontext():
        result = benchmark_training_step(
            model,
            optimizer,
            example,
            repeat=settings.train_repeat,
            warmup=settings.warmup,
            dtype=spec.dtype,
            meter=meter,
        )
    result.update(
        {
            "config_file": spec.config_file,
            "clip_model": cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME,
            "example": "caption" if captions else "sa1b",
            "crop_size": size,
            "masks": settings.masks if captions else "ground truth",
            "dtype": spec.dtype,
            "build_seconds": build_seconds,
        }
    )
    return result


_RUNNERS: dict[str, Callable[[ItemSpec, SuiteSettings], dict]] = {
    "inference": _run_inference,
    "text_classifier": _run_text_classifier,
    "train": _run_training,
}


def run_item(spec: ItemSpec, settings: SuiteSettings) -> dict:
    """Runs one item in this process (threads set here) and returns its result dict."""
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    result = _RUNNERS[spec.kind](spec, settings)
    result["item_seconds"] = time.perf_counter() - start
    return result
