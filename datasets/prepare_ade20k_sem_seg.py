#!/usr/bin/env python
"""Converts SceneParse150 labels (ADEChallengeData2016) for ``ade20k_150_sem_seg_val``.

Writes ``ADEChallengeData2016/annotations_detectron2/<split>/*.png`` (0-149, 255 = ignore).

Usage:
    python datasets/prepare_ade20k_sem_seg.py                 # root: $DETECTRON2_DATASETS
    python datasets/prepare_ade20k_sem_seg.py --root /data --splits validation training
"""

from __future__ import annotations

import argparse
import sys

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
    run = ConversionRun.from_args(args, "SceneParse150 labels")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.ade20k import prepare_ade20k_sem_seg

    try:
        count = prepare_ade20k_sem_seg(
            args.root or default_datasets_root(),
            tuple(args.splits),
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"wrote {count} label files")


if __name__ == "__main__":
    sys.exit(main())
