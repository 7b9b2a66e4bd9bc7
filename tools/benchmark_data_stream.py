#!/usr/bin/env python
"""Benchmarks the training data path on synthetic SA-1B-format shards of growing size.

For each ``--sizes`` N it writes N image/JSON pairs (tiny JPEGs, ``--image-size`` px, two RLE
masks each) as tar shards of ``--samples-per-shard`` (the layout of SA-1B's own tars), then, each
in a fresh process:

- ``stream``: the shard stream's train loader (``uniovseg/data/stream_loader.py``) with
  ``--workers`` loader workers reads one whole epoch (every sample once): raw samples to SA-1B
  dataset dicts, no image decoded. Samples/s per worker and peak memory.
- ``mapped``: the same loader with the SA-1B training mapper (JPEG and RLE decoding, jitter,
  crop to ``--crop-size``, prompts) for ``--mapped-samples`` samples: images/s per worker.
- ``map-style`` (baseline, ``--baseline``): the extracted-folder path it replaces, on an index of
  N stems (no image is read: an identity mapper): ``load_sa1b_dicts`` then
  ``build_resumable_train_loader`` for a few batches. Its memory grows with N.

Peak memory: the high-water mark of the resident set (``VmHWM``) of the training process and of
each loader worker, read from /proc at the end of the run (workers are forked: pages they share
with the training process count in both, so "rank total" is an upper bound), and the memory
that only the worker holds at the end (private pages). Results go to
``benchmarks/results/data_stream.{json,md}`` (``data_stream_caption.*`` with ``--format
caption``: img2dataset-style caption shards, the caption mapper); the shards are deleted
afterwards (``--keep`` keeps them).

Example (run niced on a shared machine; about 2 GB of shards per million entries)::

    nice -n 19 python tools/benchmark_data_stream.py --sizes 10000 100000 1000000 \\
        --workdir /tmp/uniovseg_stream_bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time


def _variants(image_size: int, count: int = 16) -> list[tuple[bytes, dict]]:
    """``count`` distinct (JPEG bytes, SA-1B annotation record) pairs."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(0)
    variants = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
        annotations = []
        for _ in range(2):
            mask = np.zeros((image_size, image_size), dtype=np.uint8)
            y, x = rng.integers(0, image_size // 2, 2)
            mask[y : y + image_size // 3, x : x + image_size // 3] = 1
            rle = mask_util.encode(np.asfortranarray(mask))
            annotations.append(
                {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}
            )
        record = {"image": {"height": image_size, "width": image_size}, "annotations": annotations}
        variants.append((buffer.getvalue(), record))
    return variants


def write_shards(
    folder: str, size: int, samples_per_shard: int, image_size: int, shard_format: str = "sa1b"
) -> float:
    """Writes ``size`` samples as shards in ``folder``: SA-1B pairs (``jpg`` + ``json``) or
    img2dataset-style caption samples (``jpg`` + ``txt`` + ``json``); returns the seconds."""
    import webdataset as wds

    os.makedirs(folder, exist_ok=True)
    variants = _variants(image_size)
    start = time.perf_counter()
    pattern = os.path.join(folder, "sa_%06d.tar")
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, encoder=False) as w:
        for n in range(size):
            image, record = variants[n % len(variants)]
            if shard_format == "caption":
                caption = f"a photo of object {n % 97} next to object {n % 89}."
                meta = {"caption": caption, "key": f"{n:09d}", "status": "success"}
                w.write({"__key__": f"{n:09d}", "jpg": image, "txt": caption.encode(),
                         "json": json.dumps(meta).encode()})  # fmt: skip
                continue
            record = dict(record, image=dict(record["image"], image_id=n))
            w.write({"__key__": f"sa_{n}", "jpg": image, "json": json.dumps(record).encode()})
    return time.perf_counter() - start


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _private_mb(pid: int) -> float:
    """Memory only this process holds now (Private_Clean + Private_Dirty of smaps_rollup)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _memory() -> dict:
    main = _peak_rss_mb(os.getpid())
    children = _children(os.getpid())
    workers = [_peak_rss_mb(p) for p in children]
    return {
        "main_peak_mb": round(main, 1),
        "worker_peak_mb": [round(w, 1) for w in workers],
        "worker_private_mb": [round(_private_mb(p), 1) for p in children],
        "rank_total_peak_mb": round(main + sum(workers), 1),
    }


def measure(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; see the module docstring."""
    import itertools

    from uniovseg.data.datasets.shards import (
        SAMPLE_DECODERS,
        expand_shard_specs,
        shard_list_fingerprint,
    )
    from uniovseg.data.stream_loader import build_stream_train_loader

    if args.mode == "map-style":
        return _measure_map_style(args)
    shards = expand_shard_specs([args.folder])
    if args.mode == "stream":
        mapper = _dict_only
        limit = args.size  # one epoch
    elif args.format == "caption":
        from uniovseg.data.caption_mapper import CaptionDatasetMapper
        from uniovseg.data.entity_extraction import build_entity_parser

        parser = build_entity_parser("rule")
        mapper = CaptionDatasetMapper(crop_size=args.crop_size, entity_parser=parser)
        limit = args.mapped_samples
    else:
        from uniovseg.data.sa1b_mapper import SA1BDatasetMapper

        mapper = SA1BDatasetMapper(crop_size=args.crop_size, point_grid_size=4, seed=0)
        limit = args.mapped_samples
    loader = build_stream_train_loader(
        shards,
        decode=SAMPLE_DECODERS[args.format],
        mapper=mapper,
        batch_size=args.batch_size,
        seed=0,
        buffer_size=args.buffer,
        rank=0,
        world_size=1,
        num_workers=args.workers,
        name="bench",
        fingerprint=shard_list_fingerprint(shards),
    )
    iterator = iter(loader)
    next(iterator)  # workers started and their first block read
    start, count = time.perf_counter(), args.batch_size
    epochs = set()
    for batch in itertools.islice(iterator, max(0, limit // args.batch_size - 1)):
        count += len(batch)
        epochs.update(epoch for _, epoch in loader.last_samples)
    seconds = time.perf_counter() - start
    memory = _memory()
    del iterator
    return {
        "samples": count,
        "seconds": round(seconds, 2),
        "samples_per_s_per_worker": round(count / seconds / max(1, args.workers), 1),
        "epochs_seen": sorted(epochs),
        **memory,
    }


def _dict_only(record: dict) -> dict:
    """The stream's own cost: a small dict per sample instead of a decoded training example."""
    return {"image_id": record["image_id"], "bytes": len(record["image_bytes"])}


def _measure_map_style(args: argparse.Namespace) -> dict:
    import itertools

    from uniovseg.data.datasets.sa1b import load_sa1b_dicts
    from uniovseg.data.train_loader import build_resumable_train_loader

    index = os.path.join(args.folder, "index")
    os.makedirs(index, exist_ok=True)
    with open(os.path.join(index, "uniovseg_sa1b_index.txt"), "w", encoding="utf-8") as f:
        f.write("# uniovseg-sa1b-index v1\n")
        f.write("\n".join(f"sa_{n}" for n in range(args.size)) + "\n")
    start = time.perf_counter()
    dicts = load_sa1b_dicts(index)
    loader = build_resumable_train_loader(
        dicts,
        _identity,
        total_batch_size=args.batch_size,
        seed=0,
        aspect_ratio_grouping=True,
        num_workers=args.workers,
    )
    iterator = iter(loader)  # kept alive: its workers are measured below
    count = sum(len(b) for b in itertools.islice(iterator, 50))
    seconds = time.perf_counter() - start
    return {"samples": count, "seconds": round(seconds, 2), **_memory()}


def _identity(dataset_dict: dict) -> dict:
    return dataset_dict


def _run_child(args: argparse.Namespace, mode: str, size: int, folder: str) -> dict:
    command = [
        sys.executable, __file__, "--child", mode, "--folder", folder, "--size", str(size),
        "--workers", str(args.workers), "--batch-size", str(args.batch_size),
        "--buffer", str(args.buffer), "--crop-size", str(args.crop_size),
        "--mapped-samples", str(args.mapped_samples), "--format", args.format,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} at {size}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(results: list[dict], args: argparse.Namespace) -> str:
    what = (
        f"img2dataset-style caption shards ({args.image_size} px JPEG + caption .txt + .json)"
        if args.format == "caption"
        else f"SA-1B-format shards ({args.image_size} px JPEG + 2 RLE masks per entry)"
    )
    lines = [
        f"## Training data path: {args.workers} loader workers, shuffle buffer {args.buffer}, "
        f"batch {args.batch_size}",
        "",
        f"Synthetic {what} ({args.samples_per_shard} entries per tar). stream: one full epoch, "
        f"raw samples to dataset dicts; mapped: {args.mapped_samples} samples through the "
        f"{args.format} mapper (crop {args.crop_size}); map-style: the extracted-folder loader "
        "on an index of N stems "
        "(identity mapper, 50 batches). Peak memory = VmHWM; rank total = training process + "
        f"workers (shared pages counted twice: an upper bound); worker private = the pages only "
        "that worker holds at the end (its own allocations). 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| entries | path | samples | per worker /s | main peak MB | worker peak MB | "
        "worker private MB | rank total MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rate = r.get("samples_per_s_per_worker", "")
        workers = ", ".join(f"{w:.0f}" for w in r["worker_peak_mb"]) or "-"
        private = ", ".join(f"{w:.0f}" for w in r["worker_private_mb"]) or "-"
        lines.append(
            f"| {r['size']:,} | {r['mode']} | {r['samples']:,} | {rate} | "
            f"{r['main_peak_mb']:.0f} | {workers} | {private} | {r['rank_total_peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32, help="side of the JPEGs")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=256, help="shuffle block")
    parser.add_argument("--crop-size", type=int, default=64, help="SA-1B mapper crop (mapped)")
    parser.add_argument("--mapped-samples", type=int, default=4000)
    parser.add_argument("--format", choices=("sa1b", "caption"), default="sa1b")
    parser.add_argument(
        "--baseline", action="store_true", help="also the map-style loader (sa1b format)"
    )
    parser.add_argument("--skip-mapped", action="store_true")
    parser.add_argument("--workdir", default=os.path.join("benchmarks", "results", "shards"))
    parser.add_argument("--keep", action="store_true", help="keep the generated shards")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(measure(args)))
        return 0

    os.makedirs(args.output, exist_ok=True)
    name = "data_stream" if args.format == "sa1b" else f"data_stream_{args.format}"
    results = []
    for size in args.sizes:
        folder = os.path.join(args.workdir, f"n{size}")
        seconds = write_shards(folder, size, args.samples_per_shard, args.image_size, args.format)
        disk = sum(e.stat().st_size for e in os.scandir(folder)) / 2**20
        print(f"{size:,} entries: {disk:.0f} MB of shards written in {seconds:.0f} s", flush=True)
        modes = ["stream"] + ([] if args.skip_mapped else ["mapped"])
        modes += ["map-style"] if args.baseline and args.format == "sa1b" else []
        try:
            for mode in modes:
                result = {"size": size, "mode": mode, "shard_mb": round(disk, 1)}
                result.update(_run_child(args, mode, size, folder))
                results.append(result)
                print(json.dumps(result), flush=True)
                with open(os.path.join(args.output, f"{name}.json"), "w") as f:
                    json.dump(results, f, indent=2)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    table = _table(results, args)
    with open(os.path.join(args.output, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
