"""The benchmark suite: plans items, estimates their cost, runs each one (in a fresh process by
default) and collects the report.

Items (``--skip``/``--only`` take these names or shell patterns such as ``train_*_full``):

* ``inference[<dtype>]`` (``[<dtype>,compile]`` with ``torch.compile``): per-stage and
  end-to-end inference, see :mod:`benchmark_suite.inference`;
* ``text_classifier_<vocabulary>``: cold build of the text classifier;
* ``train_stage1_<tiny|full>[<dtype>]``, ``train_stage2_<tiny|full>[<dtype>]``: one training
  step at batch 1.

A fresh process per item keeps the CPU peak-memory measurements (process RSS) and the thread
pools of one item from leaking into the next. The worker entry point is
``python -m benchmark_suite.worker SPEC.json RESULT.json``.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import fnmatch
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from uniovseg.logs import setup_logging

from .items import ItemSpec, SuiteSettings, build_config, run_item
from .report import environment_info, write_report

__all__ = ["ItemSpec", "SuiteSettings", "estimate_seconds", "plan_items", "run_item", "run_suite"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>

# Rough seconds per unit on the reference machine (2-core AMD EPYC VM, 2 threads, fp32, quiet),
# only used to print a cost estimate before a run. "full" is the paper's ConvNeXt-L configuration
# at a 1024 input, "tiny" configs/tiny at 128. "pipeline" is one image through the whole
# open-vocabulary path (plus its share of the operation-counting run), "prompt" one prompt
# through the text tower. Measured at commit ebf5b8b (the inference item took 225 s with
# --repeat 1, the ADE20K-847 classifier 307 s, the full training items 153 s and 87 s).
_REFERENCE_SECONDS = {
    "full": {
        "build": 3.0,
        "pipeline": 16.0,
        "backbone": 7.5,
        "prompt": 0.017,
        "train_stage1": 35.0,
        "train_stage2": 20.0,
    },
    "tiny": {
        "build": 1.5,
        "pipeline": 0.4,
        "backbone": 0.03,
        "prompt": 0.003,
        "train_stage1": 0.7,
        "train_stage2": 3.5,
    },
}


def _matches(name: str, patterns: list[str]) -> bool:
    """An exact item name (``inference[fp32]``: brackets are literal here), or a shell pattern
    matched against the name or its base (``train_*_full`` matches ``train_stage1_full[fp32]``)."""
    base = name.split("[", 1)[0]
    return any(
        p == name or fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in patterns
    )


def _selected(name: str, settings: SuiteSettings) -> bool:
    if settings.only and not _matches(name, settings.only):
        return False
    return not _matches(name, settings.skip)


def plan_items(settings: SuiteSettings) -> list[ItemSpec]:
    """The items the settings ask for, in run order (cheap ones first)."""
    if settings.device.startswith("cpu") and settings.compile_modes != [False]:
        logger.warning("torch.compile variants are meant for GPU runs; they also run on CPU")
    items = []
    for dtype in settings.dtypes:
        for compiled in settings.compile_modes:
            suffix = f"[{dtype}{',compile' if compiled else ''}]"
            items.append(
                ItemSpec(
                    f"inference{suffix}", "inference", settings.inference_config, dtype, compiled
                )
            )
    for vocabulary in settings.text_vocabularies:
        items.append(
            ItemSpec(
                f"text_classifier_{vocabulary}",
                "text_classifier",
                settings.inference_config,
                vocabulary=vocabulary,
            )
        )
    for key in ("stage1_tiny", "stage2_tiny", "stage1_full", "stage2_full"):
        if key in settings.train_configs:
            for dtype in settings.dtypes:
                items.append(
                    ItemSpec(f"train_{key}[{dtype}]", "train", settings.train_configs[key], dtype)
                )
    return [item for item in items if _selected(item.name, settings)]


def _size_class(cfg) -> str | None:
    name = cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME
    if name == "convnext_large_d_320":
        return "full"
    return "tiny" if "tiny" in name else None


def _num_prompts(vocabulary: str, templates: str) -> int:
    from uniovseg.data.vocabulary import class_synonyms, resolve_vocabulary
    from uniovseg.modeling.text_classifier import resolve_templates

    if not vocabulary:
        return 0
    synonyms = sum(len(class_synonyms(e)) for e in resolve_vocabulary(vocabulary))
    return synonyms * len(resolve_templates(templates))


def estimate_seconds(spec: ItemSpec, settings: SuiteSettings) -> float | None:
    """Rough wall-clock seconds of an item on the reference CPU (None: no reference, e.g. GPU
    runs or unknown backbones). Scales with repeats, images and 2 / threads."""
    if not settings.device.startswith("cpu"):
        return None
    cfg = build_config(spec.config_file, settings.opts, "cpu")
    size = _size_class(cfg)
    if size is None:
        return None
    ref = _REFERENCE_SECONDS[size]
    if spec.kind in ("inference", "text_classifier"):
        inference = spec.kind == "inference"
        templates = (settings.inference_templates if inference else "") or (
            cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES
        )
        vocabulary = settings.vocabulary if inference else spec.vocabulary
        prompts = _num_prompts(vocabulary, templates)
    if spec.kind == "inference":
        runs = settings.warmup + settings.repeat * settings.num_images
        # Per run: 1 staged + 3 end-to-end pipelines and 1 backbone-alone pass.
        passes = runs * (4 * ref["pipeline"] + ref["backbone"])
        seconds = ref["build"] + prompts * ref["prompt"] + passes
    elif spec.kind == "text_classifier":
        if settings.text_sample_prompts:
            prompts = min(prompts, settings.text_sample_prompts)
        seconds = ref["build"] + settings.text_repeat * prompts * ref["prompt"]
    else:
        stage = "train_stage2" if cfg.MODEL.UNIOVSEG.ALIGNMENT.ENABLED else "train_stage1"
        seconds = ref["build"] + (settings.warmup + settings.train_repeat) * ref[stage]
    return seconds * 2.0 / max(settings.threads, 1)


def _run_isolated(spec: ItemSpec, settings: SuiteSettings) -> dict:
    """Runs one item in a fresh Python process; an error becomes ``{"error": ...}``."""
    with tempfile.TemporaryDirectory(prefix="uniovseg-bench-") as tmp:
        spec_path, result_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        payload = {"spec": dataclasses.asdict(spec), "settings": dataclasses.asdict(settings)}
        spec_path.write_text(json.dumps(payload))
        env = dict(os.environ)
        threads = str(settings.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        # The worker imports this package (tools/) and uniovseg from the same source tree,
        # installed or not.
        tools_dir, root = (str(p) for p in Path(__file__).resolve().parents[1:3])
        paths = (tools_dir, root, env.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        command = [
            sys.executable,
            "-m",
            "benchmark_suite.worker",
            str(spec_path),
            str(result_path),
        ]
        # The worker's log goes to our stderr as it comes (progress of long items); its tail
        # is kept for the error message.
        tail: collections.deque[str] = collections.deque(maxlen=15)
        with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
            assert process.stderr is not None
            for line in process.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip())
        if process.returncode != 0 or not result_path.exists():
            return {"error": f"worker exited with {process.returncode}:\n" + "\n".join(tail)}
        return json.loads(result_path.read_text())


def run_suite(
    settings: SuiteSettings, output: Path, *, echo: Callable[[str], None] = print
) -> dict:
    """Plans, estimates and runs every item, writing the report after each one (a long run
    keeps its finished items if interrupted).

    Returns:
        The report dict (see :mod:`benchmark_suite.report`).
    """
    items = plan_items(settings)
    if not items:
        raise ValueError("no benchmark item left after --only/--skip; see --list")
    estimates = {item.name: estimate_seconds(item, settings) for item in items}
    known = [s for s in estimates.values() if s is not None]
    for item in items:
        seconds = estimates[item.name]
        echo(f"  {item.name:<36} ~{seconds / 60:.1f} min" if seconds else f"  {item.name:<36} ?")
    if known:
        echo(f"estimated total on the reference 2-core CPU: ~{sum(known) / 60:.0f} min")
    report = {
        "environment": environment_info(settings.device, settings.threads),
        "settings": dataclasses.asdict(settings),
        "items": {},
    }
    for item in items:
        echo(f"running {item.name} ...")
        start = time.perf_counter()
        if settings.isolate:
            result = _run_isolated(item, settings)
        else:
            try:
                result = run_item(item, settings)
            except Exception as error:  # one failed item must not lose the others
                logger.exception("%s failed", item.name)
                result = {"error": f"{type(error).__name__}: {error}"}
        echo(
            f"  {item.name} {'FAILED' if 'error' in result else 'done'} in "
            f"{time.perf_counter() - start:.0f} s"
        )
        report["items"][item.name] = result
        write_report(report, output)
    return report


def _exit_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM when the suite process dies, so that a
    stopped benchmark leaves no orphan keeping the CPU busy (and skewing the next run)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit("benchmark worker: the suite process is gone")


def worker_main(argv: list[str]) -> int:
    """Runs the item of ``argv = [SPEC.json, RESULT.json]`` (written by the parent process)."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmark_suite.worker SPEC.json RESULT.json")
    setup_logging()
    _exit_with_parent()
    payload = json.loads(Path(argv[0]).read_text())
    spec = ItemSpec(**payload["spec"])
    settings = SuiteSettings(**payload["settings"])
    result = run_item(spec, settings)
    Path(argv[1]).write_text(json.dumps(result))
    return 0
