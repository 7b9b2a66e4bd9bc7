"""Benchmarks of the text classifier's cold build and of one training step.

* :func:`benchmark_text_classifier`: a fresh :class:`~uniovseg.modeling.text_classifier.
  TextClassifier` (no memory or disk cache) embeds every prompt of a vocabulary. On CPU the
  ConvNeXt-L text tower needs ~0.1-0.2 s per prompt (ADE20K-847 x 14 templates = 18,774
  prompts), so ``sample_prompts`` times a prefix of the vocabulary and scales the time linearly
  by the prompt count (text encoding is linear in it: every prompt is padded to the context
  length); such results carry ``extrapolated: True``.
* :func:`benchmark_training_step`: forward, backward and AdamW step (the project's optimizer with
  its full-model clipping) at batch 1.
"""

from __future__ import annotations

import logging
import time

import torch

from uniovseg.data.vocabulary import class_synonyms, resolve_vocabulary
from uniovseg.modeling.text_classifier import TextClassifier, resolve_templates

from .inference import precision_context
from .memory import PeakMemoryMeter
from .timing import summarize, synchronize, time_runs

__all__ = ["benchmark_text_classifier", "benchmark_training_step"]

logger = logging.getLogger(__name__)


def benchmark_text_classifier(
    text_encoder,
    vocabulary: str,
    *,
    templates: str = "vild",
    prompt_chunk_size: int = 256,
    repeat: int = 1,
    warmup: int = 1,
    sample_prompts: int = 0,
    meter: PeakMemoryMeter | None = None,
) -> dict:
    """Cold-cache build time of a vocabulary's text embeddings.

    Args:
        text_encoder: The CLIP backbone (``encode_text``, ``logit_scale``).
        vocabulary: A packaged vocabulary name or any spec ``resolve_vocabulary`` takes.
        templates: Template set name or templates (``"vild"``: the paper's 14).
        prompt_chunk_size: Prompts per ``encode_text`` call (``MODEL.UNIOVSEG.CLIP.
            TEXT_CHUNK_SIZE``).
        repeat: Timed builds (each with a new classifier: nothing cached).
        warmup: Untimed ``encode_text`` calls of one chunk (first-call overheads).
        sample_prompts: > 0: time only the first classes holding at least this many prompts
            and scale the times by (all prompts / timed prompts).
        meter: Peak-memory meter of the encoder's device (created when None).

    Returns:
        ``vocabulary``, ``classes``, ``synonyms``, ``templates`` (count), ``prompts``,
        ``timed_prompts``, ``extrapolated``, ``time`` (summary, ms, for the whole vocabulary),
        ``ms_per_prompt`` (median) and ``peak_memory_bytes``.
    """
    entries = resolve_vocabulary(vocabulary)
    template_list = resolve_templates(templates)
    counts = [len(class_synonyms(e)) * len(template_list) for e in entries]
    total = sum(counts)
    timed_entries = entries
    if 0 < sample_prompts < total:
        cumulative, n = 0, 0
        while cumulative < sample_prompts:
            cumulative += counts[n]
            n += 1
        timed_entries = entries[:n]
    timed_prompts = sum(counts[: len(timed_entries)])
    scale = total / timed_prompts
    device = next(iter(text_encoder.parameters())).device
    meter = meter or PeakMemoryMeter(device)
    for _ in range(warmup):
        text_encoder.encode_text(["a photo of a warm-up."] * min(prompt_chunk_size, timed_prompts))
    meter.reset()

    def build() -> None:
        classifier = TextClassifier(
            text_encoder=text_encoder,
            templates=template_list,
            prompt_chunk_size=prompt_chunk_size,
            cache_dir="",
        )
        classifier.class_embeddings(timed_entries)

    seconds = time_runs(build, repeat=repeat, warmup=0, device=device)
    summary = summarize([s * scale for s in seconds])
    return {
        "vocabulary": vocabulary,
        "classes": len(entries),
        "synonyms": total // len(template_list),
        "templates": len(template_list),
        "prompts": total,
        "timed_prompts": timed_prompts,
        "extrapolated": timed_prompts < total,
        "time": summary,
        "ms_per_prompt": summary["median_ms"] / total,
        "peak_memory_bytes": meter.peak_bytes(),
        "peak_memory_kind": meter.kind,
    }


def benchmark_training_step(
    model,
    optimizer: torch.optim.Optimizer,
    example: dict,
    *,
    repeat: int,
    warmup: int,
    dtype: str = "fp32",
    meter: PeakMemoryMeter | None = None,
) -> dict:
    """Time and peak memory of ``zero_grad -> forward -> backward -> step`` at batch 1.

    Args:
        model: A UniOVSeg model (put in train mode here).
        optimizer: Its optimizer (e.g. ``uniovseg.engine.optimizer.build_optimizer``).
        example: One mapper-shaped training example (the same one every step).
        repeat: Timed steps.
        warmup: Untimed steps first (they also create the optimizer's state, so the measured
            peak includes it).
        dtype: "fp32", or "bf16"/"fp16" autocast of the forward pass.
        meter: Peak-memory meter of the model's device (created when None).

    Returns:
        ``time`` (summary, ms per step), ``peak_memory_bytes``, ``peak_memory_kind``,
        ``loss_terms`` (number of loss entries), ``loss`` (last total, float) and
        ``trainable_parameters``.
    """
    device = model.device
    meter = meter or PeakMemoryMeter(device)
    model.train()
    last = {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(device, dtype):
            losses = model([example])
        total = sum(losses.values())
        total.backward()
        optimizer.step()
        last["terms"] = len(losses)
        last["loss"] = float(total.detach())

    for index in range(warmup):
        start = time.perf_counter()
        step()
        synchronize(device)
        logger.info("warm-up step %d: %.2f s", index, time.perf_counter() - start)
    meter.reset()
    seconds = time_runs(step, repeat=repeat, warmup=0, device=device)
    return {
        "time": summarize(seconds),
        "peak_memory_bytes": meter.peak_bytes(),
        "peak_memory_kind": meter.kind,
        "loss_terms": last["terms"],
        "loss": last["loss"],
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
