"""Times every available path of the multi-scale deformable-attention op.

Default size is the pixel decoder's at a 1024x1024 input: levels 128x128, 64x64, 32x32
(21,504 keys, one query per key), 8 heads x 32 channels, 4 points, batch 1, float32. Sampling
locations are each query's pixel centre plus offsets of a few pixels, as in the encoder.

Example::

    python tools/benchmark_ms_deform_attn.py --threads 2 --repeat 7

Writes JSON (default ``benchmarks/results/ms_deform_attn.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from uniovseg.layers.ms_deform_attn_function import compiled_backends, ms_deform_attn


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--levels", type=str, default="128x128,64x64,32x32", help="comma-separated HxW sizes"
    )
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--backends",
        default="all",
        help="comma-separated subset of pytorch,cpp,cuda; 'all' = every one available",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/ms_deform_attn.json")
    )
    return parser.parse_args()


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Encoder-like inputs: queries at every pixel of every level, offsets of ~2 pixels."""
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    shapes = torch.tensor([[int(v) for v in s.split("x")] for s in args.levels.split(",")])
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_keys = int(areas.sum())
    centres = []
    for height, width in shapes.tolist():
        ys, xs = torch.meshgrid(
            (torch.arange(height, dtype=dtype) + 0.5) / height,
            (torch.arange(width, dtype=dtype) + 0.5) / width,
            indexing="ij",
        )
        centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    reference = torch.cat(centres)  # [Q, 2]
    batch, heads, levels, points = args.batch, args.heads, len(shapes), args.points
    size = (batch, num_keys, heads, levels, points)
    pixel = shapes.flip(-1).to(dtype)  # (W, H) per level
    offsets = 2.0 * torch.randn(*size, 2, generator=generator, dtype=dtype) / pixel[:, None, :]
    locations = reference[None, :, None, None, None, :] + offsets
    weights = torch.randn(batch, num_keys, heads, levels * points, generator=generator)
    weights = weights.to(dtype).softmax(-1).view(size)
    value = torch.randn(batch, num_keys, heads, args.head_dim, generator=generator, dtype=dtype)
    device = torch.device(args.device)
    return {
        "value": value.to(device),
        "spatial_shapes": shapes.to(device),
        "level_start_index": starts.to(device),
        "sampling_locations": locations.to(device),
        "attention_weights": weights.to(device),
    }


def time_runs(fn, *, repeat: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict[str, float | list[float]]:
    ms = sorted(t * 1e3 for t in times)
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "iqr_ms": quartiles[2] - quartiles[0],
        "runs_ms": ms,
    }


def benchmark_backend(backend: str, inputs: dict[str, torch.Tensor], args) -> dict[str, dict]:
    device = inputs["value"].device
    leaves = {
        name: inputs[name].detach().clone().requires_grad_()
        for name in ("value", "sampling_locations", "attention_weights")
    }
    grad = None

    def forward():
        with torch.no_grad():
            return ms_deform_attn(**inputs, backend=backend)

    def forward_backward():
        nonlocal grad
        out = ms_deform_attn(
            leaves["value"],
            inputs["spatial_shapes"],
            inputs["level_start_index"],
            leaves["sampling_locations"],
            leaves["attention_weights"],
            backend=backend,
        )
        if grad is None:
            grad = torch.randn_like(out)
        torch.autograd.grad(out, list(leaves.values()), grad)

    return {
        "forward": summarize(
            time_runs(forward, repeat=args.repeat, warmup=args.warmup, device=device)
        ),
        "forward_backward": summarize(
            time_runs(forward_backward, repeat=args.repeat, warmup=args.warmup, device=device)
        ),
    }


def markdown_table(results: dict[str, dict]) -> str:
    lines = [
        "| backend | pass | median ms | min ms | max ms | IQR ms | speed-up vs pytorch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, passes in results.items():
        for name, stats in passes.items():
            base = results.get("pytorch", {}).get(name)
            speedup = f"{base['median_ms'] / stats['median_ms']:.2f}x" if base else "-"
            lines.append(
                f"| {backend} | {name} | {stats['median_ms']:.1f} | {stats['min_ms']:.1f} | "
                f"{stats['max_ms']:.1f} | {stats['iqr_ms']:.1f} | {speedup} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    available = ["pytorch"] + sorted(
        b for b in compiled_backends() if {"cpp": "cpu", "cuda": "cuda"}[b] == device.type
    )
    if args.backends == "all":
        backends = available
    else:
        backends = [b.strip() for b in args.backends.split(",")]
        missing = [b for b in backends if b not in available]
        if missing:
            raise SystemExit(
                f"Backends {missing} are not available on {device.type} (available: {available})."
                " Build the op with `pip install --no-build-isolation -e .`."
            )
    inputs = make_inputs(args)
    results = {backend: benchmark_backend(backend, inputs, args) for backend in backends}
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "num_keys": int(inputs["value"].shape[1]),
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "compiled_backends": sorted(compiled_backends()),
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(markdown_table(results))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
