"""Benchmarks of Uni-OVSeg: per-stage and end-to-end inference time, peak memory, text-classifier
build time and training-step cost (issue 8). The command-line entry point is
``tools/benchmark.py``; benchmarks/README.md explains every number.
"""

from .flops import StageFlopCounter
from .inference import PATH_STAGES, STAGE_LABELS, benchmark_inference, run_observed
from .inputs import (
    BenchmarkImage,
    SyntheticMaskLogits,
    caption_training_example,
    load_benchmark_images,
    sa1b_training_example,
    synthetic_photo,
)
from .memory import PeakMemoryMeter
from .report import environment_info, render_markdown, write_report
from .suite import ItemSpec, SuiteSettings, estimate_seconds, plan_items, run_item, run_suite
from .timing import StageTimer, summarize, time_runs
from .workloads import benchmark_text_classifier, benchmark_training_step

__all__ = [
    "StageFlopCounter",
    "PATH_STAGES",
    "STAGE_LABELS",
    "BenchmarkImage",
    "ItemSpec",
    "PeakMemoryMeter",
    "StageTimer",
    "SuiteSettings",
    "SyntheticMaskLogits",
    "benchmark_inference",
    "benchmark_text_classifier",
    "benchmark_training_step",
    "caption_training_example",
    "environment_info",
    "estimate_seconds",
    "load_benchmark_images",
    "plan_items",
    "render_markdown",
    "run_observed",
    "run_item",
    "run_suite",
    "sa1b_training_example",
    "summarize",
    "synthetic_photo",
    "time_runs",
    "write_report",
]
