"""The benchmark report: machine facts, JSON file and markdown tables.

Report layout (JSON)::

    {"environment": {...}, "settings": {...}, "targets": {...},
     "items": {item name: result dict or {"error": str}}}

where an item is ``inference[<dtype>]`` / ``inference[<dtype>,compile]``,
``text_classifier_<vocabulary>`` or ``train_<stage>_<tiny|full>[<dtype>]``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from uniovseg.layers.ms_deform_attn_function import compiled_backends

from .inference import PATH_STAGES, STAGE_LABELS

__all__ = ["environment_info", "render_markdown", "write_report"]

# Issue 8's targets (CPU, 2 threads): semantic output at most 1.3x the backbone alone, and
# at most 6 GB peak memory for inference at 1024.
SEMANTIC_OVER_BACKBONE_TARGET = 1.3
PEAK_MEMORY_TARGET_BYTES = 6 * 1024**3


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+modified" if dirty.stdout.strip() else "")


def environment_info(device: str, threads: int) -> dict:
    """Facts about the machine and the software a benchmark ran on."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "device": device,
        "git_commit": _git_commit(Path(__file__).resolve().parents[2]),
        # Without a compiled kernel the pixel decoder runs the (much slower) PyTorch path: a
        # checkout whose op was not built must not pass for a slow model.
        "ms_deform_attn_kernels": sorted(compiled_backends()),
    }
    if torch.device(device).type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


def _ms_row(label: str, s: dict, extra: str = "") -> str:
    return (
        f"| {label} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['max_ms']:.1f} | "
        f"{s['iqr_ms']:.1f} | {extra} |"
    )


def _gflop_cells(flops: dict, stage: str, timing: dict) -> str:
    """The ``GFLOP | GFLOP/s |`` cells of a stage row (empty when not counted)."""
    if stage not in flops:
        return " | |"
    gflop = flops[stage] / 1e9
    rate = f"{gflop / (timing['median_ms'] / 1e3):.0f}" if timing["median_ms"] > 0 else ""
    return f"{gflop:.1f} | {rate} |"


def _inference_markdown(name: str, result: dict) -> list[str]:
    reference_kind = "semantic" if "semantic" in result["end_to_end"] else "automatic"
    reference = result["end_to_end"][reference_kind]
    lines = [
        f"### {name}",
        "",
        f"Config `{result['config_file']}`, input {result['input_size']}, images "
        + ", ".join(f"{i['name']} {i['size'][0]}x{i['size'][1]}" for i in result["images"])
        + f"; masks: {result['masks']}; K (masks kept) per image: "
        + ", ".join(f"{n} {sorted(set(k))}" for n, k in result["num_masks"].items())
        + ".",
        "",
        f"| stage | median ms | min ms | max ms | IQR ms | share of {reference_kind} end to end "
        "| peak memory GB | GFLOP | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flops = result.get("stage_flops", {})
    for stage, label in STAGE_LABELS.items():
        if stage in result["stages"]:
            s = result["stages"][stage]
            share = f"{100 * s['median_ms'] / reference['median_ms']:.1f}%"
            peak = _gb(result["stage_peak_memory_bytes"].get(stage))
            lines.append(_ms_row(label, s, share) + f" {peak} | {_gflop_cells(flops, stage, s)}")
    for kind, s in result["stage_sums"].items():
        ratio = result["stage_sum_over_end_to_end"][kind]
        lines.append(_ms_row(f"sum of {kind} stages", s, f"{ratio:.2f}x of measured") + " | | |")
    lines.append(_ms_row("backbone alone (separate loop)", result["backbone_alone"]) + " | | |")
    if flops:
        lines += [
            "",
            "GFLOP: operations per image (median over the images) of matrix products, "
            "convolutions and attention, 2 per multiply-add (the NMS's int8 products included); "
            "element-wise work is not counted. GFLOP/s: GFLOP over the median time.",
        ]
    lines += [
        "",
        "| end to end | median ms | min ms | max ms | IQR ms | model cost ms | peak memory GB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, s in result["end_to_end"].items():
        lines.append(
            f"| {kind} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['max_ms']:.1f} | "
            f"{s['iqr_ms']:.1f} | {result['end_to_end_model_ms'][kind]:.1f} | "
            f"{_gb(result['peak_memory_bytes'].get(kind))} |"
        )
    lines.append("")
    lines.append(
        f"Model loaded: {_gb(result.get('model_memory_bytes'))} GB "
        f"({result['peak_memory_kind']}); build {result['build_seconds']:.1f} s."
    )
    return lines


def semantic_compute_floor(stage_flops: dict[str, float]) -> float | None:
    """The semantic/backbone ratio if every semantic-path stage ran at the backbone's
    operation rate: (operations of the path) / (operations of the backbone).

    Element-wise work is not counted (see :class:`~benchmark_suite.flops.
    StageFlopCounter`), so this is a lower bound on the ratio that faster kernels alone can
    reach: below it, only doing fewer operations helps. None without counts.
    """
    backbone = stage_flops.get("backbone", 0.0)
    if backbone <= 0:
        return None
    return sum(stage_flops.get(stage, 0.0) for stage in PATH_STAGES["semantic"]) / backbone


def _targets(items: dict) -> dict:
    """Issue 8's targets, checked on every inference item."""
    targets = {}
    for name, result in items.items():
        if not name.startswith("inference") or "error" in result:
            continue
        ratio = result.get("semantic_over_backbone")
        peak = max(result["peak_memory_bytes"].values())
        targets[name] = {
            "semantic_over_backbone": ratio,
            "semantic_compute_floor": semantic_compute_floor(result.get("stage_flops", {})),
            "semantic_over_backbone_target": SEMANTIC_OVER_BACKBONE_TARGET,
            "semantic_over_backbone_met": None
            if ratio is None
            else ratio <= SEMANTIC_OVER_BACKBONE_TARGET,
            "peak_memory_bytes": peak,
            "peak_memory_target_bytes": PEAK_MEMORY_TARGET_BYTES,
            "peak_memory_met": peak <= PEAK_MEMORY_TARGET_BYTES,
        }
    return targets


def render_markdown(report: dict) -> str:
    """Markdown tables of a report (see the module docstring for its layout)."""
    env, settings = report["environment"], report["settings"]
    lines = [
        f"## Uni-OVSeg benchmark ({env['date']})",
        "",
        f"Machine: {env['host_cpu']} ({env['cpu_count']} cores, 1-min load "
        f"{env['load_average_1m']}), device {env.get('device_name', env['device'])}, "
        f"torch {env['torch']}, {env['torch_threads']} threads, commit {env['git_commit']}, "
        "compiled deformable-attention kernels: "
        f"{', '.join(env.get('ms_deform_attn_kernels', [])) or 'none (PyTorch path)'}. "
        f"Repeats: {settings['repeat']} (warm-up {settings['warmup']}); times are wall-clock "
        "medians with min/max and inter-quartile range over all timed runs.",
        "",
    ]
    targets = report.get("targets", {})
    if targets:
        lines += [
            "| item | semantic / backbone | target | compute floor | peak memory GB | target |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for name, t in targets.items():
            ratio, floor = t["semantic_over_backbone"], t.get("semantic_compute_floor")
            ok = {True: "met", False: "NOT met", None: "-"}
            lines.append(
                f"| {name} | {'-' if ratio is None else f'{ratio:.2f}x'} | <= "
                f"{t['semantic_over_backbone_target']}x ({ok[t['semantic_over_backbone_met']]})"
                f" | {'-' if floor is None else f'{floor:.2f}x'}"
                f" | {_gb(t['peak_memory_bytes'])} | <= {_gb(t['peak_memory_target_bytes'])} "
                f"({ok[t['peak_memory_met']]}) |"
            )
        lines += [
            "",
            "Compute floor: the semantic / backbone ratio if every stage of the semantic path ran "
            "at the backbone's GFLOP/s (counted operations of the path over the backbone's). "
            "Faster kernels cannot go below it; only fewer operations can.",
            "",
        ]
    text_rows, train_rows, errors = [], [], []
    for name, result in report["items"].items():
        if "error" in result:
            errors.append(f"- {name}: {result['error'].strip().splitlines()[-1]}")
        elif name.startswith("inference"):
            lines += _inference_markdown(name, result) + [""]
        elif name.startswith("text_classifier"):
            t = result["time"]
            note = (
                f" (extrapolated from {result['timed_prompts']})" if result["extrapolated"] else ""
            )
            text_rows.append(
                f"| {result['vocabulary']} | {result['classes']} | {result['prompts']}{note} | "
                f"{t['median_ms'] / 1e3:.1f} | {t['min_ms'] / 1e3:.1f} | {t['max_ms'] / 1e3:.1f} "
                f"| {result['ms_per_prompt']:.1f} | {_gb(result['peak_memory_bytes'])} |"
            )
        elif name.startswith("train"):
            t = result["time"]
            train_rows.append(
                f"| {name} | `{result['config_file']}` | {t['median_ms'] / 1e3:.2f} | "
                f"{t['min_ms'] / 1e3:.2f} | {t['max_ms'] / 1e3:.2f} | "
                f"{_gb(result['peak_memory_bytes'])} | {result['trainable_parameters'] / 1e6:.2f} |"
            )
    if text_rows:
        lines += [
            "### Text classifier, cold cache (14 ViLD templates unless set)",
            "",
            "| vocabulary | classes | prompts | median s | min s | max s | ms / prompt | "
            "peak memory GB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *text_rows,
            "",
        ]
    if train_rows:
        lines += [
            "### Training step, batch 1 (forward + backward + AdamW)",
            "",
            "| item | config | median s | min s | max s | peak memory GB | trainable M |",
            "|---|---|---:|---:|---:|---:|---:|",
            *train_rows,
            "",
        ]
    if errors:
        lines += ["### Failed items", "", *errors, ""]
    return "\n".join(lines)


def write_report(report: dict, json_path: Path) -> Path:
    """Writes ``report`` (with its ``targets`` filled in) as JSON and its markdown next to it
    (same stem, ``.md``); returns the markdown path."""
    report["targets"] = _targets(report["items"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render_markdown(report) + "\n")
    return md_path
