#!/usr/bin/env python
"""Packs an extracted SA-1B folder or a caption manifest into tar shards that training streams.

Examples::

    # SA-1B layout (indexed by datasets/prepare_sa1b.py) -> sa_N.jpg + sa_N.json pairs per tar
    python tools/write_shards.py sa1b --root datasets/synthetic/sa1b --output shards/sa1b
    # caption manifest -> WebDataset shards (key.jpg, key.txt, key.json), as img2dataset writes
    python tools/write_shards.py captions \\
        --manifest datasets/synthetic/captions/captions.jsonl --output shards/captions

    # then train from them (the official SA-1B tars and img2dataset shards work the same way)
    python train_net.py --config-file configs/synthetic/stage1.yaml \\
        DATASETS.TRAIN "('sa1b_train',)" DATASETS.UNIOVSEG.SA1B_SHARDS "['shards/sa1b']"

Files are copied as they are (no re-encoding). Write at least as many shards as the run has
loader workers in all (processes x DATALOADER.NUM_WORKERS), else each shard is read by several.
"""

from __future__ import annotations

import argparse
import sys

from uniovseg.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    sa1b = kinds.add_parser("sa1b", help="an extracted SA-1B folder (sa_N.jpg + sa_N.json)")
    sa1b.add_argument("--root", required=True, help="the folder indexed by prepare_sa1b.py")
    sa1b.add_argument("--index-file", help="its index, if not <root>/uniovseg_sa1b_index.txt")
    captions = kinds.add_parser("captions", help="a JSON-lines caption manifest and its images")
    captions.add_argument("--manifest", required=True, help="the caption manifest")
    captions.add_argument("--image-root", help="folder of relative image paths (default: its own)")
    for sub in (sa1b, captions):
        sub.add_argument("--output", required=True, help="folder for 000000.tar, 000001.tar, ...")
        sub.add_argument(
            "--samples-per-shard", type=int, default=1000, help="samples per tar (default 1000)"
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Writes the shards; returns the process exit status."""
    from uniovseg.data.shard_writer import write_caption_shards, write_sa1b_shards

    args = parse_args(argv)
    try:
        if args.kind == "sa1b":
            summary = write_sa1b_shards(
                args.root,
                args.output,
                index_file=args.index_file,
                samples_per_shard=args.samples_per_shard,
            )
        else:
            summary = write_caption_shards(
                args.manifest,
                args.output,
                image_root=args.image_root,
                samples_per_shard=args.samples_per_shard,
            )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.samples} samples to {len(summary.shards)} shards in {args.output}"
        + (f" ({summary.skipped} left out: unreadable files)" if summary.skipped else "")
    )
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
