#!/usr/bin/env python
"""Builds the SA-1B file index once, so training start-up never lists millions of files.

Usage:
    python datasets/prepare_sa1b.py --root /data/sa1b
    python datasets/prepare_sa1b.py --root /readonly/sa1b --index-file /scratch/sa1b_index.txt

Then register subsets with ``uniovseg.data.datasets.sa1b.register_sa1b`` (pass the same
``index_file`` when it is not the default ``<root>/uniovseg_sa1b_index.txt``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder with the untarred sa_*.jpg/json")
    parser.add_argument(
        "--index-file",
        default=None,
        help="where to write the index (default: <root>/uniovseg_sa1b_index.txt)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from uniovseg.data.datasets.sa1b import build_sa1b_index, read_sa1b_index

    start = time.perf_counter()
    try:
        path = build_sa1b_index(args.root, args.index_file)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    count = len(read_sa1b_index(args.root, path))
    print(
        f"indexed {count} image/annotation pairs in {time.perf_counter() - start:.1f} s -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
