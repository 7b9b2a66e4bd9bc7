#!/usr/bin/env python
"""Converts ADE20K-full (ADE20K_2021_17_01) to the 847-class A-847 benchmark.

Writes ``ADE20K_2021_17_01/images_detectron2/<split>/*.jpg`` (shorter side <= 512),
``annotations_detectron2/<split>/*.tif`` (16-bit, labels 0-846, 65535 = ignore) and
``classes_847.txt`` (the dataset's own name of each class, in label order).

Usage:
    python datasets/prepare_ade20k_full.py [--root DIR] [--splits validation training]
"""

from __future__ import annotations

import argparse
import sys
import time

from uniovseg.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()  # first: it silences known warnings of the imports below
    from uniovseg.data.datasets.conversion.progress import (
        ConversionRun,
        add_conversion_arguments,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--splits", nargs="+", default=["validation"])
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "ADE20K-full (A-847)")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.ade20k import prepare_ade20k_full

    start = time.perf_counter()
    try:
        count = prepare_ade20k_full(
            args.root or default_datasets_root(),
            splits=tuple(args.splits),
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"wrote {count} images and labels in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
