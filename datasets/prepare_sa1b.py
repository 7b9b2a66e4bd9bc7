#!/usr/bin/env python
"""Builds the SA-1B file index once, so training start-up never lists millions of files.

Usage:
    python datasets/prepare_sa1b.py --root /data/sa1b --workers 8
    python datasets/prepare_sa1b.py --root /readonly/sa1b --index-file /scratch/sa1b_index.txt

Every image/annotation pair is checked (the JSON parses, lists masks whose RLE size is the
image's); what is left out is summarised per reason. Training reads the index through the
``sa1b_train`` dataset: ``DATASETS.UNIOVSEG.SA1B_ROOT`` (default ``$DETECTRON2_DATASETS/sa1b``)
and, when it is not the default ``<root>/uniovseg_sa1b_index.txt``,
``DATASETS.UNIOVSEG.SA1B_INDEX_FILE``; other subsets register with
``uniovseg.data.datasets.sa1b.register_sa1b``.
"""

from __future__ import annotations

import argparse
import sys
import time

from uniovseg.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder with the untarred sa_*.jpg/json")
    parser.add_argument(
        "--index-file",
        default=None,
        help="where to write the index (default: <root>/uniovseg_sa1b_index.txt)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes that check the JSON files (0: one)"
    )
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="only pair the files, without reading the JSON files (faster, unchecked)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    from uniovseg.data.datasets.sa1b import scan_sa1b, write_sa1b_index

    start = time.perf_counter()
    try:
        scan = scan_sa1b(args.root, validate=not args.no_validate, num_workers=args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    left_out = sum(scan.skipped.values())
    print(f"usable pairs: {len(scan.stems)}, files left out: {left_out}")
    for line in scan.skip_summary():
        print(f"  {line}")
    try:
        path = write_sa1b_index(scan, args.index_file)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"indexed {len(scan.stems)} image/annotation pairs in "
        f"{time.perf_counter() - start:.1f} s -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
