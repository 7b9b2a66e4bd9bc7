#!/usr/bin/env python
"""Times a DistributedDataParallel training step under the DDP settings that uniovseg can use.

Two (``--processes``) CPU processes over gloo train the model of ``--config-file`` (default: the
tiny stage-1 model) on the same synthetic batches under each setting: the old default
(``find_unused_parameters=True``, gradients copied into buckets), the unused-parameter search
off, and the search off with gradients as bucket views (uniovseg's default, see
``uniovseg/engine/ddp.py``). For each it records the median step time over ``--steps`` timed
steps (after ``--warmup``) in ``--rounds`` alternating runs, whether DDP warned that it found
no unused parameter, and whether it warned about gradient strides. Results go to
``benchmarks/results/ddp_settings.{json,md}``.

Example::

    nice -n 19 python tools/benchmark_ddp.py --config-file configs/synthetic/stage1.yaml \\
        MODEL.UNIOVSEG.CLIP.PRETRAINED ""
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import warnings

SETTINGS = {
    "find_unused, copy grads (old default)": {
        "find_unused_parameters": True,
        "gradient_as_bucket_view": False,
    },
    "no search, copy grads": {"find_unused_parameters": False, "gradient_as_bucket_view": False},
    "no search, bucket views (new default)": {
        "find_unused_parameters": False,
        "gradient_as_bucket_view": True,
    },
}


def _batch(rank: int, step: int, size: int, grid: int) -> list[dict]:
    import torch

    from uniovseg.modeling.point_grid import build_point_grid

    generator = torch.Generator().manual_seed(1000 * rank + step)
    examples = []
    for _ in range(2):
        masks = torch.zeros((3, size, size), dtype=torch.bool)
        boxes = []
        for g in range(3):
            x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
            x1, y1 = x0 + size // 4 + 8 * g, y0 + size // 4
            masks[g, y0:y1, x0:x1] = True
            boxes.append([x0, y0, x1, y1])
        examples.append(
            {
                "image": torch.randint(
                    0, 256, (3, size, size), dtype=torch.uint8, generator=generator
                ),  # fmt: skip
                "image_size": (size, size),
                "height": size,
                "width": size,
                "gt_masks": masks,
                "point_coords": build_point_grid(grid, (size, size)),
                "box_prompts": torch.tensor(boxes, dtype=torch.float32),
            }
        )
    return examples


def _worker(rank: int, world_size: int, port: int, args, setting: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from detectron2.modeling import build_model
    from torch.nn.parallel import DistributedDataParallel

    import uniovseg.modeling  # noqa: F401  (registers UniOVSeg)
    from uniovseg.config import load_config

    # DDP's warnings come from C++ (printed to the process's stderr, once per process): capture
    # the file descriptor. Each setting runs in fresh processes, so each can warn.
    log_path = f"{out}.rank{rank}.stderr"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log_fd, 2)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)  # fmt: skip
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    size, grid = cfg.INPUT.UNIOVSEG.CROP_SIZE, cfg.INPUT.UNIOVSEG.POINT_GRID_SIZE
    options = SETTINGS[setting]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    ddp = DistributedDataParallel(model, device_ids=None, broadcast_buffers=False, **options)
    params = [p for p in ddp.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(args.warmup + args.steps):
            batch = _batch(rank, step, size, grid)
            dist.barrier()
            start = time.perf_counter()
            losses = ddp(batch)
            sum(losses.values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
    dist.barrier()
    sys.stderr.flush()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        messages = f.read() + "\n".join(str(w.message) for w in caught)
    os.remove(log_path)
    result = {
        **options,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "max_step_s": max(times),
        "warned_no_unused_found": "did not find any unused" in messages,
        "warned_grad_strides": "strides do not match" in messages,
    }
    gathered = [None] * world_size
    dist.all_gather_object(gathered, result)
    if rank == 0:
        merged = dict(result)
        for key in ("warned_no_unused_found", "warned_grad_strides"):
            merged[key] = any(r[key] for r in gathered)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=2)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/tiny/stage1_tiny.yaml")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)

    import torch.multiprocessing as mp

    os.makedirs(args.output, exist_ok=True)
    # Rounds alternate the settings (A B C A B C ...), so that a change of machine load during
    # the run spreads over all of them; each run is a fresh set of processes.
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for round_index in range(args.rounds):
        for index, setting in enumerate(SETTINGS):
            raw = os.path.join(args.output, f"ddp_settings.{index}.json")
            mp.start_processes(
                _worker, args=(args.processes, _free_port(), args, setting, raw),
                nprocs=args.processes, start_method="spawn",
            )  # fmt: skip
            with open(raw, encoding="utf-8") as f:
                runs[setting].append(json.load(f))
            os.remove(raw)
            median = runs[setting][-1]["median_step_s"]
            print(f"round {round_index}: {setting}: {median:.3f} s per step", flush=True)
    results = {}
    for setting, rounds in runs.items():
        results[setting] = {
            **SETTINGS[setting],
            "median_step_s": statistics.median(r["median_step_s"] for r in rounds),
            "min_step_s": min(r["min_step_s"] for r in rounds),
            "max_step_s": max(r["max_step_s"] for r in rounds),
            "round_medians_s": [r["median_step_s"] for r in rounds],
            "warned_no_unused_found": any(r["warned_no_unused_found"] for r in rounds),
            "warned_grad_strides": any(r["warned_grad_strides"] for r in rounds),
        }
    with open(os.path.join(args.output, "ddp_settings.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    load = os.getloadavg()[0]
    lines = [
        f"## DDP settings: {args.processes} CPU processes (gloo), {args.config_file}",
        "",
        f"{args.rounds} rounds (settings alternating, fresh processes each run) of {args.steps} "
        f"timed steps after {args.warmup} warm-up steps; {args.threads} thread(s) per process; "
        f"1-min load average at the end {load:.1f}. Median step: the median of the rounds' "
        "medians; min/max over every timed step.",
        "",
        "| setting | median step s | rounds' medians | min | max | 'no unused parameter found' "
        "warning | grad-strides warning |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['median_step_s']:.3f} | "
            f"{', '.join(f'{m:.3f}' for m in r['round_medians_s'])} | "
            f"{r['min_step_s']:.3f} | {r['max_step_s']:.3f}"
            f" | {'yes' if r['warned_no_unused_found'] else 'no'} | "
            f"{'yes' if r['warned_grad_strides'] else 'no'} |"
        )
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.output, "ddp_settings.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
